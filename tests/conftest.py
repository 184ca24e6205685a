"""Test set-up: 8 simulated CPU devices (for the mesh tests) and parsed absl flags (for grain)."""
import os

import jax

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_default_matmul_precision", "highest")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
