"""Training checkpoints with Orbax, and params-only exports for inference.

A training checkpoint `<dir>/<step>/` holds two items:
  state  the train state pytree {params, opt_state, step, rng} (OCDBT, sharded arrays, async save)
  data   the data iterator position: its `get_state()` dict as one JSON file per process
         (grain's Orbax handler, so grain iterators and any iterator with dict get_state/set_state work)
Restoring takes an abstract state whose ShapeDtypeStructs carry the target shardings, so a checkpoint
saved on one mesh restores onto any other. A save killed half-way leaves a `*.orbax-checkpoint-tmp*`
directory that Orbax ignores: the previous step stays the latest restorable one.

Reading the params of a run (stage-2 init, `molmo-jax export`) and exports are `molmo_jax.io`.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from molmo_jax import distributed, paths


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

    every: save when step % every == 0 (0: never by step count); every_minutes: also save the first
    step at least that many minutes after the last save started (0: never by time; every process agrees on
    it); both besides `save(..., force=True)`. max_to_keep: older checkpoints are deleted once a newer
    one is committed.
    """

    def __init__(self, directory: epath.PathLike, every: int, max_to_keep: int = 3,
                 async_save: bool = True, every_minutes: float = 0.0):
        self.directory = directory
        self.every, self.every_minutes = every, every_minutes
        self._last_save = time.monotonic()
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
        due = force or (self.every > 0 and step % self.every == 0)
        if self.every_minutes > 0:  # a collective when several processes run: evaluated on every step
            due = distributed.any_process(time.monotonic() - self._last_save >= 60 * self.every_minutes) or due
        if not due or step in self.manager.all_steps():
            return False
        args = {"state": ocp.args.PyTreeSave(state)}
        if data is not None and has_state(data):
            args["data"] = grain.checkpoint.CheckpointSave(_IteratorState(data))
        saved = self.manager.save(step, args=ocp.args.Composite(**args), force=True)
        self._last_save = time.monotonic()  # the clock restarts once the save has started (a slow start does not count)
        return saved

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


# ----------------------------------------------------------------------------------- resume checks

SETTINGS_FILE = "run_settings.json"
# How a run executes rather than what it trains: these may change between a run and its resumption.
RUNTIME_FIELDS = ("model.vit.remat_policy", "model.vit.scan_unroll", "model.llm.remat_policy",
                  "model.llm.scan_unroll", "model.llm.attention_impl",
                  "model.llm.moe_impl", "model.vit.crop_budget", "optim.grad_accum")
_UNSET = "<unset>"


class ResumeMismatch(ValueError):
    """A workdir's checkpoints come from a run with other settings than this one."""


def run_settings(cfg) -> dict[str, Any]:
    """What the train state depends on: the model, optimizer, LoRA and frozen-component settings of a
    training config, as {dotted name: JSON value} (`RUNTIME_FIELDS` and the mesh left out)."""
    tree = json.loads(json.dumps({k: cfg[k] for k in ("model", "optim", "lora", "freeze") if k in cfg},
                                 default=lambda v: v.to_dict() if hasattr(v, "to_dict") else str(v)))

    def flat(value, prefix):
        if isinstance(value, dict):
            return {k: v for key, item in value.items() for k, v in flat(item, f"{prefix}{key}.").items()}
        return {prefix[:-1]: value}

    return {k: v for k, v in flat(tree, "").items() if k not in RUNTIME_FIELDS}


def check_resume(workdir: str | os.PathLike, settings: dict[str, Any], resuming: bool):
    """Records `settings` in `workdir` when a run starts; when it resumes, raises ResumeMismatch naming
    every field that differs from the recorded ones (one line)."""
    path = epath.Path(workdir) / SETTINGS_FILE
    if resuming and path.exists():
        recorded = json.loads(path.read_text())
        diffs = [f"{k}: {recorded.get(k, _UNSET)!r} -> {settings.get(k, _UNSET)!r}"
                 for k in sorted(set(recorded) | set(settings)) if recorded.get(k, _UNSET) != settings.get(k, _UNSET)]
        if diffs:
            raise ResumeMismatch(f"{workdir} holds checkpoints of a run with other settings ({'; '.join(diffs)}); "
                                 "rerun with the recorded settings or use a new workdir")
    elif jax.process_index() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1, sort_keys=True))

