"""grain pipelines: mixture rates, packing, host sharding, exact resume, skipping bad examples."""
import copy
import dataclasses
import json
import math

import numpy as np
import pytest

from data_pipelines import mixtures, synthetic
from molmo_jax import config
from molmo_jax.recipes import common
from molmo_jax.tokenizer import load_tokenizer

FIXTURE = "tests/fixtures/molmo_ref/qwen2_7b_d"
SEQ_LEN = 1024


@pytest.fixture(scope="module")
def cfg():
    c = config.from_official(json.load(open(f"{FIXTURE}/config.json")))
    c.preprocess.crop_mode = "resize"  # one crop per image: fast
    common.set_stage_formatting(c, 2)
    return c


@pytest.fixture(scope="module")
def stage1_cfg(cfg):
    c = copy.deepcopy(cfg)
    common.set_stage_formatting(c, 1)
    return c


@pytest.fixture(scope="module")
def tok(cfg):
    return load_tokenizer(f"{FIXTURE}/tokenizer.json", cfg.llm.vocab_size)


@dataclasses.dataclass(frozen=True)
class Items:
    """A source of `n` examples {"name", "index"}."""
    name: str
    n: int

    def __len__(self):
        return self.n

    def get(self, index, rng):
        return {"name": self.name, "index": index}


@dataclasses.dataclass(frozen=True)
class Listed:
    """A source of given examples."""
    examples: tuple

    def __len__(self):
        return len(self.examples)

    def get(self, index, rng):
        return dict(self.examples[index])


def _key(example, rng):
    return example["name"], example["index"]


def _opts(**kw):
    return mixtures.PipelineOptions(**{"batch_size": 4, "seq_len": SEQ_LEN, "seed": 1, **kw})


def _synthetic(n=40):
    return synthetic.sources(size=n, image_size=56)


def test_mixture_rates_follow_the_official_formula():
    groups = (mixtures.Group("g1", 0.6, {"a": None, "b": 100}), mixtures.Group("g2", 0.4, {"c": None}))
    rates = mixtures.mixture_rates({"c": 9, "a": 400, "b": 10**6}, groups)
    assert list(rates) == ["a", "b", "c"]
    np.testing.assert_allclose([rates["a"], rates["b"], rates["c"]], [0.4, 0.2, 0.4])
    np.testing.assert_allclose(list(mixtures.mixture_rates({"a": 400, "b": 1}, groups).values()), [2 / 3, 1 / 3])
    with pytest.raises(KeyError, match="in no mixture group"):
        mixtures.mixture_rates({"z": 1}, groups)
    pixmo_only = {"pixmo_cap": 700_000, "pixmo_cap_qa": 200_000, "pixmo_points": 100_000, "pixmo_docs_charts": 10}
    rates = mixtures.mixture_rates(pixmo_only)
    assert math.isclose(sum(rates.values()), 1) and rates["pixmo_docs_charts"] == pytest.approx(0.5)
    assert rates["pixmo_cap"] / rates["pixmo_cap_qa"] == pytest.approx(math.sqrt(50_000 / 200_000))


def test_mixture_rates_hold_over_a_long_draw():
    # grain's index shuffle is slow on tiny datasets (milliseconds per index below ~100 examples)
    sources = {"a": Items("a", 1000), "b": Items("b", 3000), "c": Items("c", 10**6)}
    rates = {"a": 0.5, "b": 0.3, "c": 0.2}
    n = 6000
    stream = mixtures.mixture(sources, rates, _key, seed=0)
    draws = [stream[k] for k in range(n)]
    for name, p in rates.items():
        count = sum(d[0] == name for d in draws)
        assert abs(count - n * p) <= 3 * math.sqrt(n * p * (1 - p)), (name, count)
    a = [i for name, i in draws if name == "a"]
    assert sorted(a[:1000]) == sorted(a[1000:2000]) == list(range(1000)) and a[:1000] != a[1000:2000]


def test_each_epoch_is_a_new_permutation():
    stream = mixtures.source_stream("a", Items("a", 7), _key, seed=0)
    epochs = [[stream[7 * e + k][1] for k in range(7)] for e in range(3)]
    assert all(sorted(e) == list(range(7)) for e in epochs) and len({tuple(e) for e in epochs}) > 1


def test_multi_annotation_packing(cfg, tok):
    example = synthetic.SyntheticSource("docs_charts", size=3, image_size=56).get(0, np.random.RandomState(0))
    process = mixtures.example_processor(cfg, tok, _opts(), shuffle_messages=True)
    outs = [process(example, np.random.RandomState(s)) for s in range(8)]
    out = outs[0]
    sub, pos, masks = out["subsegment_ids"], out["position_ids"], out["loss_masks"]
    assert set(np.unique(sub)) == {1, 2, mixtures.preprocess.IMAGE_AT_START_SUBSEGMENT}
    np.testing.assert_allclose(np.unique(masks[masks > 0]), [math.sqrt(1 / 2)])  # root_subsegments
    first_text = np.flatnonzero(sub < 10000)
    assert pos[sub == 2][0] == pos[first_text[0]]  # each conversation continues right after the image
    orders = {tuple(o["input_tokens"][o["subsegment_ids"] == 1][:40]) for o in outs}
    assert len(orders) > 1  # conversations are shuffled with the example rng


def test_batches_have_static_shapes_and_hosts_split_the_global_batch(cfg, tok):
    sources = _synthetic()
    single = iter(mixtures.stage2(sources, cfg, tok, _opts(), mixtures.SYNTHETIC_MIXTURE))
    hosts = [iter(mixtures.stage2(sources, cfg, tok, _opts(process_index=h, process_count=2),
                                  mixtures.SYNTHETIC_MIXTURE)) for h in range(2)]
    for _ in range(3):
        full, parts = next(single), [next(h) for h in hosts]
        assert full["input_ids"].shape == (4, SEQ_LEN) and full["images"].shape[:2] == (4, 1)
        assert set(full) == {"input_ids", "labels", "loss_masks", "position_ids", "subsegment_ids", "images",
                             "image_masks", "image_input_idx"}
        rows = lambda b: [r.tobytes() for r in b["input_ids"]]  # noqa: E731
        host_rows = rows(parts[0]) + rows(parts[1])
        assert parts[0]["input_ids"].shape == (2, SEQ_LEN)
        assert sorted(host_rows) == sorted(rows(full))  # global examples 0, 2 on host 0 and 1, 3 on host 1
        np.testing.assert_array_equal(full["images"][::2], parts[0]["images"])
        np.testing.assert_array_equal(full["images"][1::2], parts[1]["images"])
    assert not any(single.skipped.values())  # else the hosts' skips would shift their batches


@pytest.mark.parametrize("pack_crops", [0, 4])  # packing: the example left for the next batch is re-read
def test_restored_iterator_yields_the_same_batches(cfg, tok, pack_crops):
    build = lambda: mixtures.stage2(_synthetic(), cfg, tok, _opts(pack_crops=pack_crops),  # noqa: E731
                                    mixtures.SYNTHETIC_MIXTURE)
    it = iter(build())
    for _ in range(2):
        next(it)
    state = json.loads(json.dumps(it.get_state()))
    expected = [next(it) for _ in range(2)]
    restored = iter(build())
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_bad_examples_are_skipped_and_counted(cfg, tok):
    good = synthetic.SyntheticSource("cap", size=1, image_size=56).get(0, None)
    bad = (
        dict(good, image=b"not an image"),
        dict(good, message_list=[dict(text="", style="long_caption")]),
        dict(good, message_list=[dict(text="word " * 500, style="long_caption")]),
        {"image": good["image"]},  # nothing the formatter can use
    )
    source = Listed((good,) + bad)
    opts = _opts(batch_size=2)
    process = mixtures.example_processor(cfg, tok, opts, shuffle_messages=True)
    it = iter(mixtures.pipeline(mixtures.source_stream("bad", source, process, seed=0), cfg, opts))
    batches = [next(it) for _ in range(3)]
    assert all(b["input_ids"].shape == (2, SEQ_LEN) for b in batches)
    assert all(it.skipped[r] > 0 for r in mixtures.SKIP_REASONS), it.skipped
    assert sum(it.skipped.values()) + 6 == it.get_state()["parent"]["next_index"]  # 6 good ones batched
    assert it.get_state()["drops"] == it.drops and set(it.drops) == {f"bad/{r}" for r in mixtures.SKIP_REASONS}


def test_too_long_can_truncate_as_the_official_collator(stage1_cfg, tok):
    good = synthetic.SyntheticSource("cap", size=1, image_size=56).get(0, None)
    long = dict(good, message_list=[dict(text="word " * 500, style="long_caption")])
    opts = _opts(batch_size=1, too_long="truncate")
    it = iter(mixtures.stage1(Listed((long,)), stage1_cfg, tok, opts))
    assert next(it)["input_ids"].shape == (1, SEQ_LEN) and it.skipped["too_long"] == 0


def test_stage1_uses_captioning_format(stage1_cfg, tok):
    source = synthetic.SyntheticSource(synthetic.STAGE1_TASK, size=4, image_size=56)
    batch = next(iter(mixtures.stage1(source, stage1_cfg, tok, _opts(batch_size=1))))
    ids = batch["input_ids"][0]
    text = tok.decode([t for t in ids if 0 <= t < stage1_cfg.llm.vocab_size and t != tok.eos_id])
    assert "User:" not in text and "long_caption" in text and "transcript" in text
    assert text.index("long_caption") < text.index("transcript")  # stage 1 keeps the conversation order


def test_options_are_validated():
    with pytest.raises(ValueError, match="divisible"):
        _opts(batch_size=3, process_count=2)
    with pytest.raises(ValueError, match="too_long"):
        _opts(too_long="drop")
