"""The batches a training config's data section names (experiments/stage1.py documents the fields):
random token batches, PixMo-lite or PixMo (+ the academic sets in stage 2) through data_pipelines/mixtures.py.

    data = make_data(cfg)                  # this process's iterator; grain ones checkpoint their position
"""
from __future__ import annotations

import math

import jax

from data_pipelines import mixtures
from data_pipelines import synthetic as pixmo_lite
from molmo_jax import config as config_lib
from molmo_jax.tokenizer import MolmoTokenizer, load_tokenizer
from molmo_jax.train import synthetic

KINDS = ("synthetic", "pixmo_lite", "pixmo")  # data.kind (see experiments/stage1.py)


def check_data(cfg, tokenizer_given: bool = False) -> None:
    """Raises ValueError naming the `data.<field>` that is unknown, missing or too small for `data.kind`."""
    d = cfg.data
    if d.kind not in KINDS:
        raise ValueError(f"data.kind={d.kind!r} is unknown; known: {', '.join(KINDS)}")
    if d.stage not in (1, 2):
        raise ValueError(f"data.stage={d.stage!r}; must be 1 (captioning) or 2 (multitask mixture)")
    if d.kind != "synthetic" and not (d.tokenizer or tokenizer_given):
        raise ValueError(f"data.kind={d.kind!r} needs data.tokenizer: a tokenizer.json or its directory "
                         "(a released model's, the base LLM's; data_pipelines/vocab.py trains one)")
    if d.kind == "pixmo" and not d.data_dir:
        raise ValueError("data.kind='pixmo' needs data.data_dir: the directory holding the PixMo hub repos "
                         "(<data_dir>/pixmo-cap/data/train-*.parquet, ...)")
    crop_tokens = math.prod(config_lib.pooled_grid(cfg.model))
    if d.kind != "synthetic" and d.too_long == "skip" and d.seq_len <= crop_tokens:
        raise ValueError(f"data.seq_len={d.seq_len} cannot hold an image ({crop_tokens} tokens per crop): every "
                         "example would be skipped; raise data.seq_len or use a smaller model.vit.image_size")


def make_data(cfg, tokenizer: MolmoTokenizer | None = None):
    """This process's batch iterator for the config's data section (grain ones checkpoint their position);
    `tokenizer` replaces the one `data.tokenizer` names."""
    check_data(cfg, tokenizer is not None)
    d = cfg.data
    if d.kind == "synthetic":
        return synthetic.SyntheticBatches(cfg.model, d.global_batch // jax.process_count(), d.seq_len, d.crops,
                                          d.seed + jax.process_index())
    tokenizer = tokenizer or load_tokenizer(d.tokenizer, cfg.model.llm.vocab_size)
    options = mixtures.PipelineOptions(batch_size=d.global_batch, seq_len=d.seq_len, seed=d.seed,
                                       process_index=jax.process_index(), process_count=jax.process_count(),
                                       too_long=d.too_long, pack_crops=d.pack_crops, num_workers=d.num_workers)
    if d.kind == "pixmo_lite":
        size, seed, px = d.pixmo_lite_size, d.pixmo_lite_seed, d.pixmo_lite_image_size
        if d.stage == 1:
            ds = mixtures.stage1(pixmo_lite.SyntheticSource(pixmo_lite.STAGE1_TASK, size, seed, px),
                                 cfg.model, tokenizer, options)
        else:
            ds = mixtures.stage2(pixmo_lite.sources(size, seed, px), cfg.model, tokenizer, options,
                                 groups=mixtures.SYNTHETIC_MIXTURE)
    else:
        from data_pipelines import sources  # needs tensorflow-datasets (the "data" extra): only for real data

        image_dir = d.image_dir or f"{d.data_dir}/images"
        if d.stage == 1:
            ds = mixtures.stage1(sources.load(sources.STAGE1_DATASET, d.data_dir, image_dir), cfg.model,
                                 tokenizer, options)
        else:
            named = sources.stage2_sources(d.data_dir, image_dir, d.academic_dir or f"{d.data_dir}/academic",
                                           d.academic_manual_dir, d.datasets)
            ds = mixtures.stage2(named, cfg.model, tokenizer, options)
    return iter(ds)
