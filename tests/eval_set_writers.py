"""Tiny copies of the evaluation sets in their public layouts (data_pipelines/eval_sets.py), for tests.

`write_all(data_dir)` writes every set the eval tasks read: the academic sets through the writers of
test_data_academic (raw files in <data_dir>/<builder>) and the eval-only hub sets and PixMo eval sets here.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_pipelines import android_control, eval_sets, pixmo
from data_pipelines.download import image_file
from test_data_academic import WRITERS

SIZE = (24, 16)  # (width, height) of every image written


def png(size=SIZE, mode="RGB", color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(out, format="PNG")
    return out.getvalue()


PNG_SHA256 = hashlib.sha256(png()).hexdigest()  # the rows' image_sha256 of the cached png()


def hub(path: Path, rows: list[dict], schema: pa.Schema | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


def cell(data: bytes | None) -> dict | None:
    return None if data is None else {"bytes": data, "path": None}


RWQA_ROWS = [
    dict(question=f"How many cars are there?\n{eval_sets.RWQA_SHORT}", answer="3"),
    dict(question=f"Which way is the arrow pointing?\nA. left\nB. right\n{eval_sets.RWQA_MC}", answer="B"),
]


def write_real_world_qa(d: Path):
    hub(d / "RealWorldQA" / "data" / "test-00000-of-00002.parquet", [dict(image=cell(png()), **r) for r in RWQA_ROWS])


def write_mmmu(d: Path):
    for k, subject in enumerate(eval_sets.MMMU_SUBJECTS):
        row = (dict(question="Which value is largest? <image 1>", options=str(["12", "15", "9"]), answer="B",
                    question_type="multiple-choice") if k % 2 == 0 else
               dict(question="What is the total in dollars? <image 1>", options="[]", answer="42",
                    question_type="open"))
        hub(d / "MMMU" / subject / "validation-00000-of-00001.parquet",
            [dict(id=f"validation_{subject}_1", image_1=cell(png()), **row)])


def write_math_vista(d: Path):
    rows = [dict(pid="1", question="Hint: Please answer the question and provide the correct option letter.\n"
                                   "Question: Which shape is red?", decoded_image=cell(png()),
                 choices=["square", "circle"], answer="square", precision=None, question_type="multi_choice",
                 answer_type="text"),
            dict(pid="2", question="How many bars are there?", decoded_image=cell(png()), choices=None, answer="4",
                 precision=None, question_type="free_form", answer_type="integer")]
    hub(d / "MathVista" / "data" / "testmini-00000-of-00001.parquet", rows)


def write_countbench(d: Path):
    rows = [dict(image_url="http://a/1.jpg", text="three dogs", number=3, image=cell(png())),
            dict(image_url="http://a/2.jpg", text="two cats", number=2, image=None),
            dict(image_url="http://a/3.jpg", text="five pens", number=5, image=cell(png(mode="L"))),
            dict(image_url="http://a/4.jpg", text="seven cups", number=7, image=cell(png()))]
    hub(d / "countbench" / "data" / "train-00000-of-00001-cf54c241ba947306.parquet", rows)
    questions = [dict(question=f"How many {w} are there?") for w in ("dogs", "cats", "pens", "cups")]
    (d / "countbench" / "countbench_paired_questions.json").write_text(json.dumps(questions))


def _cache(image_dir: Path, url: str, size=SIZE):
    """Writes png(size) as the downloader's cache file of `url` (rows name it with PNG_SHA256)."""
    image_dir.mkdir(parents=True, exist_ok=True)
    Path(image_file(image_dir, url)).write_bytes(png(size))


def write_pixmo_count(d: Path):
    for split in ("validation", "test"):
        rows = [dict(image_url=f"http://c/{split}{k}.jpg", image_sha256=PNG_SHA256, count=k + 2, points=None,
                     label=label) for k, label in enumerate(("boats", "birds"))]
        hub(d / "pixmo-count" / "data" / f"{split}-00000-of-00001.parquet", rows, pixmo.SCHEMAS["pixmo-count"])
        for r in rows:
            _cache(d / "images", r["image_url"])


def write_pixmo_points_eval(d: Path):
    w, h = SIZE
    masks = np.zeros((2, h, w), bool)
    masks[0, 2:6, 2:8] = True
    masks[1, 8:14, 14:22] = True
    rows = [dict(image_url="http://p/0.jpg", image_sha256=PNG_SHA256, label="red square",
                 points=[dict(x=100 * 5 / w, y=100 * 4 / h), dict(x=100 * 18 / w, y=100 * 11 / h)],
                 masks=masks.tolist())]
    hub(d / "pixmo-points-eval" / "data" / "test-00000-of-00001.parquet", rows, pixmo.SCHEMAS["pixmo-points-eval"])
    _cache(d / "images", "http://p/0.jpg")


def _example(**features) -> bytes:
    """A tf.train.Example of int lists and byte-string lists."""
    m = android_control.MESSAGES
    example = m["tensorflow.Example"]()
    for key, values in features.items():
        entry = example.features.feature.add(key=key)
        if isinstance(values[0], int):
            entry.value.int64_list.value.extend(values)
        else:
            entry.value.bytes_list.value.extend(v if isinstance(v, bytes) else v.encode() for v in values)
    return example.SerializeToString()


def _forest(nodes: list[dict]) -> bytes:
    m = android_control.MESSAGES
    forest = m["android_env.AndroidAccessibilityForest"]()
    tree = forest.windows.add().tree
    for n in nodes:
        node = tree.nodes.add(**{k: v for k, v in n.items() if k != "box"})
        node.bounds_in_screen.CopyFrom(m["android_env.ProtoRect"](**dict(zip(("left", "top", "right", "bottom"),
                                                                              n["box"]))))
    return forest.SerializeToString()


ANDROID_SCREEN = (200, 100)
ANDROID_STEPS = [  # (action, step instruction, screen nodes)
    (dict(action_type="click", x=50, y=50), "Tap the search bar",
     [dict(box=(0, 0, 200, 100), is_visible_to_user=True), dict(box=(40, 40, 60, 60), is_visible_to_user=True,
                                                               text="Search"),
      dict(box=(45, 45, 55, 55), is_visible_to_user=False)]),
    (dict(action_type="open_app", app_name="gmail"), "Open gmail",
     [dict(box=(100, 20, 140, 60), is_visible_to_user=True, text="Gmail inbox", package_name="launcher")]),
    (dict(action_type="wait"), "Wait", []),
]


def write_android_control(d: Path):
    """Shard 0: episode 7 (validation: 2 steps; its last screenshot has no step) and 8 (train); 19 empty shards."""
    home = d / "android_control"
    home.mkdir(parents=True, exist_ok=True)
    episodes = [_example(episode_id=[e], goal=["Find my mail"], screenshots=[png(ANDROID_SCREEN)] * 3,
                         actions=[json.dumps(a) for a, _, _ in ANDROID_STEPS],
                         step_instructions=[i for _, i, _ in ANDROID_STEPS],
                         accessibility_trees=[_forest(n) for _, _, n in ANDROID_STEPS]) for e in (7, 8)]
    for k, shard in enumerate(android_control.SHARDS):
        with gzip.open(home / shard, "wb") as f:
            for record in episodes if k == 0 else ():
                f.write(struct.pack("<Q", len(record)) + b"\0" * 4 + record + b"\0" * 4)
    (home / "splits.json").write_text(json.dumps(dict(train=[8], validation=[7], test=[])))
    (home / "test_subsplits.json").write_text(json.dumps(dict(IDD=[])))


EVAL_ONLY = (write_android_control, write_real_world_qa, write_mmmu, write_math_vista, write_countbench, write_pixmo_count,
             write_pixmo_points_eval)


def write_all(d: Path):
    for builder, write in WRITERS.items():
        write(d / builder)
    for write in EVAL_ONLY:
        write(d)


def write_and_build(root: Path) -> Path:
    """Every eval set's tiny copy under `root`, the academic ones built as tfds ArrayRecord in root/tfds
    (1 AI2D / ST-VQA validation item carved: the copies are too small for the official carve-outs)."""
    import pytest
    from data_pipelines import academic

    write_all(root)
    academic.tfds.disable_progress_bar()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(academic, "AI2D_VAL_IMAGES", 1)
        patch.setattr(academic, "ST_QA_VAL_QUESTIONS", 1)
        for builder in academic.SPECS:
            academic.build(builder, root / "tfds", root / builder)
    return root
