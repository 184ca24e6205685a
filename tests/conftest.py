"""Test set-up: 8 simulated CPU devices (for the mesh tests), parsed absl flags (for grain), and one XLA
compilation cache on disk for every test process (the workers, and the commands the tests start): most
tests compile the same tiny programs, and a cached one loads in a fraction of its compile time; what is
not cached compiles at LLVM -O1."""
import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"molmo-jax-tests-xla-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# LLVM at -O1 instead of XLA:CPU's default: the suite is compile-bound and this halves compile times, with the
# same results bit for bit (logits and gradients of the fixture models, checked when it was set).
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=1".strip()

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
