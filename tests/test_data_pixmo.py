"""PixMo readers on tiny parquet files with the hub columns."""
import hashlib
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines import pixmo
from data_pipelines.download import image_file
from molmo_jax import formatting

STAGE2 = formatting.Formatter("uber_model", "role", "demo_or_style", always_start_with_space=True, debug=True)


def _png(color=(200, 10, 10), size=(40, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


SHA = hashlib.sha256(_png()).hexdigest()  # the hash of every image `_write` caches
A, B = "http://img.test/a.png", "http://img.test/b.png"


def _write(path, name, rows, image_dir=None, missing=()):
    """Writes rows (column -> list) in the hub schema and caches an image for every URL not in `missing`."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=pixmo.SCHEMAS[name]), path)
    for url in set(rows.get("image_url", ())) - set(missing):
        with open(image_file(image_dir, url), "wb") as f:
            f.write(_png())
    return path


def _rng():
    return np.random.RandomState(0)


def _user_turns(example):
    return [m["question"] for m in example["message_list"]]


def test_schema_check_and_missing_files(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"image_url": ["u"]}), path)
    with pytest.raises(ValueError, match="lacks the column"):
        pixmo.read_table(str(path), "pixmo-cap")
    with pytest.raises(FileNotFoundError):
        pixmo.parquet_files(str(tmp_path / "none-*.parquet"))
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(ValueError, match="cut.parquet: not a readable parquet file"):
        pixmo.read_table(str(tmp_path / "cut.parquet"), "pixmo-cap")


def test_cap_modes_dropped_downloads_and_val_split(tmp_path):
    urls = [f"http://x.test/{i}.jpg" for i in range(6)]
    path = _write(str(tmp_path / "cap.parquet"), "pixmo-cap",
                  dict(image_url=urls, caption=[f"caption {i}" for i in range(6)],
                       transcripts=[[f"t{i}a", f"t{i}b"] for i in range(6)]), tmp_path, missing=urls[5:])
    src = pixmo.pixmo_cap(path, tmp_path, mode="transcript_and_caption", n_val=None)
    assert len(src) == 5  # the failed download is dropped
    ex = src.get(0, _rng())
    assert ex["image"] == _png() and ex["metadata"]["image_url"] == urls[0]
    assert [m["style"] for m in ex["message_list"]] == ["long_caption", "transcript"]
    assert ex["message_list"][1]["text"] in ("t0a", "t0b")
    assert [m["text"] for m in pixmo.pixmo_cap(path, tmp_path, mode="transcripts", n_val=None)
            .get(0, _rng())["message_list"]] == ["t0a", "t0b"]
    train = pixmo.pixmo_cap(path, tmp_path, "train", n_val=2)
    val = pixmo.pixmo_cap(path, tmp_path, "validation", n_val=2)
    names = lambda s: {s.get(i, _rng())["metadata"]["image_url"] for i in range(len(s))}  # noqa: E731
    assert len(val) <= 2 and not names(train) & names(val) and names(train) | names(val) == set(urls[:5])


def test_ask_model_anything_groups_per_image_and_prefixes_how_many(tmp_path):
    path = _write(str(tmp_path / "ama.parquet"), "pixmo-ask-model-anything",
                  dict(image_url=[B, A, B], image_sha256=[SHA] * 3,
                       question=["What is it?", "Why?", "How many cats are there?"], answer=["x", "y", "2"]),
                  tmp_path)
    src = pixmo.pixmo_ask_model_anything(path, tmp_path, n_val=None)
    assert len(src) == 2
    q = _user_turns(src.get(0, _rng()))  # "b" comes first, with both of its rows
    assert q[0] == "What is it?" and q[1] != "How many cats are there?"
    prefix, question = q[1][:-len("How many cats are there?")], q[1][-len("How many cats are there?"):]
    assert question == "How many cats are there?" and prefix in pixmo.NO_POINT_PREFIX
    plain = pixmo.pixmo_ask_model_anything(path, tmp_path, prefix_how_many=False, n_val=None)
    assert _user_turns(plain.get(0, _rng()))[1] == "How many cats are there?"


def test_cap_qa_prefix_fixed_and_official_bug(tmp_path):
    msgs = ["Describe the sky.", "Blue.", "How many birds?", "3"]
    path = _write(str(tmp_path / "capqa.parquet"), "pixmo-cap-qa",
                  dict(image_url=[A], question=["q"], answer=["a"], messages=[msgs]), tmp_path)
    fixed = pixmo.pixmo_cap_qa(path, tmp_path, n_val=None).get(0, _rng())["message_list"][0]
    assert fixed["style"] == "synthetic_qa" and fixed["messages"][0] == "Describe the sky."
    prefix = fixed["messages"][2][:-len("How many birds?")]
    assert prefix in pixmo.NO_POINT_PREFIX and fixed["messages"][2] == prefix + "How many birds?"
    buggy = pixmo.pixmo_cap_qa(path, tmp_path, official_prefix_bug=True, n_val=None).get(0, _rng())
    assert buggy["message_list"][0]["messages"][2] == prefix + "Describe the sky."


def _points_table(tmp_path):
    pts = [[{"x": 10.0, "y": 20.0}, {"x": 5.0, "y": 50.0}], [], [{"x": 50.0, "y": 50.0}]]
    return _write(str(tmp_path / "points" / "train-0.parquet"), "pixmo-points",
                  dict(image_url=[A, A, B], image_sha256=[SHA] * 3, points=pts, count=[2, 0, 1],
                       label=["Cat", "dog", "cup"], collection_method=["pointing", "pointing", "counting"]),
                  tmp_path)


def test_points_counting_flag_fixed_and_official(tmp_path):
    path = _points_table(tmp_path)
    basic = pixmo.pixmo_points(path, tmp_path, kind="basic", counting=False, n_val=None)
    assert len(basic) == 1
    ex = basic.get(0, _rng())
    assert [m["style"] for m in ex["message_list"]] == ["pointing", "pointing"]
    np.testing.assert_array_equal(ex["message_list"][0]["points"], [[10, 20], [5, 50]])
    answers = [STAGE2(m, True, False, _rng())[0][1] for m in ex["message_list"]]
    assert answers == [' <points x1="5.0" y1="50.0" x2="10.0" y2="20.0" alt="cat">cat</points>',
                       " There are none."]
    counting = pixmo.pixmo_points(path, tmp_path, kind="basic", counting=True, n_val=None).get(0, _rng())
    assert counting["message_list"][0]["style"] == "point_count"
    official = pixmo.pixmo_points(path, tmp_path, counting=True, official_counting_flag=True, n_val=None)
    assert official.get(0, _rng())["message_list"][0]["style"] == "pointing"
    official = pixmo.pixmo_points(path, tmp_path, counting=False, official_counting_flag=True, n_val=None)
    assert official.get(0, _rng())["message_list"][0]["style"] == "point_count"
    both = pixmo.pixmo_points(path, tmp_path, kind="both", n_val=None)
    assert [both.get(i, _rng())["metadata"]["image_url"] for i in range(2)] == [B, A]  # counting first
    held_out = pixmo.pixmo_points(path, tmp_path, kind="both", exclude_urls=[A], n_val=None)
    assert len(held_out) == 1


def test_point_explanations_split_groups_and_inline_points(tmp_path):
    n = 3
    path = _write(str(tmp_path / "pe.parquet"), "pixmo-point-explanations", dict(
        image_url=[A] * n + [B], image_sha256=[SHA] * (n + 1), question=[f"q{i}" for i in range(n + 1)],
        response=["r"] * (n + 1), parsed_response=["See <|POINT|>."] * n + [None],
        alt_text=[["a cat"]] * (n + 1), inline_text=[["cat"]] * (n + 1),
        points=[[[[10.0, 20.0]]]] * (n + 1)), tmp_path)
    split = pixmo.pixmo_point_explanations(path, tmp_path, n_val=None)
    assert [_user_turns(split.get(i, _rng())) for i in range(len(split))] == [["q0", "q1"], ["q2"]]  # b dropped
    whole = pixmo.pixmo_point_explanations(path, tmp_path, split_groups=False, n_val=None)
    ex = whole.get(0, _rng())
    assert len(whole) == 1 and len(ex["message_list"]) == 3
    assert STAGE2(ex["message_list"][0], True, False, _rng())[0][1] == \
        ' See <point x="10.0" y="20.0" alt="a cat">cat</point>.'


def test_docs_clocks_count(tmp_path):
    docs = _write(str(tmp_path / "docs.parquet"), "pixmo-docs", dict(
        image=[{"bytes": _png(), "path": None}], image_id=["d0"],
        questions=[{"question": ["q1", "q2"], "answer": ["a1", "a2"]}]))
    ex = pixmo.pixmo_docs(docs, "tables").get(0, _rng())
    assert isinstance(ex["image"], bytes) and ex["metadata"]["image_id"] == "d0"
    assert [(m["question"], m["answer"], m["style"]) for m in ex["message_list"]] == \
        [("q1", "a1", "pixmo_docs_tables"), ("q2", "a2", "pixmo_docs_tables")]

    clocks = _write(str(tmp_path / "clocks.parquet"), "pixmo-clocks", dict(
        example_id=["c0", "c1"], watchface_id=["w"] * 2, watchface_name=["n"] * 2, watch_time=["03:25:00"] * 2,
        time_format=["12"] * 2, shows_seconds=[False] * 2, hour_visible=[1] * 2, minute_visible=[1] * 2,
        second_visible=[0] * 2, text=["3:25", "3:25"]))
    Image.new("RGB", (8, 8)).save(tmp_path / "c1.png")
    src = pixmo.pixmo_clocks(clocks, tmp_path)
    assert len(src) == 1 and src.get(0, _rng())["image"] == (tmp_path / "c1.png").read_bytes()
    assert src.get(0, _rng())["metadata"] == dict(example_id="c1", watch_time="03:25:00", hour=3, minute=25,
                                                  second=-1)  # seconds not visible
    assert STAGE2(src.get(0, _rng()), True, False, _rng())[0] == \
        [" User: clocks: What time is being shown? Assistant:", " 3:25"]

    count = _write(str(tmp_path / "count.parquet"), "pixmo-count", dict(
        image_url=[A], image_sha256=[SHA], count=[2], points=[{"x": [4.0, 20.0], "y": [10.0, 5.0]}],
        label=["cats"]), tmp_path)
    ex = pixmo.pixmo_count(count, tmp_path, counting=True).get(0, _rng())
    ex["image"] = np.zeros((20, 40, 3), np.uint8)  # the formatter scales pixel points by the image size
    assert STAGE2(ex, True, False, _rng())[0][1] == \
        ' Counting the <points x1="10.0" y1="50.0" x2="50.0" y2="25.0" alt="cats">cats</points> shows a total of 2.'
    assert "points" not in pixmo.pixmo_count(count, tmp_path, with_points=False).get(0, _rng())


def test_load_by_official_name_from_hub_layout(tmp_path):
    data, images = tmp_path / "hub", tmp_path / "images"
    images.mkdir()
    os.makedirs(data / "pixmo-points" / "data")
    _write(str(data / "pixmo-points" / "data" / "train-00000-of-00001.parquet"), "pixmo-points", dict(
        image_url=[A, B], image_sha256=[SHA] * 2, points=[[], []], count=[0, 0], label=["x", "y"],
        collection_method=["pointing", "counting"]), images)
    _write(str(data / "pixmo-points-eval" / "data" / "test-00000-of-00001.parquet"), "pixmo-points-eval", dict(
        image_url=[B], image_sha256=[SHA], label=["y"], points=[[]], masks=[[]]), images)
    # the official n_val=2048 is capped: one image stays in train, none is carved into validation
    assert len(pixmo.load("pixmo_points", data, images)) == 1
    assert len(pixmo.load("pixmo_points", data, images, split="validation")) == 0
    assert len(pixmo.load("pixmo_points_high_freq", data, images)) == 0  # B held out
    with pytest.raises(KeyError, match="unknown PixMo dataset"):
        pixmo.load("pixmo_nope", data, images)
