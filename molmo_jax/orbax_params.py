"""Params-only Orbax checkpoints for inference: write a param tree, read it back sharded on a mesh.

No optimizer state and no step: the model as `checkpoints.load` returns it. The directory is a plain
`orbax.checkpoint.StandardCheckpointer` checkpoint, so other Orbax tools read it too. `api.save` puts the
config.json and tokenizer files next to it, which makes the export loadable by `api.load`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from molmo_jax import paths, sharding
from molmo_jax.checkpoints import CheckpointError
from molmo_jax.models.molmo import abstract_params


def save(params: Any, path: epath.PathLike):
    """Writes `params` (boxed or not, any sharding) to the new directory `path`."""
    path = paths.absolute(path)
    if path.exists():
        raise CheckpointError(f"{path}: already exists; Orbax params are written to a new directory")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(path, nn.meta.unbox(params))
        checkpointer.wait_until_finished()


def restore(path: epath.PathLike, cfg, mesh=None) -> Any:
    """Params of `cfg` read from `path`, placed with the logical-axis shardings on `mesh` (default: 1 device).

    Raises CheckpointError when the stored tree does not have the model's params and shapes.
    """
    path = paths.absolute(path)
    mesh = mesh or sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    boxed = abstract_params(cfg)
    dtype = jax.numpy.bfloat16 if cfg.param_dtype == "bfloat16" else np.dtype(cfg.param_dtype)
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, dtype, sharding=s), nn.meta.unbox(boxed),
                          sharding.param_shardings(boxed, mesh))
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            return checkpointer.restore(path, target)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise CheckpointError(f"{path}: Orbax params do not fit the model config: {e}") from e
