"""Sequence packing for training (not in the official code): several examples in one batch row.

    row = pack([example_a, example_b])          # preprocessor outputs -> one longer example
    batch = preprocess.collate([row, ...], seq_len=S, max_crops=T)

`mixtures.pipeline` packs when `PipelineOptions.pack_crops` > 0; the loss is that of the unpacked examples.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from molmo_jax import preprocess


def pack(examples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenates training examples into one sequence.

    Nothing crosses examples: subsegment ids are shifted so that every id of an example exceeds every
    id of the examples before it (the model's rule "query sees key iff sub[query] <= sub[key]", on top of
    causality, then keeps each example to itself, its multi-annotation structure included), position ids
    restart with each example, crops are concatenated and image_input_idx shifted to the new columns.
    """
    if len(examples) == 1:
        return dict(examples[0])
    parts = {key: [] for key in preprocess.TEXT_KEYS + preprocess.IMAGE_KEYS}
    columns = sub_offset = 0
    for ex in examples:
        n = len(ex["input_tokens"])
        sub = ex.get("subsegment_ids", np.ones(n, np.int32))
        parts["subsegment_ids"].append(sub + sub_offset)
        sub_offset += int(sub.max()) + 1
        parts["position_ids"].append(ex.get("position_ids", np.arange(n, dtype=np.int64)))
        for key in ("input_tokens", "target_tokens", "loss_masks", "images", "image_masks"):
            if key in ex:
                parts[key].append(ex[key])
        if "image_input_idx" in ex:
            idx = ex["image_input_idx"]
            parts["image_input_idx"].append(np.where(idx >= 0, idx + columns, idx))
        columns += n
    for key in preprocess.IMAGE_KEYS:
        if parts[key] and len(parts[key]) != len(examples):
            raise ValueError(f"pack() needs {key} in every example or in none")
    return {key: np.concatenate(arrays) for key, arrays in parts.items() if arrays}
