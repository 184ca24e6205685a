"""Connector ablation sweeps on PixMo-lite (experiments/ablate_pooling.py runs them).

    cfg = get_config("quick")   # 6 variants, stage 2 only, a short step budget: a few minutes on 2 CPU cores
    cfg = get_config("full")    # 10 variants: each pooling type, window, projector and ViT-layer choice

The sweep is one config, the stage recipes' PixMo-lite (`molmo_jax.recipes.stage{1,2}.get_config(recipe)`)
at the sweep's step budget, with overrides: `overrides` (dotted config fields -> values) for every variant,
then the variant's connector (`overrides(sweep, variant)`). A variant is a dict: name, pooling (a
`connector.POOLINGS` name: every official type, or one added with `register_pooling` in a module listed in
`imports`) -> model.connector.pooling, pool -> model.connector.pooling_h / pooling_w, projector ("mlp",
"2mlp", "linear") -> model.connector.projector, vit_layers (ViT layers whose features are concatenated, e.g.
(-2, -9) or (-1,)) -> model.vit_layers. Every variant is trained with the same seed, data and steps, then
evaluated on the held-out synthetic split.

Combinations left out, and why:
  * 'none' pooling only with a 1x1 window (config.validate) and '2mlp' only where the pooled width equals
    llm.d_model=128 (ViT width 64: attention_2wide, or 'none'/1x1 with two ViT layers).
  * 3x3 windows: the 112 px crop is an 8x8 patch grid, so the connector pads it to 9x9 and the
    preprocessor lays out ceil(8/3)^2 = 9 tokens (config.pooled_grid) - they agree. The preprocessor
    insists that the overlap margins (official (4, 4)) be multiples of the window, which only matters for
    overlapping crops; PixMo-lite uses one resized crop, so 3x3 variants set overlap_margins = (0, 0).
"""
from __future__ import annotations

import ml_collections

BASE = dict(pooling="attention_meanq", pool=(2, 2), projector="mlp", vit_layers=(-2, -9))  # official default


def variant(name: str, **overrides) -> dict:
    return dict(BASE, name=name, **overrides)


QUICK_VARIANTS = [
    variant("meanq_2x2"),  # the released Molmo connector
    variant("attention_2x2", pooling="attention"),
    variant("2wide_2x2_2mlp", pooling="attention_2wide", projector="2mlp"),
    variant("stack_2x2", pooling="stack"),
    variant("none_1x1", pooling="none", pool=(1, 1)),
    variant("meanq_3x3", pool=(3, 3)),
]

FULL_VARIANTS = QUICK_VARIANTS + [
    variant("2wide_2x2", pooling="attention_2wide"),
    variant("stack_3x3", pooling="stack", pool=(3, 3)),
    variant("meanq_2x2_linear", projector="linear"),
    variant("meanq_2x2_last", vit_layers=(-1,)),
]


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
    """arg "quick" (about 5 minutes on 2 CPU cores) or "full" (10 variants, 500 steps each, about 50 minutes)."""
    if arg not in ("quick", "full"):
        raise ValueError(f"ablations.get_config({arg!r}): arg must be 'quick' or 'full'")
    quick = arg == "quick"
    c = ml_collections.ConfigDict()
    c.name = f"ablate_pooling_{arg}"
    c.recipe = "lite"  # the stage recipes' arg: model, data, optimizer; seed, data order the same for every variant
    c.stage1_steps = 0  # 0: stage 2 only, from a random init
    c.stage2_steps = 60 if quick else 500
    c.overrides = ()  # (dotted config field, value) pairs for every variant, e.g. (("optim.lr.llm", 1e-3),)
    c.eval_examples = 16 if quick else 64  # held-out examples per task
    c.eval_batch = 16
    c.max_new_tokens = 0  # 0: each task's default budget
    c.caption_batches = 2 if quick else 4  # held-out stage-1 batches for the caption loss
    c.imports = ()  # modules imported first (e.g. ones that call connector.register_pooling)
    c.variants = list(QUICK_VARIANTS if quick else FULL_VARIANTS)
    return c


def overrides(sweep, variant: dict) -> dict:
    """Dotted config field -> value: the sweep's overrides, then the variant's connector."""
    pool_h, pool_w = (int(x) for x in variant["pool"])
    return {**dict(sweep.overrides), "model.connector.pooling": variant["pooling"],
            "model.connector.pooling_h": pool_h, "model.connector.pooling_w": pool_w,
            "model.connector.projector": variant["projector"],
            "model.vit_layers": tuple(int(i) for i in variant["vit_layers"])}
