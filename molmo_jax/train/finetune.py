"""Fine-tuning a checkpoint on your own data: every weight, some components frozen, or LoRA adapters.

    cfg = finetune.get_config("Molmo-7B-D-0924/", lora_rank=8, steps=1000)
    cfg.data.path = "my_data.jsonl"                   # data_pipelines.user_data format
    state, exports = finetune.run(cfg, "runs/ft")     # exports: {"hf_release": dir, "orbax": dir}

The training program of stage 2 (`trainer.train`: per-component AdamW, checkpoints with exact resume,
metrics, hooks), with the config's `freeze` and `lora` options keeping what is not trained out of the
optimizer (`molmo_jax.train.trainable`). With LoRA all three components are frozen by default; removing one
from `cfg.freeze` trains it fully next to the adapters.

Data: the user JSONL mixed with PixMo-lite (`data_pipelines.synthetic`, its tasks at their stage-2 mixture
rates) at rate `data.mix_pixmo_lite`, through the stage-2 grain pipeline, formatted as the checkpoint's
config says. A run that completes exports (`cfg.export`) to <workdir>/export/<format> with the checkpoint's
own model config and tokenizer (`io.export_run`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import ml_collections
from etils import epath
from jax.sharding import Mesh

from data_pipelines import mixtures, synthetic, user_data
from molmo_jax import io, lora
from molmo_jax.train import hooks as hooks_lib
from molmo_jax.train import optim, trainer
from molmo_jax.train.trainable import Trainable

EXPORT_FORMATS = ("hf_release", "orbax")


def _per_component(value) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict({c: value for c in optim.COMPONENTS})


def default_checkpoint_every(steps: int) -> int:
    """Ten checkpoints a run, at most 100 steps apart: a crash loses little of a short run."""
    return max(1, min(100, steps // 10))


def get_config(checkpoint: str, lora_rank: int = 0, steps: int = 1000) -> ml_collections.ConfigDict:
    """Fine-tuning recipe for the checkpoint directory `checkpoint` (any `io.FORMATS`).

    Full fine-tuning uses the stage-2 learning rates (connector / vit 5e-6, llm 1e-5); LoRA (lora_rank > 0)
    freezes every component and trains the adapters at 2e-4. Warm-up: 10% of the steps. Set data.path.
    """
    c = ml_collections.ConfigDict()
    c.init_from = checkpoint
    c.model = io.load_config(checkpoint)
    c.model.dtype = "bfloat16"  # float32 master params (param_dtype)
    c.model.llm.residual_dropout = 0.1  # stage 2
    c.freeze = tuple(optim.COMPONENTS) if lora_rank else ()
    c.lora = ml_collections.ConfigDict(dict(rank=lora_rank, alpha=16.0, targets=lora.DEFAULT_TARGETS))

    o = c.optim = ml_collections.ConfigDict()
    o.steps = steps
    o.lr = _per_component(2e-4) if lora_rank else ml_collections.ConfigDict(dict(connector=5e-6, vit=5e-6, llm=1e-5))
    o.warmup = _per_component(max(1, steps // 10))
    o.weight_decay = _per_component(0.0)
    o.alpha_f = 0.1
    o.b1, o.b2, o.eps = 0.9, 0.95, 1e-6
    o.max_grad_norm = 1.0
    o.z_loss = 1e-4
    o.grad_accum = 1

    d = c.data = ml_collections.ConfigDict()
    d.path = ""  # the user JSONL file
    d.image_dir = ""  # download cache of its URL images ("" = user_data.default_image_dir)
    d.allow_outside_images = False  # image paths outside the JSONL file's folder are refused unless True
    d.mix_pixmo_lite = 0.0  # fraction of examples drawn from PixMo-lite, in [0, 1)
    d.pixmo_lite_size = 10_000  # examples per PixMo-lite task
    d.global_batch = 16
    d.seq_len = 2304
    d.too_long = "truncate"  # the official collator's cut; "skip" drops longer examples
    d.seed = mixtures.STAGE2_SEED

    c.mesh = (1, -1, 1)
    c.seed = 6198
    k = c.checkpoint = ml_collections.ConfigDict()
    k.every = default_checkpoint_every(steps)
    k.every_minutes = 0.0  # also checkpoint once this many minutes passed since the last save (0: off)
    k.max_to_keep = 1
    k.async_save = True
    c.log_every = 10
    c.export = EXPORT_FORMATS
    return c


# ------------------------------------------------------------------------------------------ data and run


def make_data(cfg, tokenizer):
    """This process's batch iterator: the user data mixed with PixMo-lite at `data.mix_pixmo_lite`."""
    d = cfg.data
    if not 0 <= d.mix_pixmo_lite < 1:
        raise ValueError(f"data.mix_pixmo_lite must be in [0, 1), got {d.mix_pixmo_lite}")
    sources = {"user": user_data.UserData(d.path, d.image_dir or None, d.allow_outside_images)}
    rates = None
    if d.mix_pixmo_lite:
        lite = synthetic.sources(d.pixmo_lite_size, d.seed)
        lite_rates = mixtures.mixture_rates({n: len(s) for n, s in lite.items()}, mixtures.SYNTHETIC_MIXTURE)
        sources.update(lite)
        rates = {"user": 1 - d.mix_pixmo_lite, **{n: d.mix_pixmo_lite * r for n, r in lite_rates.items()}}
    options = mixtures.PipelineOptions(batch_size=d.global_batch, seq_len=d.seq_len, seed=d.seed,
                                       process_index=jax.process_index(), process_count=jax.process_count(),
                                       too_long=d.too_long)
    process = mixtures.example_processor(cfg.model, tokenizer, options, shuffle_messages=True)
    return iter(mixtures.pipeline(mixtures.mixture(sources, rates, process, d.seed), cfg.model, options))


def validate_data(cfg, tokenizer) -> user_data.Report:
    """`user_data.validate` of the config's data file, with the model's lengths (an answer token within
    data.seq_len)."""
    d = cfg.data
    options = mixtures.PipelineOptions(batch_size=1, seq_len=d.seq_len, too_long="truncate")
    process = mixtures.example_processor(cfg.model, tokenizer, options, shuffle_messages=False)
    return user_data.validate(d.path, d.image_dir or None, d.allow_outside_images, process, d.seq_len)


def run(cfg, workdir: epath.PathLike, mesh: Mesh | None = None,
        hooks: Sequence[hooks_lib.Hook] = ()) -> tuple[dict, dict[str, epath.Path]]:
    """Fine-tunes (resuming from `workdir`, with `hooks`) and exports to workdir/export/<format>; a run
    stopped by a signal raises `trainer.TrainingStopped` and exports nothing.

    Returns (final train state, {format: export directory}).
    """
    model_cfg = io.load_config(cfg.init_from)  # the checkpoint's own config (cfg.model: training dtype, dropout)
    tokenizer = io.load_tokenizer(cfg.init_from, model_cfg)
    io.save_run_files(workdir, model_cfg, tokenizer)
    state = trainer.train(cfg, make_data(cfg, tokenizer), workdir, mesh, hooks=hooks)
    params = Trainable.of(cfg).model_params(state)
    return state, io.export_run(workdir, params, model_cfg, tokenizer, cfg.export)
