"""PixMo-lite: a tiny Molmo trained in two stages on the offline synthetic PixMo, on a CPU.

The stage recipes take it as their arg: `stage1.get_config("lite")`, `stage2.get_config("lite")` (the main
job, experiments/main.py: about 7 minutes on 2 idle CPU cores), "lite-long" (4x the steps: where pointing
is learned, see the README) or "lite-smoke" (2 steps per stage: checks that the job runs, learns nothing).
Each is the stage's tiny recipe with the model of `model_config` (a 112 px ViT, one crop per image, a
128-wide LLM), the stage's official formatting and PixMo-lite data (`data.kind="pixmo_lite"`) packed
several examples into each 192-token row.
"""
from __future__ import annotations

import ml_collections

from molmo_jax import config as config_lib
from molmo_jax.recipes import common

SCALES = {"quick": 1, "long": 4, "smoke": 0}  # step multiplier; 0: 2 steps per stage
STAGE_STEPS = {1: 250, 2: 1500}  # at scale 1
IMAGE_SIZE = 112
# Scene shapes of radius 14-19 px (1/8-1/6 of the side), at most 2 per kind: the tiny ViT (14 px patches)
# tells the generator's default 7-10 px circles, squares and triangles apart barely above chance.
SHAPE_RADIUS = (1 / 8, 1 / 6)
MAX_PER_KIND = 2
# Each kind of a scene in its own colour, named in the pointing and counting labels ("Point to red circles"):
# the tiny ViT locates shapes but tells their outlines apart barely above chance, while a colour it reads.
KIND_COLORS = True
TRAIN_EXAMPLES = 20_000  # per synthetic task (examples are generated on the fly)
BATCH = 8  # rows of SEQ_LEN tokens; packed, about 18 examples per step
SEQ_LEN = 192
PACK_CROPS = 3  # pack examples into rows, at most 3 images per row (0: one example per row)
LR = 1e-3  # the LLM's peak learning rate (5e-4 before issue 21's probes: every held-out cell was lower)
# The ViT's and connector's per stage: stage 2 at a fifth of stage 1's keeps more of the token positions
# stage 1 taught (a linear probe reads a token's cell 0.66 of the time after it vs 0.38 at 5e-4; see the README)
IMAGE_LR = {1: 5e-4, 2: 1e-4}
# The ViT's positional embedding starts at 4x the fan-in scheme's unit std: the image tokens then keep where
# they are through training (a lone shape's centre read from the mean image token: R^2 0.91 vs 0.74) and the
# clocks' minutes are read (hour and minute exact 0.97 vs 0.23); see the README's main-job probes
POS_INIT_SCALE = 4.0
SEED = 0  # model init and the generator of the training examples


def model_config(image_size: int = IMAGE_SIZE, vocab_size: int = 512) -> ml_collections.ConfigDict:
    """Tiny Qwen2-family Molmo for 112 px images: one crop (the global view), 4x4 pooled tokens.

    The ViT and connector start from fan-in init (`layers.kernel_init`): with the official N(0, 0.02^2)
    the image features of this narrow model start ~1e4 times smaller than the token embeddings and the
    LLM learns to ignore them (gradients into the ViT fall to ~1e-7 within a few hundred steps). The
    positional embedding starts at POS_INIT_SCALE times the fan-in scheme's std.
    """
    cfg = config_lib.tiny("qwen2")
    cfg.name = "pixmo-lite"
    grid = image_size // cfg.vit.patch_size
    cfg.vit.update(image_size=(image_size, image_size), num_pos=grid * grid + 1)
    cfg.llm.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_hidden=384,
                   vocab_size=vocab_size, embedding_size=vocab_size, max_sequence_length=512)
    cfg.connector.projector_hidden = 384
    cfg.vit.init = cfg.connector.init = "fan_in"
    cfg.vit.pos_init_scale = POS_INIT_SCALE
    cfg.preprocess.update(crop_mode="resize", max_crops=1)
    return config_lib.validate(cfg)


def data_fields() -> dict:
    """PixMo-lite's data settings (`data.pixmo_lite_*`: examples per task, generator seed, image size, scene
    style): the stage recipes' defaults, fine-tuning's PixMo-lite mix and the held-out sets' default style."""
    return dict(pixmo_lite_size=TRAIN_EXAMPLES, pixmo_lite_seed=SEED, pixmo_lite_image_size=IMAGE_SIZE,
                pixmo_lite_shape_radius=SHAPE_RADIUS, pixmo_lite_max_per_kind=MAX_PER_KIND,
                pixmo_lite_kind_colors=KIND_COLORS)


def is_lite(arg: str) -> bool:
    return arg == "lite" or arg.startswith("lite-")


def set_steps(c, steps: int) -> None:
    """A training length of `steps` updates, with the warm-up and checkpoint spacing that go with it."""
    c.optim.steps = steps
    c.optim.warmup = common.same_per_component(max(1, steps // 20))
    c.checkpoint.every = max(50, steps // 4)


def configure(c, stage: int, arg: str = "lite") -> ml_collections.ConfigDict:
    """The stage's tiny recipe `c` turned into PixMo-lite's (`arg`: "lite", "lite-long", "lite-smoke")."""
    scale = arg.removeprefix("lite").removeprefix("-") or "quick"
    if scale not in SCALES:
        raise ValueError(f"recipe arg {arg!r}: PixMo-lite's are " + ", ".join(
            "lite" if s == "quick" else f"lite-{s}" for s in SCALES))
    c.model = model_config()
    common.set_stage_formatting(c.model, stage)
    c.optim.lr = common.per_component(connector=IMAGE_LR[stage], vit=IMAGE_LR[stage], llm=LR)
    c.data.update(kind="pixmo_lite", global_batch=BATCH, seq_len=SEQ_LEN, pack_crops=PACK_CROPS, **data_fields())
    c.mesh = (1, 1, 1)
    c.seed = SEED
    set_steps(c, STAGE_STEPS[stage] * SCALES[scale] or 2)
    c.checkpoint.max_to_keep = 1
    c.log_every = 10
    return c
