"""What the recipes share: per-component sections, the optimizer and checkpoint sections, the official
formatting and data seed of each stage (official `launch_scripts/train_captioner.py` and
`train_multitask_model.py`)."""
from __future__ import annotations

import ml_collections

from molmo_jax.config import COMPONENTS

# Formatter settings of the two stages (`model.formatting`; the data pipeline formats with them as given).
STAGE1_FORMATTING = dict(prompt_type="none", message_formatting="none", system_prompt_kind="style_and_length",
                         multi_annotation_weighting=None)
STAGE2_FORMATTING = dict(prompt_type="uber_model", message_formatting="role", system_prompt_kind="demo_or_style",
                         multi_annotation_weighting="root_subsegments")
STAGE_FORMATTING = {1: STAGE1_FORMATTING, 2: STAGE2_FORMATTING}
STAGE_SEEDS = {1: 95818, 2: 50189}  # official data-order seeds


def per_component(connector, vit, llm) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(connector=connector, vit=vit, llm=llm))


def same_per_component(value) -> ml_collections.ConfigDict:
    return per_component(*(value,) * len(COMPONENTS))


def optimizer(steps: int, lr: ml_collections.ConfigDict,
              warmup: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `optim` section (`molmo_jax.train.optim.make`): per-component AdamW peak `lr` after linear `warmup`
    steps, cosine decay to 10% over `steps`, per-component gradient clipping, z-loss."""
    o = ml_collections.ConfigDict()
    o.steps = steps
    o.lr = lr
    o.warmup = warmup
    o.weight_decay = same_per_component(0.0)
    o.alpha_f = 0.1  # cosine decays to 10% of the peak
    o.b1, o.b2, o.eps = 0.9, 0.95, 1e-6
    o.max_grad_norm = 1.0  # per component
    o.z_loss = 1e-4
    o.grad_accum = 1  # micro-batches per update (same global-weight normaliser)
    return o


def checkpoint(every: int, max_to_keep: int) -> ml_collections.ConfigDict:
    """The `checkpoint` section (`molmo_jax.train.checkpointing.Checkpointer`)."""
    k = ml_collections.ConfigDict()
    k.every = every  # steps between checkpoints (0: none by step count)
    k.every_minutes = 0.0  # also checkpoint once this many minutes passed since the last save (0: off)
    k.max_to_keep = max_to_keep
    k.async_save = True
    return k


def set_stage_formatting(model_cfg, stage: int) -> None:
    """Sets the model config's formatting to the official one of `stage` (1 or 2)."""
    model_cfg.formatting.update(STAGE_FORMATTING[stage])
