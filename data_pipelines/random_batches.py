"""Deterministic random Molmo batches, for tests, benchmarks and the `data.kind="synthetic"` config.

Each row is an arithmetic token sequence (learnable, so the loss falls) of random length, right-padded
with -1; the first half of the real tokens is the prompt (loss weight 0), the rest the response with
weight 1 or sqrt(1/2) (as `root_subsegments` weights). Image crops are uniform noise; the first
min(tokens per crop, T/2) pooled tokens of crop 0 land on positions 1, 2, ... Batch i depends only on
(seed, i): the iterator's position is `{"next_index": i}` (grain-style get_state / set_state).
"""
from __future__ import annotations

import numpy as np

from molmo_jax import config as config_lib


def make_batch(cfg, rng: np.random.Generator, batch_size: int, seq_len: int, crops: int) -> dict[str, np.ndarray]:
    """One batch in the collator's layout: input_ids / labels / position_ids int32[B, T], loss_masks
    float32[B, T]; with crops > 0 images float32[B, C, P, 588], image_input_idx int32[B, C, N] and,
    for a model with a padding embedding, image_masks float32[B, C, P]."""
    vocab = cfg.llm.vocab_size
    start = rng.integers(0, vocab, (batch_size, 1))
    stride = rng.integers(1, 8, (batch_size, 1))
    tokens = (start + stride * np.arange(seq_len + 1)) % vocab
    length = rng.integers(seq_len // 2, seq_len + 1, (batch_size, 1))
    col = np.arange(seq_len)[None]
    valid = col < length
    weight = np.where(rng.random((batch_size, 1)) < 0.5, 1.0, np.sqrt(0.5))
    batch = {
        "input_ids": np.where(valid, tokens[:, :-1], -1).astype(np.int32),
        "labels": np.where(valid, tokens[:, 1:], -1).astype(np.int32),
        "loss_masks": np.where(valid & (col >= length // 2), weight, 0.0).astype(np.float32),
        "position_ids": np.where(valid, col, -1).astype(np.int32),
    }
    if crops:
        patches = int(np.prod(config_lib.patch_grid(cfg)))
        n_tokens = int(np.prod(config_lib.pooled_grid(cfg)))
        idx = np.full((batch_size, crops, n_tokens), -1, np.int32)
        used = min(n_tokens, seq_len // 2)
        idx[:, 0, :used] = 1 + np.arange(used)
        batch.update(
            images=rng.uniform(-1, 1, (batch_size, crops, patches, 3 * cfg.vit.patch_size ** 2)).astype(np.float32),
            image_input_idx=idx)
        if cfg.connector.padding_embed:  # the preprocessor emits no masks for a model without padding embed
            batch["image_masks"] = np.ones((batch_size, crops, patches), np.float32)
    return batch


class RandomBatches:
    """Infinite iterator of `make_batch` batches; batch i is drawn from np.random.default_rng([seed, i])."""

    def __init__(self, cfg, batch_size: int, seq_len: int, crops: int = 1, seed: int = 0):
        self.cfg, self.batch_size, self.seq_len, self.crops, self.seed = cfg, batch_size, seq_len, crops, seed
        self.next_index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.next_index])
        self.next_index += 1
        return make_batch(self.cfg, rng, self.batch_size, self.seq_len, self.crops)

    def get_state(self) -> dict:
        return {"next_index": self.next_index}

    def set_state(self, state: dict):
        self.next_index = int(state["next_index"])
