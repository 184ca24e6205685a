"""Teacher-forced answer losses and image gains (experiments/image_gain.py) on a tiny PixMo-lite model.

The loss is checked against a per-example log-softmax of the model's logits (no padding, no batching), and
the gain against its definition: exactly 0 when the "swapped" image is the same picture.
"""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from data_pipelines import synthetic, vocab
from experiments import image_gain
from molmo_jax.models.molmo import Molmo, init_params
from molmo_jax.recipes import stage1, stage2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    cfg = stage2.get_config("lite")
    tokenizer = vocab.pixmo_lite_tokenizer([stage1.get_config("lite"), cfg], tmp_path_factory.mktemp("tok"))
    return cfg, tokenizer, init_params(cfg.model, jax.random.key(3))


@dataclasses.dataclass(frozen=True)
class OneImage:
    """A source whose examples all show the image of example 0 (so swapping images changes nothing)."""
    source: synthetic.SyntheticSource

    def __len__(self) -> int:
        return len(self.source)

    def get(self, index: int, rng) -> dict:
        return dict(self.source.get(index, rng), image=self.source.rows(0)[0])


def test_answer_loss_is_the_models_mean_answer_token_loss(setup):
    cfg, tokenizer, params = setup
    source = synthetic.config_held_out_source("synthetic_count", cfg.data)
    examples, failed = image_gain.encode(cfg, tokenizer, source, 3)
    assert failed == 0 and len(examples) == 3
    (loss, tokens), = image_gain.mean_losses(cfg.model, params, {"count": examples}).values()
    # the same, one unpadded example at a time: -log softmax at each weighted target, weighted mean
    total = weight = 0.0
    for e in examples:
        logits = Molmo(cfg.model).apply({"params": params}, e["input_tokens"][None], images=e["images"][None],
                                        image_masks=e["image_masks"][None], image_input_idx=e["image_input_idx"][None],
                                        position_ids=e["position_ids"][None], subsegment_ids=e["subsegment_ids"][None])
        logp = np.asarray(jax.nn.log_softmax(np.asarray(logits[0], np.float64), axis=-1))
        on = np.flatnonzero(e["loss_masks"] > 0)  # answer tokens (image and padding targets are never weighted)
        total += -(e["loss_masks"][on] * logp[on, e["target_tokens"][on]]).sum()
        weight += e["loss_masks"][on].sum()
    assert tokens == sum(int((e["loss_masks"] > 0).sum()) for e in examples) > 0
    np.testing.assert_allclose(loss, total / weight, rtol=2e-5)


def test_gain_is_zero_when_the_swapped_image_is_the_same(setup):
    cfg, tokenizer, params = setup
    source = synthetic.config_held_out_source("synthetic_count", cfg.data)
    out = image_gain.answer_losses(params, tokenizer, {"same": (cfg, OneImage(source)), "count": (cfg, source)}, 4)
    same, count = out["same"], out["count"]
    assert same["gain"] == 0.0 and same["own"] == same["swapped"] and same["examples"] == 4
    # with other images the loss changes (an untrained model uses its image a little, but not by nothing)
    assert count["own"] != count["swapped"] and count["gain"] == count["swapped"] - count["own"]
    assert count["tokens"] == same["tokens"]  # same prompts and answers, another picture
