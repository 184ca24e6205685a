"""Training checkpoints with Orbax, and params-only exports for inference.

A training checkpoint `<dir>/<step>/` holds two items:
  state  the train state pytree {params, opt_state, step, rng} (OCDBT, sharded arrays, async save)
  data   the data iterator position: its `get_state()` dict as one JSON file per process
         (grain's Orbax handler, so grain iterators and any iterator with dict get_state/set_state work)
Restoring takes an abstract state whose ShapeDtypeStructs carry the target shardings, so a checkpoint
saved on one mesh restores onto any other. A save killed half-way leaves a `*.orbax-checkpoint-tmp*`
directory that Orbax ignores: the previous step stays the latest restorable one.

Exports: params-only Orbax via `molmo_jax.orbax_params.save` (the inference format; `restore_params`
reads it too) and `export_release` (official native or HF release safetensors via molmo_jax.checkpoints).
"""
from __future__ import annotations

import json
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from molmo_jax import checkpoints, paths


class _IteratorState:
    """Adapts an iterator with dict `get_state`/`set_state` to grain's checkpoint handler (JSON bytes)."""

    def __init__(self, iterator):
        self.iterator = iterator

    def get_state(self) -> bytes:
        return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state: bytes):
        self.iterator.set_state(json.loads(state))

    def start_prefetch(self):
        getattr(self.iterator, "start_prefetch", lambda: None)()


def has_state(iterator) -> bool:
    return hasattr(iterator, "get_state") and hasattr(iterator, "set_state")


def _state_handler() -> ocp.PyTreeCheckpointHandler:
    """PyTree handler for a tree of jax.Arrays that writes whole replica-0 shards. Orbax's default
    "replica-parallel" writer slices replicated arrays between replicas, which compiles one slice
    program per array shape: ~15 s before the first save of the tiny model on 8 CPU devices."""
    arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=False)
    return ocp.PyTreeCheckpointHandler(
        type_handler_registry=ocp.type_handlers.create_type_handler_registry((jax.Array, arrays)))


class Checkpointer:
    """Periodic async checkpoints of the train state and the data position.

    every: save when step % every == 0 (and whenever `save(..., force=True)`);
    max_to_keep: older checkpoints are deleted once a newer one is committed.
    """

    def __init__(self, directory: epath.PathLike, every: int, max_to_keep: int = 3,
                 async_save: bool = True):
        self.every = every
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state_handler = _state_handler()
        registry.add("state", ocp.args.PyTreeSave, state_handler)
        registry.add("state", ocp.args.PyTreeRestore, state_handler)
        registry.add("data", grain.checkpoint.CheckpointSave, grain.checkpoint.CheckpointHandler)
        registry.add("data", grain.checkpoint.CheckpointRestore, grain.checkpoint.CheckpointHandler)
        self.manager = ocp.CheckpointManager(
            paths.absolute(directory), handler_registry=registry,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                 enable_async_checkpointing=async_save))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data=None, force: bool = False) -> bool:
        """Starts saving `state` (and the position of `data`) as `step`; returns whether it did.

        Returns at once with async saving; the arrays are copied before the next train step may
        donate them. A step that is already saved is skipped.
        """
        if not (force or step % self.every == 0) or step in self.manager.all_steps():
            return False
        args = {"state": ocp.args.PyTreeSave(state)}
        if data is not None and has_state(data):
            args["data"] = grain.checkpoint.CheckpointSave(_IteratorState(data))
        return self.manager.save(step, args=ocp.args.Composite(**args), force=True)

    def restore(self, abstract_state: Any, data=None, step: int | None = None) -> Any:
        """The state of `step` (default: latest) laid out as `abstract_state` (ShapeDtypeStructs with
        shardings); moves `data` to its saved position when given."""
        step = self.latest_step() if step is None else step
        args = {"state": ocp.args.PyTreeRestore(
            abstract_state, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_state))}
        if data is not None and has_state(data):
            args["data"] = grain.checkpoint.CheckpointRestore(_IteratorState(data))
        return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.close()


def is_orbax(path: epath.PathLike) -> bool:
    """Whether `restore_params` reads `path`: a Checkpointer directory, one step of it, or an export."""
    path = epath.Path(path)
    return ((path / "_METADATA").exists() or (path / "state").is_dir()
            or any(p.name.isdigit() and (p / "state").is_dir() for p in path.iterdir()))


def restore_params(path: epath.PathLike, abstract_params: Any) -> Any:
    """Params only, from a Checkpointer directory (its latest step), one step of it, or a params-only
    export (`molmo_jax.orbax_params.save`), laid out as `abstract_params` (ShapeDtypeStructs with
    shardings)."""
    path = paths.absolute(path)
    if (path / "_METADATA").exists():  # params-only export: the param tree is the root
        target = abstract_params
    else:  # train state: restore its "params" subtree, skip opt_state, step and rng
        if not (path / "state").is_dir():
            path = path / str(max(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "state").is_dir()))
        path, target = path / "state", {"params": abstract_params}
    args = ocp.args.PyTreeRestore(target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                                  partial_restore=True)
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(path, args=args)
    return restored if target is abstract_params else restored["params"]


def export_release(params: Any, cfg, path: epath.PathLike, fmt: str = "native"):
    """Official native (`weights.safetensors` + config.json) or HF release safetensors."""
    host = jax.tree.map(lambda x: jax.device_get(x), params)
    if fmt == "native":
        checkpoints.save_native(host, cfg, path)
    elif fmt == "hf":
        checkpoints.save_hf_release(host, cfg, path)
    else:
        raise ValueError(f"export format must be 'native' or 'hf', got {fmt!r}")
