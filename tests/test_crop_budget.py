"""`vit.crop_budget`: the ViT encodes only a batch's real crops, gathered into a static number of slots,
with the same losses as encoding every crop slot; a batch with more real crops than the
budget falls back to every slot (same loss again)."""
import functools

import flax.linen as nn
import jax
import numpy as np

from molmo_jax import config
from molmo_jax.models.molmo import Molmo, abstract_params, dummy_inputs, init_params
from molmo_jax.train import trainer

BATCH, CROPS, SEQ, BUDGET = 3, 5, 40, 7


def _cfg(budget: int):
    cfg = config.tiny("qwen2")
    cfg.vit.crop_budget = budget
    return config.validate(cfg)


def _batch(real_crops: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Rows with real_crops[b] real crops, then padding crops (all -1); each crop's tokens in the text."""
    cfg, rng = _cfg(0), np.random.default_rng(0)
    batch = dummy_inputs(cfg, batch=BATCH, seq_len=SEQ, crops=CROPS)
    batch["images"] = rng.normal(size=batch["images"].shape).astype(np.float32)
    n = batch["image_input_idx"].shape[-1]
    for b, k in enumerate(real_crops):
        batch["images"][b, k:] = -1
        batch["image_masks"][b, k:] = -1
        batch["image_input_idx"][b, :k] = (1 + np.arange(k * n)).reshape(k, n) % (SEQ - 1)
    ids = rng.integers(0, 100, (BATCH, SEQ + 1)).astype(np.int32)
    return {**batch, "input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_masks": np.ones((BATCH, SEQ), np.float32)}


def test_budget_gives_the_same_losses():
    params = init_params(_cfg(0), jax.random.key(0))
    losses = {budget: jax.jit(functools.partial(trainer.loss_sums, model=Molmo(_cfg(budget)), z_loss=1e-4))
              for budget in (0, BUDGET)}
    rng = jax.random.key(1)
    for real_crops in ((2, 1, 4), (2, 2, 4)):  # 7 real crops: gathered; 8 > budget: every slot
        ref, got = (losses[budget](params, _batch(real_crops), rng) for budget in (0, BUDGET))
        for key in ("total", "ce", "z", "correct"):
            np.testing.assert_allclose(got[key], ref[key], rtol=1e-6, err_msg=f"{real_crops} {key}")


def test_vit_runs_on_the_budget_only():
    cfg, batch = _cfg(BUDGET), _batch((2, 1, 4))
    patches = batch["images"].shape[2:]
    params = nn.meta.unbox(abstract_params(cfg))
    jaxpr = str(jax.make_jaxpr(Molmo(cfg).apply)({"params": params}, batch["input_ids"], images=batch["images"],
                                                 image_masks=batch["image_masks"],
                                                 image_input_idx=batch["image_input_idx"]))
    assert f"f32[{BUDGET},{patches[0]},{patches[1]}]" in jaxpr  # the gathered crops enter the ViT
