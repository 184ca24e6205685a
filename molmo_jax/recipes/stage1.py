"""Stage 1 of Molmo training: dense captioning on PixMo-Cap (allenai/molmo launch_scripts/train_captioner.py).

    python -m experiments.train --config molmo_jax/recipes/stage1.py:tiny --workdir /tmp/s1
    python -m experiments.train --config molmo_jax/recipes/stage1.py:Molmo-7B-D-0924 --workdir gs://bucket/s1 \
        --config.init.vit=gs://bucket/clip-vit-large-patch14-336 --config.init.llm=gs://bucket/Qwen2-7B \
        --config.data.data_dir=gs://bucket/pixmo --config.data.tokenizer=gs://bucket/Qwen2-7B

`arg`: "tiny" (= "tiny-qwen2"), "tiny-olmo", "tiny-olmoe", a released model name, or "lite" / "lite-long" /
"lite-smoke" (PixMo-lite, `recipes/lite.py`). Released models get the official hyper-parameters, PixMo data
(`data.data_dir`, `data.tokenizer`) and start from the pretrained towers the release started from
(`init.vit`, `init.llm`: transformers directories, see `BASE_MODELS`); tiny ones a 100-step run from a random
init on synthetic batches with larger learning rates (`--config.data.kind=pixmo_lite` for the synthetic PixMo).
"""
from __future__ import annotations

import ml_collections

from molmo_jax import config as config_lib
from molmo_jax.recipes import common, lite

VIT_BASE = "openai/clip-vit-large-patch14-336"  # every release's ViT (23 of its 24 layers kept)
# The base LLM each release started from (MolmoE-1B officially from the "fp32" revision of its repo).
BASE_MODELS = {"Molmo-7B-D-0924": "Qwen/Qwen2-7B", "Molmo-72B-0924": "Qwen/Qwen2-72B",
               "Molmo-7B-O-0924": "allenai/OLMo-7B-1024-preview", "MolmoE-1B-0924": "allenai/OLMoE-1B-7B-0924"}


def placeholder(hub_id: str) -> str:
    """The value of a required tower path the user still has to give (see `check_init`)."""
    return f"<{hub_id} directory>"


def check_init(cfg) -> None:
    """Raises ValueError naming an `init.<tower>` still at its placeholder, or init towers given together
    with `init_from` (which already holds every param)."""
    for tower in ("vit", "llm"):
        path = cfg.init[tower]
        if path.startswith("<"):
            hub_id = path[1:].removesuffix(" directory>")
            raise ValueError(f"init.{tower} is not set: pass --config.init.{tower}=DIR, a local or gs:// copy of "
                             f"{hub_id} (huggingface-cli download {hub_id} --local-dir DIR)")
    if cfg.init_from and (cfg.init.vit or cfg.init.llm):
        raise ValueError(f"init_from={cfg.init_from!r} and init.vit / init.llm are both set; give one")


def model_config(arg: str) -> ml_collections.ConfigDict:
    """The model section: tiny models compute in float32, released ones in bfloat16 (fp32 master params)."""
    name = "tiny-qwen2" if arg == "tiny" else arg
    cfg = config_lib.get_config(name)
    if not name.startswith("tiny-"):
        cfg.dtype = "bfloat16"
    return cfg


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    if lite.is_lite(arg):
        return lite.configure(get_config("tiny"), 1, arg)
    tiny = arg.startswith("tiny")
    c = ml_collections.ConfigDict()
    c.model = model_config(arg)
    c.model.llm.residual_dropout = 0.0
    c.model.llm.response_residual_dropout = 0.1  # the paper's "text-only dropout"
    common.set_stage_formatting(c.model, 1)

    # 4 epochs of PixMo-Cap at batch 128: 4 * ceil(N / 128) with N ~ 710k examples; recompute for a download.
    c.optim = (common.optimizer(100, common.same_per_component(1e-3), common.per_component(10, 20, 20)) if tiny else
               common.optimizer(22_000, common.per_component(2e-4, 6e-6, 2e-5), common.per_component(200, 2000, 2000)))

    d = c.data = ml_collections.ConfigDict()
    # What to train on (data_pipelines/factory.py: make_data):
    #   "synthetic"   random token batches with noise images (data_pipelines/token_batches.py; needs nothing)
    #   "pixmo_lite"  the offline synthetic PixMo (data_pipelines/synthetic.py) through the official
    #                 pipelines (data_pipelines/mixtures.py); needs `tokenizer`
    #   "pixmo"       the PixMo hub files in `data_dir` (+ the academic sets in stage 2); needs `tokenizer`
    d.kind = "synthetic" if tiny else "pixmo"
    d.stage = 1  # 1: captioning (PixMo-Cap with transcripts), 2: the multitask mixture (stage2.py)
    d.global_batch = 8 if tiny else 128  # rows per update, all processes together
    d.seq_len = 64 if tiny else 2304  # tokens per row, image tokens included
    d.crops = 1 if tiny else config_lib.max_total_crops(c.model)  # "synthetic" only: image crops per row
    d.seed = common.STAGE_SEEDS[1]  # data order
    d.tokenizer = ""  # tokenizer.json or its directory (a released model's, the base LLM's; see vocab.py)
    d.pack_crops = 0  # 0: one example per row; n > 0: pack examples into rows, at most n images per row
    d.too_long = "skip"  # examples longer than seq_len: "skip" (counted) or "truncate" (official collator)
    d.num_workers = 0  # grain worker processes (0: threads of this process only)
    # "pixmo": local copies of the hub repos, <data_dir>/pixmo-cap/data/train-*.parquet etc.
    # (huggingface-cli download allenai/pixmo-cap --repo-type dataset --local-dir <data_dir>/pixmo-cap)
    d.data_dir = ""
    d.image_dir = ""  # "pixmo": the downloader's image cache ("" = <data_dir>/images)
    d.academic_dir = ""  # "pixmo" stage 2: tfds data_dir of the academic sets ("" = <data_dir>/academic)
    # "pixmo" stage 2: raw files of each academic builder B (academic.SPECS) in <this>/B, built into
    # academic_dir on first use
    d.academic_manual_dir = ""
    # "pixmo" stage 2: official dataset names to mix; () = mixtures.STAGE2_MIXTURE: its PixMo sets (required)
    # and its academic sets that are built in academic_dir or have files in academic_manual_dir
    d.datasets = ()
    # "pixmo_lite": the PixMo-lite recipe's (lite.data_fields): pixmo_lite_size examples per task, generator
    # pixmo_lite_seed (another seed = other examples, e.g. held out), pixmo_lite_image_size px images, scene
    # style: pixmo_lite_shape_radius (shape radii, fractions of the side), pixmo_lite_max_per_kind,
    # pixmo_lite_kind_colors (one colour per shape kind, named in pointing / counting labels: "red circles")
    d.update(lite.data_fields())

    c.mesh = (1, -1, 1)  # (data, fsdp, tensor); -1 = all remaining devices
    c.seed = 6198
    c.init_from = ""  # "" = random init; or any checkpoint directory (molmo_jax.io.FORMATS, a training run too)
    # Pretrained towers (transformers save_pretrained directories with safetensors, local or gs://), as the
    # official stage 1 starts: the connector and the image-token embedding rows start random. "" = random.
    c.init = ml_collections.ConfigDict()
    c.init.vit = "" if tiny else placeholder(VIT_BASE)  # a CLIP directory (CLIPModel or CLIPVisionModel)
    c.init.llm = "" if tiny else placeholder(BASE_MODELS[arg])  # a Qwen2 / OLMo-2 / OLMoE causal LM directory

    c.checkpoint = common.checkpoint(every=25 if tiny else 1000, max_to_keep=3)
    c.log_every = 1 if tiny else 10
    return c
