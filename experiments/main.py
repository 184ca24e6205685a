"""The main job (until the training loop lands): load a tiny Molmo checkpoint in the official format,
run a jitted forward pass on its built-in reference image, and check it against the official logits.

    bash experiments/run_main.sh
"""
from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np

from molmo_jax import checkpoints
from molmo_jax.models.molmo import Molmo

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "molmo_ref" / "qwen2_7b_d"


def main():
    cfg, params = checkpoints.load(FIXTURE)
    case = np.load(FIXTURE / "cases" / "multicrop_wide" / "arrays.npz")
    forward = jax.jit(lambda p, ids, im, m, idx: Molmo(cfg).apply(
        {"params": p}, ids, images=im, image_masks=m, image_input_idx=idx))
    args = (case["input_tokens"][None].astype(np.int32), case["images"][None], case["image_masks"][None],
            case["image_input_idx"][None])
    logits = forward(params, *args).block_until_ready()
    start = time.perf_counter()
    logits = np.asarray(forward(params, *args).block_until_ready())
    elapsed = time.perf_counter() - start
    diff = np.abs(logits[0] - case["logits"]).max()
    print(f"{cfg.name}: {args[0].shape[1]} tokens, {args[1].shape[1]} crops, forward {elapsed * 1e3:.1f} ms, "
          f"max |logits - official| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("logits differ from the official model")


if __name__ == "__main__":
    main()
