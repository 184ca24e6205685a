"""Tiny copies of the evaluation sets in their public layouts (data_pipelines/eval_sets.py), for tests.

`write_all(data_dir)` writes every set the eval tasks read: the academic sets through the writers of
test_data_academic (raw files in <data_dir>/<builder>) and the eval-only hub sets and PixMo eval sets here.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_pipelines import eval_sets, pixmo
from data_pipelines.download import image_file
from test_data_academic import WRITERS

SIZE = (24, 16)  # (width, height) of every image written


def png(size=SIZE, mode="RGB", color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 128).save(out, format="PNG")
    return out.getvalue()


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
    image_dir.mkdir(parents=True, exist_ok=True)
    Path(image_file(image_dir, url)).write_bytes(png(size))


def write_pixmo_count(d: Path):
    for split in ("validation", "test"):
        rows = [dict(image_url=f"http://c/{split}{k}.jpg", image_sha256="0" * 64, count=k + 2, points=None,
                     label=label) for k, label in enumerate(("boats", "birds"))]
        hub(d / "pixmo-count" / "data" / f"{split}-00000-of-00001.parquet", rows, pixmo.SCHEMAS["pixmo-count"])
        for r in rows:
            _cache(d / "images", r["image_url"])


def write_pixmo_points_eval(d: Path):
    w, h = SIZE
    masks = np.zeros((2, h, w), bool)
    masks[0, 2:6, 2:8] = True
    masks[1, 8:14, 14:22] = True
    rows = [dict(image_url="http://p/0.jpg", image_sha256="0" * 64, label="red square",
                 points=[dict(x=100 * 5 / w, y=100 * 4 / h), dict(x=100 * 18 / w, y=100 * 11 / h)],
                 masks=masks.tolist())]
    hub(d / "pixmo-points-eval" / "data" / "test-00000-of-00001.parquet", rows, pixmo.SCHEMAS["pixmo-points-eval"])
    _cache(d / "images", "http://p/0.jpg")


EVAL_ONLY = (write_real_world_qa, write_mmmu, write_math_vista, write_countbench, write_pixmo_count,
             write_pixmo_points_eval)


def write_all(d: Path):
    for builder, write in WRITERS.items():
        write(d / builder)
    for write in EVAL_ONLY:
        write(d)
