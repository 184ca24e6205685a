"""The batches a training config's data section names, for every kind of data:

    data = make_data(cfg)                  # this process's iterator; grain ones checkpoint their position
    data = make_data(cfg, tokenizer)       # the tokenizer given instead of the one data.tokenizer names

data.kind (the recipes in `molmo_jax.recipes` document the fields):
  "synthetic"   random token batches with noise images (`random_batches`; needs nothing)
  "pixmo_lite"  PixMo-lite (`synthetic`): stage 1 its captions, stage 2 its tasks at the stage-2 rates
  "pixmo"       the PixMo hub files in data.data_dir (+ the academic sets in stage 2)
  "user"        a user-format JSONL file (`user_data`), mixed with PixMo-lite at rate data.mix_pixmo_lite
Every grain kind goes through `mixtures.pipeline` with the same options (data.seed, host sharding,
data.too_long, data.pack_crops, data.num_workers) and formats as `cfg.model.formatting` says.
"""
from __future__ import annotations

import math

import jax

from data_pipelines import mixtures, random_batches, synthetic, user_data
from molmo_jax import config as config_lib
from molmo_jax.tokenizer import MolmoTokenizer, load_tokenizer

KINDS = ("synthetic", "pixmo_lite", "pixmo", "user")


def check_data(cfg, tokenizer_given: bool = False) -> None:
    """Raises ValueError naming the `data.<field>` that is unknown, missing or too small for `data.kind`."""
    d = cfg.data
    if d.kind not in KINDS:
        raise ValueError(f"data.kind={d.kind!r} is unknown; known: {', '.join(KINDS)}")
    if d.kind == "user":
        if not d.path:
            raise ValueError("data.kind='user' needs data.path: a JSONL file in the user data format")
        if not 0 <= d.mix_pixmo_lite < 1:
            raise ValueError(f"data.mix_pixmo_lite must be in [0, 1), got {d.mix_pixmo_lite}")
    elif d.stage not in (1, 2):
        raise ValueError(f"data.stage={d.stage!r}; must be 1 (captioning) or 2 (multitask mixture)")
    if d.kind != "synthetic" and not (d.get("tokenizer") or tokenizer_given):
        raise ValueError(f"data.kind={d.kind!r} needs data.tokenizer: a tokenizer.json or its directory "
                         "(a released model's, the base LLM's; data_pipelines/vocab.py trains one)")
    if d.kind == "pixmo" and not d.data_dir:
        raise ValueError("data.kind='pixmo' needs data.data_dir: the directory holding the PixMo hub repos "
                         "(<data_dir>/pixmo-cap/data/train-*.parquet, ...)")
    crop_tokens = math.prod(config_lib.pooled_grid(cfg.model))
    if d.kind != "synthetic" and d.too_long == "skip" and d.seq_len <= crop_tokens:
        raise ValueError(f"data.seq_len={d.seq_len} cannot hold an image ({crop_tokens} tokens per crop): every "
                         "example would be skipped; raise data.seq_len or use a smaller model.vit.image_size")


def pipeline_options(d) -> mixtures.PipelineOptions:
    """This process's `mixtures.PipelineOptions` of a data section."""
    return mixtures.PipelineOptions(batch_size=d.global_batch, seq_len=d.seq_len, seed=d.seed,
                                    process_index=jax.process_index(), process_count=jax.process_count(),
                                    too_long=d.too_long, pack_crops=d.pack_crops, num_workers=d.num_workers)


def make_data(cfg, tokenizer: MolmoTokenizer | None = None):
    """This process's batch iterator for the config's data section (grain ones checkpoint their position);
    `tokenizer` replaces the one `data.tokenizer` names."""
    check_data(cfg, tokenizer is not None)
    d = cfg.data
    if d.kind == "synthetic":
        return random_batches.RandomBatches(cfg.model, d.global_batch // jax.process_count(), d.seq_len, d.crops,
                                            d.seed + jax.process_index())
    tokenizer = tokenizer or load_tokenizer(d.tokenizer, cfg.model.llm.vocab_size)
    options = pipeline_options(d)
    if d.kind == "user":
        return iter(_user_data(cfg, tokenizer, options))
    if d.kind == "pixmo_lite":
        if d.stage == 1:
            (captions,) = synthetic.config_sources(d, (synthetic.STAGE1_TASK,)).values()
            return iter(mixtures.stage1(captions, cfg.model, tokenizer, options))
        return iter(mixtures.stage2(synthetic.config_sources(d), cfg.model, tokenizer, options,
                                    groups=mixtures.SYNTHETIC_MIXTURE))
    from data_pipelines import sources  # needs tensorflow-datasets (the "data" extra): only for real data

    image_dir = d.image_dir or f"{d.data_dir}/images"
    if d.stage == 1:
        return iter(mixtures.stage1(sources.load(sources.STAGE1_DATASET, d.data_dir, image_dir), cfg.model,
                                    tokenizer, options))
    named = sources.stage2_sources(d.data_dir, image_dir, d.academic_dir or f"{d.data_dir}/academic",
                                   d.academic_manual_dir, d.datasets)
    return iter(mixtures.stage2(named, cfg.model, tokenizer, options))


def _user_data(cfg, tokenizer: MolmoTokenizer, options: mixtures.PipelineOptions):
    """The user JSONL mixed with PixMo-lite (its tasks at their stage-2 mixture rates, drawn as the config's
    `data.pixmo_lite_*` say) at rate `data.mix_pixmo_lite`; multi-conversation examples shuffled as in stage 2."""
    d = cfg.data
    named = {"user": user_data.UserData(d.path, d.image_dir or None, d.allow_outside_images)}
    rates = None
    if d.mix_pixmo_lite:
        lite = synthetic.config_sources(d)
        lite_rates = mixtures.mixture_rates({n: len(s) for n, s in lite.items()}, mixtures.SYNTHETIC_MIXTURE)
        named.update(lite)
        rates = {"user": 1 - d.mix_pixmo_lite, **{n: d.mix_pixmo_lite * r for n, r in lite_rates.items()}}
    process = mixtures.example_processor(cfg.model, tokenizer, options, shuffle_messages=True)
    return mixtures.pipeline(mixtures.mixture(named, rates, process, d.seed), cfg.model, options)


def validate_user_data(cfg, tokenizer: MolmoTokenizer) -> user_data.Report:
    """`user_data.validate` of the config's data file, with the model's lengths (an answer token within
    data.seq_len)."""
    d = cfg.data
    options = mixtures.PipelineOptions(batch_size=1, seq_len=d.seq_len, seed=d.seed, too_long="truncate")
    process = mixtures.example_processor(cfg.model, tokenizer, options, shuffle_messages=False)
    return user_data.validate(d.path, d.image_dir or None, d.allow_outside_images, process, d.seq_len)
