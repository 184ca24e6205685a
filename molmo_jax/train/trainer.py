"""The Molmo trainer: init or restore, a jitted sharded train step, metrics, checkpoints, hooks.

Read top to bottom: batch plumbing, the loss and its gradient (micro-batched), the train step, the
train state and its shardings, then `train`, the loop. One program trains every recipe: stage 1 and 2
train every param; fine-tuning freezes components and / or trains LoRA adapters (`trainable`).

Train state (a plain dict, what the checkpoints hold):
  params     float32 master weights (cfg.model.param_dtype) of what is trained; the model computes in
             cfg.model.dtype
  frozen     only with the fine-tuning options: the params of the frozen components (`trainable`)
  opt_state  the optim.make(...) state (per-component AdamW moments, sharded like the params)
  step       int32 number of updates done
  rng        uint32[2] base dropout key; step s uses fold_in(rng, s), micro-batch i fold_in(that, i)

Loss (official `train_batch`): sum_t w_t (CE_t + z_loss * logsumexp_t^2) / sum_t w_t, both sums over the
GLOBAL batch (all micro-batches, all devices), w_t = loss_masks where > 0 (the multi-annotation weights
are already in the loss masks).
"""
from __future__ import annotations

import functools
import signal
import time
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from molmo_jax import convert_base, distributed, io, paths, sharding
from molmo_jax.models.molmo import Molmo, aux_loss, init_params
from molmo_jax.train import checkpointing, hooks as hooks_lib, metrics_log, optim
from molmo_jax.train.loss import cross_entropy
from molmo_jax.train.trainable import Trainable

Batch = Mapping[str, np.ndarray]
BATCH_KEYS = ("input_ids", "labels", "loss_masks", "position_ids", "subsegment_ids", "images", "image_masks",
              "image_input_idx")
MODEL_KEYS = ("images", "image_masks", "image_input_idx", "position_ids", "subsegment_ids")

# ---------------------------------------------------------------------------------------------- batches


def host_batch(batch: Batch) -> dict[str, np.ndarray]:
    """The collator's batch -> the arrays the train step takes (`BATCH_KEYS`), ints as int32."""
    out = {k: np.asarray(batch[k]) for k in BATCH_KEYS if k in batch}
    return {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in out.items()}


def micro_batches(batch: Mapping[str, jax.Array], n: int) -> dict[str, jax.Array]:
    """[B, ...] -> [n, B/n, ...]; micro-batch i = rows i, n+i, 2n+i, ... (keeps every device busy)."""
    return {k: v.reshape((v.shape[0] // n, n) + v.shape[1:]).swapaxes(0, 1) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------- the loss


def loss_sums(params, batch: Mapping[str, jax.Array], rng: jax.Array, *, model: Molmo,
              z_loss: float) -> dict[str, jax.Array]:
    """Sums over one (micro-)batch: total (sum_t w_t (CE_t + z lse_t^2)), ce (sum w CE), z (sum w z lse^2),
    correct (argmax hits on loss tokens), tokens (loss tokens), aux (the model's auxiliary losses, e.g.
    MoE load balancing; a batch mean, 0 when their weights are 0)."""
    weights = batch["loss_masks"]
    logits, variables = model.apply({"params": params}, batch["input_ids"],
                                    response_mask=(weights > 0).astype(jnp.float32), rngs={"dropout": rng},
                                    mutable=["losses"], **{k: batch[k] for k in MODEL_KEYS if k in batch})
    total, _ = cross_entropy(logits, batch["labels"], weights, z_loss)
    ce, _ = cross_entropy(logits, batch["labels"], weights)
    on = weights > 0
    return {"total": total.sum(), "ce": ce.sum(), "z": (total - ce).sum(), "tokens": on.sum(),
            "correct": jnp.sum((jnp.argmax(logits, -1) == batch["labels"]) & on), "aux": aux_loss(variables)}


def loss_and_grads(params, batch: Mapping[str, jax.Array], rng: jax.Array, *, model: Molmo, z_loss: float,
                   grad_accum: int) -> tuple[Any, dict[str, jax.Array]]:
    """Gradient of total / normalizer + mean aux loss, accumulated over `grad_accum` micro-batches
    (normalizer = the sum of the loss weights over the whole global batch).

    Returns (grads like params, `loss_sums` stats summed over micro-batches plus "normalizer").
    """
    w = batch["loss_masks"]
    normalizer = jnp.maximum(jnp.sum(jnp.where(w > 0, w, 0.0)), jnp.finfo(jnp.float32).tiny)

    def micro_loss(p, mb, r):
        stats = loss_sums(p, mb, r, model=model, z_loss=z_loss)
        return stats["total"] / normalizer + stats["aux"] / grad_accum, stats

    def accumulate(grads, xs):
        i, mb = xs
        g, stats = jax.grad(micro_loss, has_aux=True)(params, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, grads, g), stats

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads, stats = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum), micro_batches(batch, grad_accum)))
    return grads, {**jax.tree.map(lambda x: x.sum(0), stats), "normalizer": normalizer}


# ------------------------------------------------------------------------------------------ train step


def train_step(state: dict, batch: Mapping[str, jax.Array], *, model: Molmo, opt: optim.Optimizer,
               z_loss: float, grad_accum: int, trainable: Trainable = Trainable()) -> tuple[dict, dict[str, jax.Array]]:
    """One optimizer update on a global batch -> (new state, scalar metrics)."""
    params, step = state["params"], state["step"]
    model = trainable.model(model, state.get("frozen"))
    grads, s = loss_and_grads(params, batch, jax.random.fold_in(state["rng"], step), model=model,
                              z_loss=z_loss, grad_accum=grad_accum)
    norms = optim.component_norms(grads, optim.component_labels(grads))
    updates, opt_state = opt.tx.update(grads, state["opt_state"], params)
    new_state = {**state, "params": optax.apply_updates(params, updates), "opt_state": opt_state,
                 "step": step + 1}
    n = s["normalizer"]
    metrics = {"loss": s["total"] / n + s["aux"] / grad_accum, "ce_loss": s["ce"] / n, "z_loss": s["z"] / n,
               "aux_loss": s["aux"] / grad_accum, "accuracy": s["correct"] / jnp.maximum(s["tokens"], 1),
               **{f"grad_norm/{c}": n for c, n in norms.items()},
               **{f"lr/{c}": lr for c, lr in opt.learning_rates(step).items()}}
    return new_state, metrics


# ----------------------------------------------------------------------------------------- train state


def new_state(params, opt: optim.Optimizer, rng: jax.Array, frozen=None) -> dict:
    state = {"params": params, "opt_state": opt.tx.init(params), "step": jnp.zeros((), jnp.int32), "rng": rng}
    return state if frozen is None else {**state, "frozen": frozen}


def abstract_state(model_cfg, opt: optim.Optimizer, mesh: Mesh, trainable: Trainable = Trainable()) -> dict:
    """The train state as ShapeDtypeStructs carrying their shardings on `mesh` (restore target)."""
    boxed_params, boxed_frozen = trainable.abstract(model_cfg)
    trees = {"params": boxed_params, **({} if boxed_frozen is None else {"frozen": boxed_frozen})}
    param_sh = {name: sharding.param_shardings(tree, mesh) for name, tree in trees.items()}
    unboxed = nn.meta.unbox(trees)
    shapes = jax.eval_shape(lambda t: new_state(t["params"], opt, jax.random.PRNGKey(0), t.get("frozen")), unboxed)
    replicated = NamedSharding(mesh, PartitionSpec())
    shardings = {**param_sh, "opt_state": like_params(shapes["opt_state"], param_sh["params"], replicated),
                 "step": replicated, "rng": replicated}
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, shardings)


def like_params(opt_state, param_shardings, default: NamedSharding) -> Any:
    """Shardings for an optimizer state: a leaf whose key path ends with a param's path (the AdamW
    moments, under any wrapper) gets that param's sharding; counts and the like get `default`."""
    by_path = {tuple(k.key for k in path): s
               for path, s in jax.tree_util.tree_leaves_with_path(param_shardings)}

    def pick(path, _):
        keys = tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))
        return next((by_path[keys[i:]] for i in range(len(keys)) if keys[i:] in by_path), default)

    return jax.tree_util.tree_map_with_path(pick, opt_state)


def shardings_of(tree) -> Any:
    return jax.tree.map(lambda x: x.sharding, tree)


def initial_params(cfg, rng: jax.Array, mesh: Mesh) -> Any:
    """Random init, or the params of `cfg.init_from` for `cfg.model`: any `io.FORMATS` directory (a training
    run for stage 2 from stage 1, an export, an official native or HF release directory); or pretrained
    towers `cfg.init.vit` / `cfg.init.llm` (transformers directories, stage 1) with the rest random."""
    towers = cfg.get("init")
    if towers and (towers.vit or towers.llm):
        return convert_base.init_params_from_hf_dirs(cfg.model, rng, towers.vit, towers.llm, mesh)
    if not cfg.init_from:
        return init_params(cfg.model, rng, mesh)
    return io.load_params(cfg.init_from, cfg.model, mesh)


def initial_state(cfg, opt: optim.Optimizer, mesh: Mesh, target: dict) -> dict:
    """`initial_params` split as `Trainable.of(cfg)` says (its LoRA adapters drawn with the init key, which
    no random init uses when the run starts from a checkpoint), a fresh optimizer."""
    params_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params, frozen = Trainable.of(cfg).split_params(initial_params(cfg, params_rng, mesh), params_rng, cfg.model, mesh)
    make = jax.jit(lambda p, f, r: new_state(p, opt, r, f), out_shardings=shardings_of(target), donate_argnums=(0, 1))
    return make(params, frozen, jax.device_put(dropout_rng, target["rng"].sharding))


class Program(NamedTuple):
    """What `train` runs: `target` the abstract train state (ShapeDtypeStructs with shardings: restore
    target and step output layout), `init()` the state at step 0 (called outside the mesh context), `step(state,
    device batch) -> (state, scalar metrics)` (jitted by `train`, state donated), `model_params(state)` the
    model's params of a state (what hooks and exports take)."""
    target: dict
    init: Callable[[], dict]
    step: Callable[[dict, Mapping[str, jax.Array]], tuple[dict, dict]]
    model_params: Callable[[dict], Any]


def make_program(cfg, mesh: Mesh) -> Program:
    """The params `Trainable.of(cfg)` names trained by `optim.make(cfg.optim)`, starting from `initial_state`."""
    opt = optim.make(cfg.optim)
    trainable = Trainable.of(cfg)
    target = abstract_state(cfg.model, opt, mesh, trainable)
    step = functools.partial(train_step, model=Molmo(cfg.model, deterministic=False), opt=opt,
                             z_loss=cfg.optim.z_loss, grad_accum=cfg.optim.grad_accum, trainable=trainable)
    return Program(target, functools.partial(initial_state, cfg, opt, mesh, target), step, trainable.model_params)


# ------------------------------------------------------------------------------------------- the loop


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingStopped(RuntimeError):
    """`train` was stopped by a signal before its last step; the state of `step` is checkpointed.

    Entry points print the message and exit with `exit_code`: 128 + the signal number, the shell's
    convention (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, step: int, total: int, signum: int):
        super().__init__(f"stopped at step {step} of {total}; rerun the same command to resume")
        self.step, self.total, self.signum = step, total, signum
        self.exit_code = 128 + signum


class StopOnSignals:
    """While active, SIGTERM / SIGINT record `signum` (the loop then checkpoints and stops) instead of
    killing; more signals during that save are recorded too and change nothing."""

    def __enter__(self):
        self.signum = None
        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _flush(log: metrics_log.MetricsLog, pending: list, since: float, data, force: bool = False) -> dict[str, float]:
    """Writes the buffered (step, device metrics, tokens) of the interval that began at `since`
    (perf_counter), into remote logs too when `force`; returns the last row. Tokens/s counts the interval up to the last step's completion
    (dispatch is asynchronous: the metrics are fetched before the clock is read)."""
    rows = [(step, {k: float(v) for k, v in jax.device_get(metrics).items()}) for step, metrics, _ in pending]
    tokens_per_s = sum(n for _, _, n in pending) / max(time.perf_counter() - since, 1e-9)
    skipped = {f"skipped/{reason}": n for reason, n in getattr(data, "skipped", {}).items()}
    skipped.update({f"drops/{key}": n for key, n in getattr(data, "drops", {}).items()})  # per dataset
    for step, row in rows:
        row.update(tokens_per_s=tokens_per_s, **skipped)
        log.write(step, row)
    log.flush(force)
    pending.clear()
    return rows[-1][1] if rows else {}


def train(cfg, data: Iterator[Batch], workdir: epath.PathLike, mesh: Mesh | None = None,
          program: Program | None = None, hooks: Sequence[hooks_lib.Hook] = ()) -> dict:
    """Trains to cfg.optim.steps updates, resuming from the latest checkpoint in `workdir`.

    data: an iterator of host batches (dicts of numpy arrays, fixed shapes, this process's rows of the
    global batch); with `get_state`/`set_state` its position is checkpointed too, and its `skipped`
    ({reason: count}) and `drops` ({"dataset/reason": count}) dicts, as data_pipelines.mixtures reports
    them, are logged. `mesh`: default `sharding.make_mesh(cfg.mesh)`. `program`: what to train (default
    `make_program(cfg, mesh)`; a caller passes one to reuse its compiled step). `hooks`: evaluation and
    export every few steps (`molmo_jax.train.hooks`); their metrics join the step's row of the log. Writes
    workdir/{checkpoints/, metrics.jsonl, tb/, curves.png, run_settings.json}; `workdir` may be a gs:// path.
    Checkpoints every cfg.checkpoint.every steps and / or every_minutes minutes. Returns the final train state.

    A workdir holding checkpoints resumes only with the settings it was started with
    (`checkpointing.ResumeMismatch` names the differing fields; another mesh is fine). SIGTERM / SIGINT
    checkpoint the current step and raise `TrainingStopped` (nothing after `train` runs).
    """
    paths.require_bucket(workdir, "workdir")
    workdir = epath.Path(workdir)
    mesh = mesh or sharding.make_mesh(cfg.mesh)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", cfg.checkpoint.every, cfg.checkpoint.max_to_keep,
                                      cfg.checkpoint.async_save, cfg.checkpoint.get("every_minutes", 0.0))
    main = jax.process_index() == 0
    log = None
    try:
        with StopOnSignals() as stop:
            latest = ckpt.latest_step()
            checkpointing.check_resume(workdir, checkpointing.run_settings(cfg), resuming=latest is not None)
            program = program or make_program(cfg, mesh)
            target = program.target
            step_fn = jax.jit(program.step, donate_argnums=0,
                              out_shardings=(shardings_of(target), NamedSharding(mesh, PartitionSpec())))
            # outside the mesh context: unboxing abstract params under a global mesh adds sharding constraints
            state = program.init() if latest is None else _restore(ckpt, latest, target, data)
            log = metrics_log.MetricsLog(workdir, enabled=main)
            with sharding.use_mesh(mesh):
                state, stopped = _loop(cfg, state, step_fn, data, mesh, ckpt, log, stop,
                                       functools.partial(hooks_lib.run, hooks, params_of=program.model_params))
            ckpt.save(int(state["step"]), state, data, force=True)
            ckpt.wait()  # still under StopOnSignals: a signal now cannot cut the save short
    finally:
        ckpt.close()
        if log is not None:
            log.close()
    rows = metrics_log.read(log.path) if main and log.path.exists() else []
    if rows:  # a run resumed at its last step logs nothing
        metrics_log.plot(rows, workdir / "curves.png")
    if stopped:
        raise TrainingStopped(int(state["step"]), cfg.optim.steps, stop.signum or signal.SIGTERM)
    return state


def _restore(ckpt: checkpointing.Checkpointer, step: int, target: dict, data) -> dict:
    """The checkpoint of `step`; one line when it does not fit this run (the library's report is the
    exception's cause, shown with --debug)."""
    try:
        return ckpt.restore(target, data, step)
    except Exception as e:  # Orbax / TensorStore report a tree mismatch in pages of text
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)[:300]
        raise checkpointing.ResumeMismatch(
            f"{ckpt.directory}: step {step} does not fit this run's train state ({first}); rerun with the "
            "settings it was made with or use a new workdir") from e


def _loop(cfg, state: dict, step_fn, data, mesh: Mesh, ckpt: checkpointing.Checkpointer,
          log: metrics_log.MetricsLog, stop: StopOnSignals, run_hooks) -> tuple[dict, bool]:
    """Steps from the state's step to cfg.optim.steps -> (state, False), or until a stop signal reached
    any process -> (state, True), every process stopping after the same step. After each step,
    `run_hooks(step, state)` (a metrics dict) runs before the step's checkpoint; its time is left out of
    tokens/s."""
    start, stopped = int(state["step"]), False
    pending, t0 = [], time.perf_counter()
    bar = tqdm(total=cfg.optim.steps, initial=start, disable=jax.process_index() != 0, desc="train")
    for step in range(start + 1, cfg.optim.steps + 1):
        if distributed.any_process(stop.signum is not None):
            stopped = True
            break
        batch = host_batch(next(data))
        state, metrics = step_fn(state, distributed.global_batch(batch, mesh))
        hooks_start = time.perf_counter()
        metrics = {**metrics, **run_hooks(step, state)}
        t0 += time.perf_counter() - hooks_start
        pending.append((step, metrics, int((batch["input_ids"] != -1).sum()) * jax.process_count()))
        saved = ckpt.save(step, state, data)  # its rows reach a remote log before the save commits
        if saved or step % cfg.log_every == 0 or step == cfg.optim.steps or stop.signum is not None:
            row = _flush(log, pending, t0, data, force=saved)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            t0 = time.perf_counter()
        bar.update()
    _flush(log, pending, t0, data)
    bar.close()
    return state, stopped
