"""Sequence packing: several examples per row see nothing of each other (same logits and loss as one
example per row) and the packed pipeline keeps the stream's examples and order (exact resume:
tests/test_data_mixtures.py)."""
import json

import jax
import numpy as np
import pytest

from data_pipelines import mixtures, packing, synthetic
from molmo_jax import config, preprocess
from molmo_jax.models.molmo import Molmo, init_params
from molmo_jax.tokenizer import load_tokenizer
from molmo_jax.train.loss import cross_entropy

FIXTURE = "tests/fixtures/molmo_ref/qwen2_7b_d"
SEQ_LEN = 256


@pytest.fixture(scope="module")
def cfg():
    c = config.from_official(json.load(open(f"{FIXTURE}/config.json")))
    c.vit.update(image_size=(56, 56), num_pos=17)
    c.preprocess.crop_mode = "resize"  # one crop per image
    return config.validate(c)


@pytest.fixture(scope="module")
def tok(cfg):
    return load_tokenizer(f"{FIXTURE}/tokenizer.json", cfg.llm.vocab_size)


def _stream(cfg, tok, n_batches, **options):
    opts = mixtures.PipelineOptions(**{"batch_size": 2, "seq_len": SEQ_LEN, "seed": 3, **options})
    it = iter(mixtures.stage2(synthetic.sources(size=30, image_size=56), cfg, tok, opts,
                              mixtures.SYNTHETIC_MIXTURE))
    return it, [next(it) for _ in range(n_batches)]


def _examples(batch) -> list[bytes]:
    """The examples of a batch, in row order: each starts where position_ids restarts at 0."""
    out = []
    for ids, pos in zip(batch["input_ids"], batch["position_ids"]):
        starts = list(np.flatnonzero(pos == 0)) + [int((ids >= 0).sum())]
        out += [ids[a:b].tobytes() for a, b in zip(starts, starts[1:])]
    return out


def test_packed_rows_hold_the_stream_in_order(cfg, tok):
    _, unpacked = _stream(cfg, tok, 24, batch_size=1)
    _, packed = _stream(cfg, tok, 4, pack_crops=4)
    stream = [e for b in unpacked for e in _examples(b)]
    got = [e for b in packed for e in _examples(b)]
    assert len(got) > 2 * len(packed) * 1.5  # the rows do hold several examples
    assert sorted(got) == sorted(stream[:len(got)])
    assert all(b["images"].shape[:2] == (2, 4) and b["input_ids"].shape == (2, SEQ_LEN) for b in packed)


def test_packing_changes_no_logit_and_no_loss(cfg, tok):
    """Three multi-annotation examples in one row vs one per row: same logits at every real token."""
    opts = mixtures.PipelineOptions(batch_size=1, seq_len=SEQ_LEN, seed=0)
    process = mixtures.example_processor(cfg, tok, opts, shuffle_messages=False)  # the stage-2 formatting
    sources = synthetic.sources(size=3, image_size=56)
    examples = [process(sources[name].get(0, np.random.RandomState(0)), np.random.RandomState(0))
                for name in ("synthetic_docs_charts", "synthetic_count", "synthetic_cap_qa")]
    assert len(set(np.unique(examples[0]["subsegment_ids"]))) == 3  # two conversations + the image
    packed = preprocess.collate([packing.pack(examples)])
    single = preprocess.collate(examples)
    model, params = Molmo(cfg), init_params(cfg, jax.random.key(0))

    def run(batch):
        logits = model.apply({"params": params}, batch["input_ids"], images=batch["images"],
                             image_masks=batch["image_masks"], image_input_idx=batch["image_input_idx"],
                             position_ids=batch["position_ids"], subsegment_ids=batch["subsegment_ids"])
        per_token, weight = cross_entropy(logits, batch["labels"], batch["loss_masks"])
        return np.asarray(logits), float(per_token.sum()), float(weight)

    packed_logits, packed_loss, packed_weight = run(packed)
    single_logits, single_loss, single_weight = run(single)
    lengths = [len(e["input_tokens"]) for e in examples]
    np.testing.assert_allclose(packed_logits[0, :sum(lengths)],
                               np.concatenate([single_logits[k, :n] for k, n in enumerate(lengths)]),
                               atol=2e-5, rtol=1e-4)
    assert packed_weight == pytest.approx(single_weight) and packed_loss == pytest.approx(single_loss, rel=1e-5)


def test_pack_shifts_image_columns_and_subsegments():
    a = {"input_tokens": np.arange(3), "target_tokens": np.arange(3), "loss_masks": np.ones(3, np.float32),
         "subsegment_ids": np.array([10000, 1, 1], np.int32), "position_ids": np.arange(3),
         "images": np.zeros((1, 4, 2)), "image_input_idx": np.array([[1, -1]], np.int32)}
    out = packing.pack([a, a])
    np.testing.assert_array_equal(out["image_input_idx"], [[1, -1], [4, -1]])
    np.testing.assert_array_equal(out["subsegment_ids"], [10000, 1, 1, 20001, 10002, 10002])
    np.testing.assert_array_equal(out["position_ids"], [0, 1, 2, 0, 1, 2])
    with pytest.raises(ValueError, match="images"):
        packing.pack([a, {k: v for k, v in a.items() if k not in ("images", "image_input_idx")}])


def test_pack_crops_is_validated(cfg, tok):
    with pytest.raises(ValueError, match="pack_crops"):
        mixtures.PipelineOptions(batch_size=2, seq_len=SEQ_LEN, seed=0, pack_crops=-1)
    multicrop = config.validate(cfg.copy_and_resolve_references())
    multicrop.preprocess.crop_mode = "overlap-and-resize-c2"
    with pytest.raises(ValueError, match="less than"):
        _stream(config.validate(multicrop), tok, 0, pack_crops=1)
