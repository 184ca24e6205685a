"""Molmo tokenizer: a local Hugging Face `tokenizer.json` plus Molmo's five image special tokens.

Mirrors `olmo/tokenizer.py:build_tokenizer(identifier, pad_tokenizer_to=vocab_size)`: the base tokenizer
(length L, its own specials included) is padded with `|<EXTRA_TOKENS_i>|` special tokens up to
`vocab_size` V, then `<im_start> <im_end> <im_patch> <im_col> <|image|>` are added, so they get ids
V..V+4. A tokenizer.json that already holds those five tokens (the final tokenizer as the official code
builds it) is used as is. Nothing is ever downloaded.

BOS: Qwen2 / OLMo tokenizers have none, and Molmo then uses the EOS id as BOS.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import tokenizers
from etils import epath

from molmo_jax import paths

IM_START = "<im_start>"
IM_END = "<im_end>"
IM_PATCH = "<im_patch>"
IM_COL = "<im_col>"
IMAGE_PROMPT = "<|image|>"
EXTRA_TOKENS = (IM_START, IM_END, IM_PATCH, IM_COL, IMAGE_PROMPT)

# Looked up (in this order) when no tokenizer_config.json names the EOS token.
_EOS_FALLBACKS = ("<|endoftext|>", "</s>", "<|end_of_text|>")


class TokenizerError(ValueError):
    """The tokenizer file is missing, malformed or inconsistent with the requested vocab size."""


def _padding_token(i: int) -> str:
    return f"|<EXTRA_TOKENS_{i}>|"


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """Ids of Molmo's image special tokens."""
    im_start: int
    im_end: int
    im_patch: int
    im_col: int
    image_prompt: int


class MolmoTokenizer:
    """A `tokenizers.Tokenizer` with Molmo's special token ids, EOS and BOS.

    Attributes:
      eos_id: end-of-sequence id; appended after every assistant message.
      bos_id: begin-of-sequence id (= eos_id when the tokenizer has no BOS, as Qwen2 / OLMo).
      special: ids of the five image tokens.
    """

    def __init__(self, tokenizer: tokenizers.Tokenizer, eos_token: str, bos_token: str | None = None):
        self.tokenizer = tokenizer
        self.eos_id = self._id(eos_token)
        self.bos_id = self.eos_id if bos_token is None else self._id(bos_token)
        self.special = SpecialIds(*(self._id(t) for t in EXTRA_TOKENS))

    def _id(self, token: str) -> int:
        i = self.tokenizer.token_to_id(token)
        if i is None:
            raise TokenizerError(f"token {token!r} is not in the tokenizer vocabulary")
        return i

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without any added BOS/EOS (`add_special_tokens=False`)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], truncate_at_eos: bool = True) -> str:
        """Text of `ids` as the official `HfTokenizerWrapper.decode`.

        A leading EOS acting as BOS is dropped; with `truncate_at_eos` the text stops at the first EOS,
        otherwise EOS/BOS ids are removed. Other special tokens are kept in the text.
        """
        ids = [int(t) for t in ids]
        if self.eos_id == self.bos_id and ids and ids[0] == self.eos_id:
            ids = ids[1:]
        if truncate_at_eos:
            if self.eos_id in ids:
                ids = ids[:ids.index(self.eos_id)]
        else:
            ids = [t for t in ids if t not in (self.eos_id, self.bos_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def _config_tokens(directory: epath.Path) -> tuple[str | None, str | None]:
    """(eos, bos) token strings named by tokenizer_config.json / special_tokens_map.json, if any."""
    eos = bos = None
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        path = directory / name
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        as_str = lambda t: t.get("content") if isinstance(t, dict) else t
        eos = as_str(d.get("eos_token")) or eos
        bos = as_str(d.get("bos_token")) or bos
    return eos, bos


def _resolve_file(path: epath.PathLike) -> epath.Path:
    paths.require_bucket(path, "tokenizer")
    path = epath.Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"no tokenizer file at {os.fspath(path)!r} (expected a tokenizer.json or its directory)")
    return path


def _add_molmo_tokens(tok: tokenizers.Tokenizer, vocab_size: int | None, path: str):
    """Pads `tok` to `vocab_size` entries and appends EXTRA_TOKENS, in place (official build_tokenizer)."""
    n = tok.get_vocab_size(with_added_tokens=True)
    if vocab_size is not None and n > vocab_size:
        raise TokenizerError(f"{path}: tokenizer has {n} tokens, more than vocab_size={vocab_size}")
    padding = [_padding_token(i) for i in range((vocab_size or n) - n)]
    tok.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                            for t in padding + list(EXTRA_TOKENS)])


def load_tokenizer(path: epath.PathLike, vocab_size: int | None = None,
                   eos_token: str | None = None, bos_token: str | None = None) -> MolmoTokenizer:
    """Loads a tokenizer.json (or a directory holding one; local or gs://) as Molmo uses it.

    Args:
      path: tokenizer.json file or its directory; tokenizer_config.json / special_tokens_map.json in the
        same directory name the EOS/BOS tokens.
      vocab_size: the model's `llm.vocab_size` V. The image tokens must end up at ids V..V+4: they are
        checked when the file already has them, and added after `|<EXTRA_TOKENS_i>|` padding otherwise.
      eos_token, bos_token: override the token strings read from the config files. Without any BOS the
        EOS doubles as BOS.
    """
    path = _resolve_file(path)
    try:
        tok = tokenizers.Tokenizer.from_str(path.read_text())
    except Exception as e:  # the Rust parser raises plain Exceptions
        raise TokenizerError(f"cannot parse tokenizer file {os.fspath(path)!r}: {e}") from e
    if any(tok.token_to_id(t) is None for t in EXTRA_TOKENS):
        _add_molmo_tokens(tok, vocab_size, path)
    cfg_eos, cfg_bos = _config_tokens(path.parent)
    eos = eos_token or cfg_eos or next((t for t in _EOS_FALLBACKS if tok.token_to_id(t) is not None), None)
    if eos is None:
        raise TokenizerError(f"{path}: cannot tell the EOS token; pass eos_token=")
    out = MolmoTokenizer(tok, eos, bos_token or cfg_bos)
    ids = [getattr(out.special, f.name) for f in dataclasses.fields(SpecialIds)]
    if vocab_size is not None and ids != list(range(vocab_size, vocab_size + len(EXTRA_TOKENS))):
        raise TokenizerError(f"{path}: Molmo special tokens {EXTRA_TOKENS} have ids {ids}, expected "
                             f"{vocab_size}..{vocab_size + len(EXTRA_TOKENS) - 1} for vocab_size={vocab_size}")
    return out
