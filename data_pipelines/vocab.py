"""A small byte-level BPE tokenizer trained on the text a set of sources produces (for tiny models).

    texts = corpus(synthetic.sources(1000).values(), n_per_source=200)
    path = train_tokenizer(texts, "/tmp/tok/tokenizer.json", vocab_size=cfg.llm.vocab_size)
    tokenizer = molmo_jax.tokenizer.load_tokenizer(path, cfg.llm.vocab_size)   # adds Molmo's image tokens

The corpus holds every prompt template of the formatter and the formatted conversations of both training
stages, so prompts, style prefixes, answers and point markup all become short token sequences.
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np
import tokenizers
from etils import epath
from tokenizers import decoders, models, pre_tokenizers, trainers

from data_pipelines import pixmo
from molmo_jax import formatting

EOS = "<|endoftext|>"

# The formatter settings of stage 1 (captioning) and stage 2 (multitask), as the official launch scripts set
# them (launch_scripts/train_captioner.py, launch_scripts/train_multitask_model.py).
STAGE_FORMATTERS = (
    formatting.Formatter(prompt_templates="none", message_format="none", system_prompt="style_and_length",
                         always_start_with_space=True),
    formatting.Formatter(prompt_templates="uber_model", message_format="role", system_prompt="demo_or_style",
                         always_start_with_space=True),
)


def _flatten(messages) -> Iterator[str]:
    for m in messages:
        if isinstance(m, str):
            yield m
        else:
            yield from _flatten(m)


def corpus(sources: Iterable[pixmo.Source], n_per_source: int = 200, seed: int = 0) -> Iterator[str]:
    """Prompt templates, then the formatted messages of the first examples of each source (both stages)."""
    for templates in formatting.GENERAL_PROMPTS_V1.values():
        yield from templates
    rng = np.random.RandomState(seed)
    for source in sources:
        for i in range(min(n_per_source, len(source))):
            example = source.get(i, rng)
            for formatter in STAGE_FORMATTERS:
                yield from _flatten(formatter(example, True, False, rng)[0])


def train_tokenizer(texts: Iterable[str], path: str | os.PathLike, vocab_size: int = 512) -> str:
    """Trains a byte-level BPE with `vocab_size` entries (EOS included) and saves it as tokenizer.json.

    `molmo_jax.tokenizer.load_tokenizer(path, vocab_size)` then appends the five image tokens at ids
    vocab_size .. vocab_size + 4, as the model config expects.
    """
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tok.to_str(pretty=True))
    return os.fspath(path)
