"""Test set-up: 8 simulated CPU devices (for the mesh tests), parsed absl flags (for grain), and one XLA
compilation cache on disk for every test process (the workers, and the commands the tests start): most
tests compile the same tiny programs, and a cached one loads in a fraction of its compile time; what is
not cached compiles with XLA:CPU's cheap code generation (below)."""
import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"molmo-jax-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# Cheap code generation: the suite is compile-bound. LLVM at -O0 without its expensive passes (what
# `jax_disable_most_optimizations` sets) and XLA:CPU's LLVM IR fusion emitters instead of its MLIR ones: the
# tiny train step compiles in 1.2-1.3 s against 2.6-3.0 s at -O0 with the MLIR emitters, 4.6-4.9 s at the
# default. Results move within float32 rounding (the fixture models' logits and gradients: at most 8e-6 from
# the default's); every tolerance in the suite is meant to hold at the default too.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0 "
                               "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false").strip()

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_collection_modifyitems(items):
    """The README test (minutes: every README block) first, so a parallel run (`--dist worksteal` hands
    out tests in collection order) does not end waiting on it."""
    items.sort(key=lambda item: item.fspath.basename != "test_readme.py")
