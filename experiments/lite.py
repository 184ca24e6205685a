"""The PixMo-lite recipe: a tiny Molmo trained in two stages on the offline synthetic PixMo, on a CPU.

Used by the README's main job (experiments/main.py) and the connector ablations. Everything is built from
one `get_config(arg)` ConfigDict: the model (a 112 px ViT, one crop per image, a 128-wide LLM), the
tokenizer (a byte-level BPE trained on the synthetic text), and the two trainer configs, whose data
section (`experiments/data.py`, kind "pixmo_lite") packs several examples into each 192-token row.

    cfg = get_config("quick")
    tokenizer = build_tokenizer(cfg, workdir)
    _, stage1_dir = run_stage(cfg, "stage1", tokenizer, workdir)
    state, _ = run_stage(cfg, "stage2", tokenizer, workdir, init_from=stage1_dir)
"""
from __future__ import annotations

import ml_collections
from etils import epath

from data_pipelines import mixtures, synthetic, vocab
from experiments import data as data_lib
from experiments import stage1 as stage1_lib
from experiments import stage2 as stage2_lib
from molmo_jax import config as config_lib
from molmo_jax import io
from molmo_jax.tokenizer import MolmoTokenizer, load_tokenizer
from molmo_jax.train import trainer


def model_config(image_size: int = 112, vocab_size: int = 512) -> ml_collections.ConfigDict:
    """Tiny Qwen2-family Molmo for 112 px images: one crop (the global view), 4x4 pooled tokens.

    The ViT and connector start from fan-in init (`layers.kernel_init`): with the official N(0, 0.02^2)
    the image features of this narrow model start ~1e4 times smaller than the token embeddings and the
    LLM learns to ignore them (gradients into the ViT fall to ~1e-7 within a few hundred steps).
    """
    cfg = config_lib.tiny("qwen2")
    cfg.name = "pixmo-lite"
    grid = image_size // cfg.vit.patch_size
    cfg.vit.update(image_size=(image_size, image_size), num_pos=grid * grid + 1)
    cfg.llm.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_hidden=384,
                   vocab_size=vocab_size, embedding_size=vocab_size, max_sequence_length=512)
    cfg.connector.projector_hidden = 384
    cfg.vit.init = cfg.connector.init = "fan_in"
    cfg.preprocess.update(crop_mode="resize", max_crops=1)
    return config_lib.validate(cfg)


def get_config(arg: str = "quick") -> ml_collections.ConfigDict:
    """arg "quick" (the main job: about 9 minutes on 2 idle CPU cores), "long" (4x the steps) or "smoke"
    (2 steps per stage, 4 held-out examples per task: checks that the job runs, learns nothing)."""
    scale = {"quick": 1, "long": 4, "smoke": 0}[arg]
    c = ml_collections.ConfigDict()
    c.model = model_config()
    c.image_size = 112
    c.train_examples = 20_000  # per synthetic task (examples are generated on the fly)
    c.eval_examples = 64  # held-out examples per task, from another seed
    c.eval_seed = 12345
    c.batch = 8  # rows of seq_len tokens; packed, about 18 examples per step
    c.seq_len = 192
    c.pack_crops = 3  # pack examples into rows, at most 3 images per row (0: one example per row)
    c.stage1_steps = 250 * scale or 2
    c.stage2_steps = 1500 * scale or 2
    if arg == "smoke":
        c.eval_examples = 4
    c.lr = 5e-4  # the LLM's peak learning rate
    c.image_lr = 5e-4  # the ViT's and connector's (2x was not clearly better: see the README)
    c.seed = 0
    return c


def build_tokenizer(cfg, workdir: epath.PathLike) -> MolmoTokenizer:
    """Trains (once) the BPE on PixMo-lite text; Molmo's image tokens get ids vocab_size..vocab_size+4."""
    path = epath.Path(workdir) / "tokenizer.json"
    if not path.exists():
        sources = list(train_sources(cfg).values()) + [stage1_source(cfg)]
        path.parent.mkdir(parents=True, exist_ok=True)
        vocab.train_tokenizer(vocab.corpus(sources, 200), path, cfg.model.llm.vocab_size)
    return load_tokenizer(path, cfg.model.llm.vocab_size)


def stage1_source(cfg, seed: int | None = None) -> synthetic.SyntheticSource:
    return synthetic.SyntheticSource(synthetic.STAGE1_TASK, cfg.train_examples,
                                     cfg.seed if seed is None else seed, cfg.image_size)


def train_sources(cfg, seed: int | None = None, size: int | None = None) -> dict[str, synthetic.SyntheticSource]:
    return synthetic.sources(size or cfg.train_examples, cfg.seed if seed is None else seed, cfg.image_size)


def trainer_config(cfg, stage: str) -> ml_collections.ConfigDict:
    """The official stage-1 / stage-2 trainer config ("tiny"), resized for PixMo-lite."""
    c = (stage1_lib if stage == "stage1" else stage2_lib).get_config("tiny")
    c.model = cfg.model
    c.model.formatting.update(
        mixtures.STAGE1_FORMATTING if stage == "stage1" else mixtures.STAGE2_FORMATTING)
    steps = cfg.stage1_steps if stage == "stage1" else cfg.stage2_steps
    c.optim.steps = steps
    c.optim.lr = stage1_lib.per_component(connector=cfg.image_lr, vit=cfg.image_lr, llm=cfg.lr)
    c.optim.warmup = stage1_lib.per_component(*(max(1, steps // 20),) * 3)
    c.data.update(kind="pixmo_lite", global_batch=cfg.batch, seq_len=cfg.seq_len, pack_crops=cfg.pack_crops,
                  pixmo_lite_size=cfg.train_examples, pixmo_lite_seed=cfg.seed, pixmo_lite_image_size=cfg.image_size)
    c.mesh = (1, 1, 1)
    c.seed = cfg.seed
    c.checkpoint.every = max(50, steps // 4)
    c.checkpoint.max_to_keep = 1
    c.log_every = 10
    return c


def data(cfg, stage: str, tokenizer: MolmoTokenizer):
    """The stage's batches (the trainer config's data section: PixMo-lite through the official pipelines)."""
    return data_lib.make_data(trainer_config(cfg, stage), tokenizer)


def run_stage(cfg, stage: str, tokenizer: MolmoTokenizer, workdir: epath.PathLike, init_from: str = ""):
    """Trains one stage in workdir/<stage> (resuming if it was interrupted); a stage that completes exports
    its model to workdir/<stage>/export/orbax.

    Returns (final train state, the stage's run directory: a checkpoint for the next stage's init_from).
    """
    out = epath.Path(workdir) / stage
    tcfg = trainer_config(cfg, stage)
    tcfg.init_from = str(init_from)
    io.save_run_files(out, tcfg.model, tokenizer)
    state = trainer.train(tcfg, data(cfg, stage, tokenizer), out)  # raises TrainingStopped when stopped
    io.export_run(out, state["params"], tcfg.model, tokenizer)
    return state, out
