"""Fine-tuning recipe: a checkpoint on a user-format JSONL file (data_pipelines/user_data.py), full or LoRA.

    cfg = finetune.get_config("Molmo-7B-D-0924/", lora_rank=8, steps=1000)
    cfg.data.path = "my_data.jsonl"
    python -m experiments.finetune --config molmo_jax/recipes/finetune.py:Molmo-7B-D-0924,lora=8 \
        --config.data.path=data.jsonl --config.data.mix_pixmo_lite=0.3 --workdir runs/ft

Full fine-tuning uses the stage-2 learning rates (connector / vit 5e-6, llm 1e-5); LoRA (lora_rank > 0)
freezes every component and trains the adapters at 2e-4. Warm-up: 10% of the steps. The data
(`data.kind="user"`): the JSONL file mixed with PixMo-lite at rate `data.mix_pixmo_lite`, formatted as the
checkpoint's config says; `molmo-jax finetune` builds the same config from its flags.
"""
from __future__ import annotations

import ml_collections

from molmo_jax import io, lora
from molmo_jax.recipes import common, lite
from molmo_jax.config import COMPONENTS

EXPORT_FORMATS = ("hf_release", "orbax")


def default_checkpoint_every(steps: int) -> int:
    """Ten checkpoints a run, at most 100 steps apart: a crash loses little of a short run."""
    return max(1, min(100, steps // 10))


def get_config(checkpoint: str, lora_rank: int = 0, steps: int = 1000) -> ml_collections.ConfigDict:
    """The recipe for the checkpoint directory `checkpoint` (any `io.FORMATS`); "DIR,lora=R" (the form a
    `--config` file arg takes) sets lora_rank too. Set data.path."""
    checkpoint, _, rank = checkpoint.partition(",lora=")
    lora_rank = int(rank or lora_rank)
    c = ml_collections.ConfigDict()
    c.init_from = checkpoint
    c.model = io.load_config(checkpoint)
    c.model.dtype = "bfloat16"  # float32 master params (param_dtype)
    c.model.llm.residual_dropout = 0.1  # stage 2
    c.freeze = tuple(COMPONENTS) if lora_rank else ()
    c.lora = ml_collections.ConfigDict(dict(rank=lora_rank, alpha=16.0, targets=lora.DEFAULT_TARGETS))
    lr = common.same_per_component(2e-4) if lora_rank else common.per_component(5e-6, 5e-6, 1e-5)
    c.optim = common.optimizer(steps, lr, common.same_per_component(max(1, steps // 10)))

    d = c.data = ml_collections.ConfigDict()
    d.kind = "user"  # data_pipelines/factory.py: make_data
    d.path = ""  # the user JSONL file
    d.image_dir = ""  # download cache of its URL images ("" = user_data.default_image_dir)
    d.allow_outside_images = False  # image paths outside the JSONL file's folder are refused unless True
    d.mix_pixmo_lite = 0.0  # fraction of examples drawn from PixMo-lite, in [0, 1)
    d.update(lite.data_fields())  # the PixMo-lite mixed in: the lite recipe's scenes (image size, style)
    d.pixmo_lite_size = 10_000  # examples per PixMo-lite task
    d.global_batch = 16
    d.seq_len = 2304
    d.too_long = "truncate"  # the official collator's cut; "skip" drops longer examples
    d.seed = common.STAGE_SEEDS[2]  # data order
    d.pixmo_lite_seed = d.seed  # the PixMo-lite generator's
    d.pack_crops = 0  # 0: one example per row; n > 0: pack examples into rows, at most n images per row
    d.num_workers = 0  # grain worker processes (0: threads of this process only)

    c.mesh = (1, -1, 1)
    c.seed = 6198
    c.checkpoint = common.checkpoint(every=default_checkpoint_every(steps), max_to_keep=1)
    c.log_every = 10
    c.export = EXPORT_FORMATS
    return c
