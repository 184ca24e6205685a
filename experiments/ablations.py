"""Connector ablation sweeps on PixMo-lite (experiments/ablate_pooling.py runs them).

    cfg = get_config("quick")     # a smoke run: 3 variants x 2 seeds, a few steps each (minutes on 2 CPU cores)
    cfg = get_config("reduced")   # 4 connectors x 3 seeds, stage 1 only (stored in experiments/results)
    cfg = get_config("tokens")    # 64 / 16 / 4 image tokens per crop x 3 seeds, the recipe's own budget (stored)
    cfg = get_config("types")     # one axis of the full sweep (AXES: tokens, types, windows, projectors, layers)
    cfg = get_config("full")      # all 15 variants x 3 seeds on the PixMo-lite recipe's own budget

The sweep is one config, the stage recipes' PixMo-lite (`molmo_jax.recipes.stage{1,2}.get_config(recipe)`)
at the sweep's step budget, with overrides (`overrides(sweep, variant, seed)`): the sweep's `overrides`
(dotted config fields -> values), the seed, then the variant's connector. A variant is a dict: name, pooling
(a `connector.POOLINGS` name: every official type, or one added with `register_pooling` in a module listed
in `imports`) -> model.connector.pooling, pool -> model.connector.pooling_h / pooling_w, projector ("mlp",
"2mlp", "linear") -> model.connector.projector, vit_layers (ViT layers whose features are concatenated, e.g.
(-2, -9) or (-1,)) -> model.vit_layers. Every variant is trained once per seed of `seeds` (the seed sets the
model init, the generated training data and its order, so two variants of one seed see the same examples),
then evaluated on the held-out synthetic split; `BASE` (the released connector) is the reference of the
paired differences.

The axes: pooling type (all five official ones at their window), window size = image tokens per crop
(attention_meanq 1x1 / 2x2 / 3x3 / 4x4: 64 / 16 / 9 / 4 tokens of the 112 px crop's 8x8 patch grid),
projector (mlp / 2mlp / linear) and ViT layers (both official choices: (-2, -9) for CLIP, (-3, -9) for the
other encoders (launch_scripts/train_captioner.py); the last, the second-last alone, and (-3, -6)). Each
axis of `AXES` is also a sweep of its own (the base and the axis' variants): together they are the full
sweep, run a few hours at a time, and the base's runs of one are reused by the next (`--reuse`).

Combinations left out, and why:
  * 'none' pooling only with a 1x1 window (config.validate) and '2mlp' only where the pooled width equals
    llm.d_model=128 (ViT width 64: attention_2wide, or 'none'/1x1 with two ViT layers).
  * 3x3 windows: the 8x8 patch grid is padded to 9x9 and the preprocessor lays out ceil(8/3)^2 = 9 tokens
    (config.pooled_grid) - they agree. The preprocessor insists that the overlap margins (official (4, 4))
    be multiples of the window, which only matters for overlapping crops; PixMo-lite uses one resized crop,
    so 3x3 variants set overlap_margins = (0, 0).
"""
from __future__ import annotations

import ml_collections

BASE = dict(pooling="attention_meanq", pool=(2, 2), projector="mlp", vit_layers=(-2, -9))  # official default
BASE_NAME = "meanq_2x2"


def variant(name: str, **overrides) -> dict:
    return dict(BASE, name=name, **overrides)


FULL_VARIANTS = [
    variant(BASE_NAME),  # the released Molmo connector
    variant("attention_2x2", pooling="attention"),
    variant("2wide_2x2", pooling="attention_2wide"),
    variant("2wide_2x2_2mlp", pooling="attention_2wide", projector="2mlp"),
    variant("stack_2x2", pooling="stack"),
    variant("none_1x1", pooling="none", pool=(1, 1)),
    variant("meanq_1x1", pool=(1, 1)),
    variant("meanq_3x3", pool=(3, 3)),
    variant("meanq_4x4", pool=(4, 4)),
    variant("stack_3x3", pooling="stack", pool=(3, 3)),
    variant("meanq_2x2_linear", projector="linear"),
    variant("meanq_2x2_last", vit_layers=(-1,)),
    variant("meanq_2x2_second_last", vit_layers=(-2,)),
    variant("meanq_2x2_mid", vit_layers=(-3, -6)),
    variant("meanq_2x2_siglip_layers", vit_layers=(-3, -9)),  # official for SigLIP / DINOv2 / MetaCLIP
]
# The full sweep's axes, each a sweep of its own with the base (its runs are shared: `--reuse`):
AXES = {
    "tokens": ("none_1x1", "meanq_4x4"),  # image tokens per crop 64 / 16 / 4 (also the quick sweep's)
    "types": ("attention_2x2", "2wide_2x2", "stack_2x2"),  # the official pooling types at 16 tokens per crop
    "windows": ("meanq_1x1", "meanq_3x3", "stack_3x3"),  # 64 / 9 tokens per crop through the attention / stack
    "projectors": ("meanq_2x2_linear", "2wide_2x2", "2wide_2x2_2mlp"),  # 2mlp needs the 2wide pooling's width
    "layers": ("meanq_2x2_last", "meanq_2x2_second_last", "meanq_2x2_mid", "meanq_2x2_siglip_layers"),
}


def axis_variants(axis: str) -> list[dict]:
    """The base, then the axis' variants in FULL_VARIANTS order."""
    return [v for v in FULL_VARIANTS if v["name"] == BASE_NAME or v["name"] in AXES[axis]]


# the same token counts, and at 16 the first patch as the query
REDUCED_VARIANTS = [v for v in FULL_VARIANTS if v["name"] in (BASE_NAME, "attention_2x2", "none_1x1", "meanq_4x4")]


ARGS = ("quick", "reduced", *AXES, "full")


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
    """arg "quick" (smoke: 3 variants x 2 seeds, 20 stage-2 steps), "reduced" (4 variants x 3 seeds, stage 1
    only, 200 steps, held-out caption loss and image gain), an axis of AXES (the base and the axis' variants
    x 3 seeds, the recipe's stage 1 + stage 2 budget, 64 examples per task) or "full" (15 variants x 3
    seeds, the same budget)."""
    if arg not in ARGS:
        raise ValueError(f"ablations.get_config({arg!r}): arg must be one of {', '.join(map(repr, ARGS))}")
    c = ml_collections.ConfigDict()
    c.name = f"ablate_pooling_{arg}"
    c.recipe = "lite"  # the stage recipes' arg: model, data, optimizer
    c.seeds = (0, 1) if arg == "quick" else (0, 1, 2)
    # -1: the recipe's budget; 0: the stage is not trained (stage 2 then starts from random init). On the
    # lite recipe the image path is learned in stage 1 (probed before its scene style changed: held-out
    # caption image gain 0.0007 / 0.0055 / 0.07 / 0.14 nats per token after 50 / 100 / 150 / 250 steps) while
    # the stage-2 tasks' gains stay under 0.001 for 200 stage-2 steps and need the recipe's 1,500
    # (experiments/image_gain.py; the README's "Ablate the connector"): the reduced sweep trains stage 1 only
    c.stage1_steps = {"quick": 0, "reduced": 200}.get(arg, -1)
    c.stage2_steps = {"quick": 20, "reduced": 0}.get(arg, -1)
    c.overrides = ()  # (dotted config field, value) pairs for every variant
    c.eval_examples = {"quick": 8, "reduced": 0}.get(arg, 64)  # per task (generation)
    c.eval_batch = 16
    c.max_new_tokens = 0  # 0: each task's default budget (192 for pointing)
    # held-out examples per task for the teacher-forced answer losses and image gains (experiments/image_gain.py)
    c.gain_examples = {"quick": 16}.get(arg, 64)
    c.imports = ()  # modules imported first (e.g. ones that call connector.register_pooling)
    c.variants = ({"quick": axis_variants("tokens"), "reduced": REDUCED_VARIANTS, "full": FULL_VARIANTS}.get(arg)
                  or axis_variants(arg))
    return c


def overrides(sweep, variant: dict, seed: int) -> dict:
    """Dotted config field -> value: the sweep's overrides, the seed (model init, PixMo-lite data), then the
    variant's connector."""
    pool_h, pool_w = (int(x) for x in variant["pool"])
    return {**dict(sweep.overrides), "seed": seed, "data.pixmo_lite_seed": seed,
            "model.connector.pooling": variant["pooling"],
            "model.connector.pooling_h": pool_h, "model.connector.pooling_w": pool_w,
            "model.connector.projector": variant["projector"],
            "model.vit_layers": tuple(int(i) for i in variant["vit_layers"])}
