"""Stage 2 of Molmo training: multitask fine-tuning from a stage-1 checkpoint (allenai/molmo
launch_scripts/train_multitask_model.py).

    python -m experiments.train --config molmo_jax/recipes/stage2.py:tiny --config.init_from=/tmp/s1/checkpoints \
        --workdir /tmp/s2

Same `arg` values as stage1.py. Differences to stage 1: LRs 5e-6 / 5e-6 / 1e-5 with 200-step warmups,
30k steps at batch 256, residual dropout 0.1 everywhere (no response-only dropout), the `uber_model`
prompt formatting with root_subsegments weighting, params initialised from stage 1 (params only).
"""
from __future__ import annotations

import ml_collections

from molmo_jax.recipes import common, lite, stage1


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if lite.is_lite(arg):
        return lite.configure(get_config("tiny"), 2, arg)
    tiny = arg.startswith("tiny")
    c = stage1.get_config(arg)
    c.model.llm.residual_dropout = 0.1
    c.model.llm.response_residual_dropout = 0.0
    common.set_stage_formatting(c.model, 2)
    c.optim.steps = 100 if tiny else 30_000
    if not tiny:
        c.optim.lr = common.per_component(5e-6, 5e-6, 1e-5)
        c.optim.warmup = common.per_component(200, 200, 200)
        c.data.global_batch = 256
    c.data.stage = 2
    c.init.update(vit="", llm="")  # stage 2 starts from stage 1 (init_from)
    c.data.seed = common.STAGE_SEEDS[2]
    return c
