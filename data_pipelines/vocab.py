"""A small byte-level BPE tokenizer trained on the text a set of sources produces (for tiny models).

    formatters = [formatting.Formatter.from_config(c.model) for c in (stage1_cfg, stage2_cfg)]
    texts = corpus(synthetic.sources(1000).values(), formatters, n_per_source=200)
    path = train_tokenizer(texts, "/tmp/tok/tokenizer.json", vocab_size=cfg.llm.vocab_size)
    tokenizer = molmo_jax.tokenizer.load_tokenizer(path, cfg.llm.vocab_size)   # adds Molmo's image tokens
    tokenizer = pixmo_lite_tokenizer([stage1_cfg, stage2_cfg], workdir)        # all of the above, once

The corpus holds every prompt template of the formatter and the conversations formatted as each training
stage formats them, so prompts, style prefixes, answers and point markup all become short token sequences.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator, Sequence

import numpy as np
import tokenizers
from etils import epath
from tokenizers import decoders, models, pre_tokenizers, trainers

from data_pipelines import pixmo, synthetic
from molmo_jax import formatting
from molmo_jax.tokenizer import MolmoTokenizer, load_tokenizer

EOS = "<|endoftext|>"


def _flatten(messages) -> Iterator[str]:
    for m in messages:
        if isinstance(m, str):
            yield m
        else:
            yield from _flatten(m)


def corpus(sources: Iterable[pixmo.Source], formatters: Sequence[formatting.Formatter], n_per_source: int = 200,
           seed: int = 0) -> Iterator[str]:
    """Prompt templates, then the messages of the first examples of each source as each formatter writes them."""
    for templates in formatting.GENERAL_PROMPTS_V1.values():
        yield from templates
    rng = np.random.RandomState(seed)
    for source in sources:
        for i in range(min(n_per_source, len(source))):
            example = source.get(i, rng)
            for formatter in formatters:
                yield from _flatten(formatter(example, True, False, rng)[0])


def train_tokenizer(texts: Iterable[str], path: str | os.PathLike, vocab_size: int = 512) -> str:
    """Trains a byte-level BPE with `vocab_size` entries (EOS included) and saves it as tokenizer.json.

    Digits are split one per token before the byte-level BPE, as Qwen2's pre-tokenizer does (`\\p{N}`):
    a merged BPE writes "36" as one token but "37" as "3" "7", so point coordinates and counts would be
    spelled two ways, and no token would stand for one digit of a coordinate.

    `molmo_jax.tokenizer.load_tokenizer(path, vocab_size)` then appends the five image tokens at ids
    vocab_size .. vocab_size + 4, as the model config expects.
    """
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tok.to_str(pretty=True))
    return os.fspath(path)


def pixmo_lite_tokenizer(stage_cfgs: Sequence, workdir: epath.PathLike) -> MolmoTokenizer:
    """The tokenizer of PixMo-lite training configs (`molmo_jax.recipes.stage1/2.get_config("lite")`):
    trained once into workdir/tokenizer.json on the text of their PixMo-lite data (`data.pixmo_lite_*` of the
    first config), formatted as each config formats it; Molmo's image tokens get ids vocab_size + 0..4."""
    path = epath.Path(workdir) / "tokenizer.json"
    vocab_size = stage_cfgs[0].model.llm.vocab_size
    if not path.exists():
        d = stage_cfgs[0].data
        sources = list(synthetic.config_sources(d, synthetic.STAGE2_TASKS + (synthetic.STAGE1_TASK,)).values())
        formatters = [formatting.Formatter.from_config(c.model) for c in stage_cfgs]
        train_tokenizer(corpus(sources, formatters, 200), path, vocab_size)
    return load_tokenizer(path, vocab_size)
