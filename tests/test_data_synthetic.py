"""PixMo-lite: determinism, hub schemas, correctness of the rendered answers, tokenizer, preprocessing."""
import itertools
import json
import re

import numpy as np
import pyarrow as pa
import pytest

from data_pipelines import pixmo, synthetic, vocab
from molmo_jax import config, formatting, preprocess
from molmo_jax.recipes import stage1, stage2
from molmo_jax.tokenizer import load_tokenizer

FIXTURE = "tests/fixtures/molmo_ref/qwen2_7b_d"
STAGE2 = formatting.Formatter("uber_model", "role", "demo_or_style", always_start_with_space=True)


def _rng():
    return np.random.RandomState(0)


@pytest.mark.parametrize("task", sorted(synthetic.TASKS))
def test_deterministic_and_in_hub_schema(task):
    src = synthetic.SyntheticSource(task, size=50, seed=3, image_size=64)
    image, rows = src.rows(7)
    image2, rows2 = synthetic.SyntheticSource(task, size=50, seed=3, image_size=64).rows(7)
    np.testing.assert_array_equal(image, image2)
    assert rows == rows2
    other, _ = synthetic.SyntheticSource(task, size=50, seed=4, image_size=64).rows(7)
    assert not np.array_equal(image, other)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    schema = pixmo.SCHEMAS[synthetic.TASKS[task].schema]
    table = pa.Table.from_pydict(rows, schema=pa.schema([schema.field(c) for c in rows]))  # raises on a type error
    assert table.num_rows >= 1
    example = src.get(7, _rng())
    messages, _ = STAGE2(example, True, False, _rng())
    assert messages and all(m.strip() for m in re.split(r"\n", str(messages)))


def test_out_of_range_and_unknown_task():
    with pytest.raises(IndexError):
        synthetic.SyntheticSource("clocks", size=3).get(3, _rng())
    with pytest.raises(ValueError, match="unknown synthetic task"):
        synthetic.SyntheticSource("nope")


def _dark(image, x, y):
    """Some pixel of the 3x3 neighbourhood of (x, y) is black."""
    x, y = int(round(x)), int(round(y))
    return (image[y - 1:y + 2, x - 1:x + 2].sum(-1) < 200).any()


def test_clock_hands_match_the_answer():
    src = synthetic.SyntheticSource("clocks", size=20, image_size=112)
    for i in range(20):
        image, rows = src.rows(i)
        hour, minute = map(int, rows["text"][0].split(":"))
        assert 1 <= hour <= 12 and minute % 5 == 0
        assert rows["watch_time"][0] == f"{hour:02d}:{minute:02d}:00"
        c, a = 56, np.deg2rad(6 * minute)
        assert _dark(image, c + 35 * np.sin(a), c - 35 * np.cos(a))  # the minute hand's tip region
        h = np.deg2rad(30 * (hour % 12) + minute / 2)
        assert _dark(image, c + 20 * np.sin(h), c - 20 * np.cos(h))


def test_points_lie_on_shapes_and_counts_match():
    src = synthetic.SyntheticSource("points", size=10, image_size=112)
    for i in range(10):
        image, rows = src.rows(i)
        assert rows["label"] == ["circles", "squares", "triangles"]
        for pts, n in zip(rows["points"], rows["count"]):
            assert len(pts) == n
            for p in pts:
                assert 0 < p["x"] < 100 and 0 < p["y"] < 100  # percent, as pixmo-points
                assert tuple(image[int(p["y"] * 1.12), int(p["x"] * 1.12)]) != synthetic.BACKGROUND
    ex = synthetic.SyntheticSource("count", size=5, image_size=112).get(0, _rng())
    assert ex["style"] == "point_count" and ex["points"].max() > 1  # pixels, as pixmo-count
    answer = STAGE2(ex, True, False, _rng())[0][1]
    assert answer.endswith(f"shows a total of {len(ex['points'])}.")


def test_captions_qa_and_docs_answers():
    shapes = [synthetic.Shape("circle", "red", 10, 10, 3), synthetic.Shape("square", "blue", 30, 10, 3),
              synthetic.Shape("circle", "red", 50, 10, 3)]
    assert synthetic.describe(shapes) == "There are 2 red circles and 1 blue square."
    assert synthetic.describe(shapes[:1]) == "There is 1 red circle."
    assert synthetic.transcripts(shapes)[0] == "i see 2 red circles and 1 blue square"
    image, rows = synthetic.SyntheticSource("docs_charts", size=5).rows(1)
    qas = rows["questions"][0]
    assert re.fullmatch(r"What is the value of [A-D]\?", qas["question"][0]) and qas["answer"][0].isdigit()
    assert qas["answer"][1] in synthetic.BAR_LABELS
    assert (image != synthetic.BACKGROUND).any()
    qa = synthetic.SyntheticSource("cap_qa", size=5).get(2, _rng())
    assert qa["message_list"][0]["style"] == "synthetic_qa"


def test_trained_tokenizer_is_small_and_exact(tmp_path):
    cfg = config.from_official(json.load(open(f"{FIXTURE}/config.json")))
    formatters = [formatting.Formatter.from_config(recipe.get_config("lite").model) for recipe in (stage1, stage2)]
    texts = vocab.corpus(synthetic.sources(100).values(), formatters, n_per_source=30)
    path = vocab.train_tokenizer(texts, tmp_path / "tokenizer.json", vocab_size=cfg.llm.vocab_size)
    tok = load_tokenizer(path, cfg.llm.vocab_size)
    assert tok.special.im_start == cfg.llm.vocab_size and tok.bos_id == tok.eos_id
    for text, most in ((" 10:55", 6), (" There are 2 red circles and 1 blue square.", 12),
                       (" User: clocks: What time is being shown? Assistant:", 14)):
        ids = tok.encode(text)
        assert len(ids) <= most and tok.decode(ids) == text
    # One token per digit (as Qwen2's pre-tokenizer): every coordinate is spelled the same way.
    for number in ("36.3", "37.5", "90.9", "12.0", "100.0"):
        assert [tok.decode([i]) for i in tok.encode(f' x="{number}"')[2:]] == [*number, '"']


def test_every_task_preprocesses():
    cfg = config.from_official(json.load(open(f"{FIXTURE}/config.json")))
    cfg.preprocess.crop_mode = "resize"
    pre = preprocess.Preprocessor(cfg, load_tokenizer(f"{FIXTURE}/tokenizer.json", cfg.llm.vocab_size))
    for task in synthetic.TASKS:
        out = pre.from_example(synthetic.SyntheticSource(task, size=2, image_size=56).get(1, _rng()),
                               for_inference=False, is_training=True, rng=_rng())
        assert out["loss_masks"].sum() > 0 and out["images"].shape[0] == 1


BIG = synthetic.SceneStyle(radius=(1 / 8, 1 / 6), max_per_kind=2)
KIND_COLORS = synthetic.SceneStyle(radius=(1 / 8, 1 / 6), max_per_kind=2, kind_colors=True)


def check_labels(rows, shapes, style):
    """Each label names its kind; with style.kind_colors also the colour all of that kind's shapes share (a
    colour no other kind has), for an absent kind a colour no shape has; without, no colour."""
    for name in rows["label"]:
        *color, kind = name.split(" ")
        assert kind.removesuffix("s") in synthetic.SHAPES and len(color) == style.kind_colors
        if style.kind_colors:
            matching = [s.kind == kind[:-1] for s in shapes if s.color == color[0]]
            assert all(matching), (name, shapes)
            assert len(matching) == sum(s.kind == kind[:-1] for s in shapes)


@pytest.mark.parametrize("style", [synthetic.SceneStyle(), BIG, synthetic.SceneStyle((0.2, 0.3), 2), KIND_COLORS],
                         ids=["default", "big", "crowded", "lite"])
def test_scene_style_keeps_scenes_valid(style):
    """Shapes lie inside the image, their boxes 2 px apart, radii and per-kind counts as the style says; the rows (points,
    counts, labels) and the held-out set's object masks describe exactly the shapes drawn."""
    size, lo, hi = 112, style.radius[0] * 112, style.radius[1] * 112
    for source in (synthetic.SyntheticSource("points", 40, 0, size, style),
                   synthetic.held_out_source("synthetic_points", size, style)):
        for i in range(40):
            image, rows = source.rows(i)
            shapes = synthetic.random_scene(synthetic.task_rng(source.seed, "points", i), size, style)
            assert shapes and all(lo <= s.r <= hi and s.r < s.x < size - s.r and s.r < s.y < size - s.r
                                  for s in shapes)
            for a, b in itertools.combinations(shapes, 2):
                assert max(abs(a.x - b.x), abs(a.y - b.y)) > a.r + b.r + 2
            assert rows["count"] == [sum(s.kind == k for s in shapes) for k in synthetic.SHAPES]
            assert max(rows["count"]) <= style.max_per_kind
            check_labels(rows, shapes, style)
            if style.kind_colors:  # one colour per kind, another for each kind
                assert len({s.color for s in shapes}) == len({s.kind for s in shapes})
            centres, masks = source.object_masks(i, image)
            assert len(masks) == sum(rows["count"]) == len(shapes)
            # Disjoint masks that cover the painted pixels: no shape hides part of another.
            assert sum(m.sum() for m in masks) == (image != synthetic.BACKGROUND).any(-1).sum()
            assert all(mask[int(y), int(x)] for (x, y), mask in zip(centres, masks))  # centres are painted
            gold = sorted((p["x"], p["y"]) for pts in rows["points"] for p in pts)
            np.testing.assert_allclose(gold, sorted(map(tuple, 100 * centres / size)))
    count = synthetic.SyntheticSource("count", 20, 0, size, style)
    for i in range(20):
        image, rows = count.rows(i)
        centres, masks = count.object_masks(i, image)
        xs = rows["points"][0]["x"]
        assert 1 <= rows["count"][0] == len(xs) <= style.max_per_kind
        assert set(xs) <= set(centres[:, 0])
        shapes = synthetic.random_scene(synthetic.task_rng(0, "count", i), size, style)
        check_labels(rows, shapes, style)
        assert sorted(xs) == sorted(s.x for s in shapes if s.kind + "s" == rows["label"][0].split(" ")[-1])


def test_kind_colors_name_every_colour_with_every_kind():
    """The named colour does not tell the kind, nor whether it is present: across scenes each kind is named
    with every colour, present and absent."""
    coloured = synthetic.SyntheticSource("points", 200, 0, 112, KIND_COLORS)
    named = {(label.split(" ")[1], label.split(" ")[0], n > 0)
             for rows in map(lambda i: coloured.rows(i)[1], range(200))
             for label, n in zip(rows["label"], rows["count"])}
    assert named == {(k + "s", c, present) for k in synthetic.SHAPES for c in synthetic.COLORS
                     for present in (True, False)}


def test_scene_style_rejects_bad_values_and_comes_from_the_config():
    with pytest.raises(ValueError, match="radius"):
        synthetic.SceneStyle((0.3, 0.2))
    with pytest.raises(ValueError, match="max_per_kind"):
        synthetic.SceneStyle(max_per_kind=0)
    lite = stage2.get_config("lite").data
    assert synthetic.config_style(lite) == synthetic.SceneStyle(lite.pixmo_lite_shape_radius,
                                                                lite.pixmo_lite_max_per_kind, True)
    assert synthetic.config_style(stage1.get_config("tiny").data) == synthetic.config_style(lite)  # the default
    held_out = synthetic.config_held_out_source("synthetic_points", lite)  # what the main job evaluates on
    assert (held_out.style, held_out.seed, held_out.image_size) == (synthetic.config_style(lite),
                                                                    synthetic.HELD_OUT_SEED, lite.pixmo_lite_image_size)
