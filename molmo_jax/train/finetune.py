"""Fine-tuning a checkpoint on your own data: every weight, some components frozen, or LoRA adapters.

    cfg = recipes.finetune.get_config("Molmo-7B-D-0924/", lora_rank=8, steps=1000)
    cfg.data.path = "my_data.jsonl"                   # data_pipelines.user_data format
    state, exports = finetune.run(cfg, "runs/ft", factory.make_data)   # {"hf_release": dir, "orbax": dir}

The training program of stage 2 (`trainer.train`: per-component AdamW, checkpoints with exact resume,
metrics, hooks), with the config's `freeze` and `lora` options keeping what is not trained out of the
optimizer (`molmo_jax.train.trainable`). With LoRA all three components are frozen by default; removing one
from `cfg.freeze` trains it fully next to the adapters.

The recipe is `molmo_jax.recipes.finetune`; the batches come from the `make_data(cfg, tokenizer)` given to
`run` (`data_pipelines.factory.make_data`: the user JSONL mixed with PixMo-lite). A run that completes
exports (`cfg.export`) to <workdir>/export/<format> with the checkpoint's own model config and tokenizer
(`io.export_run`).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Sequence

from etils import epath
from jax.sharding import Mesh

from molmo_jax import io
from molmo_jax.train import hooks as hooks_lib
from molmo_jax.train import trainer
from molmo_jax.train.trainable import Trainable


def run(cfg, workdir: epath.PathLike, make_data: Callable[[Any, Any], Iterator], mesh: Mesh | None = None,
        hooks: Sequence[hooks_lib.Hook] = (), tokenizer=None) -> tuple[dict, dict[str, epath.Path]]:
    """Fine-tunes on the batches `make_data(cfg, tokenizer)` (resuming from `workdir`, with `hooks`) and
    exports to workdir/export/<format>; a run stopped by a signal raises `trainer.TrainingStopped` and exports
    nothing. `tokenizer`: the checkpoint's (`io.load_tokenizer`), loaded here unless given.

    Returns (final train state, {format: export directory}).
    """
    model_cfg = io.load_config(cfg.init_from)  # the checkpoint's own config (cfg.model: training dtype, dropout)
    if tokenizer is None:
        tokenizer = io.load_tokenizer(cfg.init_from, model_cfg)
    io.save_run_files(workdir, model_cfg, tokenizer)
    state = trainer.train(cfg, make_data(cfg, tokenizer), workdir, mesh, hooks=hooks)
    params = Trainable.of(cfg).model_params(state)
    return state, io.export_run(workdir, params, model_cfg, tokenizer, cfg.export)
