"""Readers of the evaluation sets, by the official task's dataset name -> `pixmo.Source`.

Each reads the files a user downloads, in their public layout under one data directory `data_dir`:

  academic sets     the raw files of `academic.SPECS[builder]` in `<data_dir>/<builder>` (built once into
                    the tfds ArrayRecord data dir `<data_dir>/tfds`), e.g. <data_dir>/chart_qa/data/test-*.parquet
  real_world_qa     <data_dir>/RealWorldQA/data/test-*.parquet                  (hub xai-org/RealworldQA)
  mmmu              <data_dir>/MMMU/<Subject>/<split>-*.parquet, all 30 subjects  (hub MMMU/MMMU)
  math_vista        <data_dir>/MathVista/data/<split>-*.parquet                 (hub AI4Math/MathVista)
  countbench_qa     <data_dir>/countbench/data/train-*.parquet                  (hub nielsr/countbench) and
                    <data_dir>/countbench/countbench_paired_questions.json      (big_vision countbenchqa)
  pixmo_count_counting  <data_dir>/pixmo-count/data/<split>-*.parquet, images in <image_dir>
  pixmo_points_eval     <data_dir>/pixmo-points-eval/data/test-*.parquet, images in <image_dir>
                    (`image_dir`: the PixMo downloader's cache, default <data_dir>/images)
  android_control_<ll|hl|hl_ll>  <data_dir>/android_control/: the TFRecord shards and split files
                    (`data_pipelines.android_control`)

Examples are built as the official dataset classes build them (`olmo/data/academic_datasets.py`:
`RealWorldQa(mode="no_instruction")`, `MMMU`, `MathVista`, `CountBenchQa`; `pixmo_datasets.py:
PixMoPointsEval`), with the scorer's fields in `metadata`. Academic examples also carry the question's
id and dataset fields (`question_id`, AI2D `abc_label` / `has_transparent_box`, ...) in the metadata of
each conversation, for scoring and test-server files. A missing file raises `MissingDataError`: one line
naming the dataset, the path tried and where to get it.
"""
from __future__ import annotations

import ast
import dataclasses
import glob
import io
import json
import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from data_pipelines import android_control, pixmo
from data_pipelines.pixmo import Example, Rows

if TYPE_CHECKING:
    from data_pipelines import academic

MMMU_SUBJECTS = (
    "Accounting", "Agriculture", "Architecture_and_Engineering", "Art", "Art_Theory", "Basic_Medical_Science",
    "Biology", "Chemistry", "Clinical_Medicine", "Computer_Science", "Design",
    "Diagnostics_and_Laboratory_Medicine", "Economics", "Electronics", "Energy_and_Power", "Finance",
    "Geography", "History", "Literature", "Manage", "Marketing", "Materials", "Math", "Mechanical_Engineering",
    "Music", "Pharmacy", "Physics", "Psychology", "Public_Health", "Sociology")
RWQA_SHORT = "Please answer directly with a single word or number."
RWQA_MC = "Please answer directly with only the letter of the correct option and nothing else."
QUESTION_FIELDS = ("question_id", "abc_label", "has_transparent_box", "human")  # academic fields kept as metadata


class MissingDataError(FileNotFoundError):
    """An evaluation set's file is not where its reader looks."""


def _hub_get(repo: str) -> str:
    return f"huggingface-cli download {repo} --repo-type dataset --local-dir <data_dir>/{repo.split('/')[1]}"


def _files(dataset: str, pattern: str, how: str) -> list[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise MissingDataError(f"{dataset}: no file matches {pattern}; get it with: {how}")
    return files


def _read(dataset: str, files: Sequence[str], columns: Sequence[str]) -> pa.Table:
    tables = []
    for path in files:
        missing = [c for c in columns if c not in pq.read_schema(path).names]
        if missing:
            raise ValueError(f"{dataset}: {path} lacks the column(s) {missing}")
        tables.append(pq.read_table(path, columns=list(columns)))
    return pa.concat_tables(tables, promote_options="permissive")


def _cell_image(column: str) -> Callable[[Rows], bytes]:
    """rows -> the encoded bytes of a `datasets.Image` cell ({"bytes", "path"})."""
    return lambda rows: rows[column][0]["bytes"]


def _table_source(table: pa.Table, convert, image, keep: Sequence[int] | None = None) -> pixmo.TableSource:
    rows = range(len(table)) if keep is None else keep
    return pixmo.TableSource(table, [np.array([i]) for i in rows], convert, image)


# ------------------------------------------------------------------------------------------------
# Eval-only hub sets


def real_world_qa_example(rows: Rows, rng=None) -> Example:
    """`RealWorldQa(mode="no_instruction")`: the short-answer instruction line is cut, the multiple-choice
    question (options and instruction included) is kept whole."""
    prompt = rows["question"][0]
    question_type = "short_answer" if RWQA_SHORT in prompt else "multiple_choice"
    if question_type == "multiple_choice" and RWQA_MC not in prompt:
        raise ValueError(f"real_world_qa: question without either official instruction: {prompt!r}")
    return dict(question=prompt.split("\n")[0] if question_type == "short_answer" else prompt,
                style="eval_short_answer" if question_type == "short_answer" else "eval_multiple_choice",
                metadata=dict(answer=rows["answer"][0], prompt=prompt, question_type=question_type))


def real_world_qa(data_dir, split: str = "test") -> pixmo.TableSource:
    files = _files("real_world_qa", os.path.join(data_dir, "RealWorldQA", "data", f"{split}-*.parquet"),
                   _hub_get("xai-org/RealworldQA"))
    return _table_source(_read("real_world_qa", files, ("image", "question", "answer")), real_world_qa_example,
                         _cell_image("image"))


def mmmu_example(rows: Rows, rng=None) -> Example:
    """`MMMU`: multiple choice (style a_okvqa_mc) or open (vqa2); the image is `image_1`, left out when
    several options are images (`<img='...'>`), as the official reader (after LLaVA) does."""
    multiple_choice = rows["question_type"][0] == "multiple-choice"
    out = dict(question=rows["question"][0], style="a_okvqa_mc" if multiple_choice else "vqa2",
               metadata=dict(answer=rows["answer"][0], example_id=rows["id"][0],
                             question_type=rows["question_type"][0]))
    if multiple_choice:
        out["options"] = ast.literal_eval(rows["options"][0])
        out["metadata"]["options"] = out["options"]
    return out


def _mmmu_image(rows: Rows) -> bytes | None:
    options = ast.literal_eval(rows["options"][0]) if rows["question_type"][0] == "multiple-choice" else []
    if sum(str(o).startswith("<img='") for o in options) > 1:
        return None
    return rows["image_1"][0]["bytes"]


def mmmu(data_dir, split: str = "validation") -> pixmo.TableSource:
    """All 30 subjects in the official order (`MMMU.NAMES`)."""
    missing = [s for s in MMMU_SUBJECTS if not glob.glob(os.path.join(data_dir, "MMMU", s, f"{split}-*.parquet"))]
    if missing:
        raise MissingDataError(f"mmmu: no {split} parquet for subject(s) {missing} under "
                               f"{os.path.join(data_dir, 'MMMU')}/<Subject>/{split}-*.parquet; get them with: "
                               f"{_hub_get('MMMU/MMMU')}")
    files = [f for s in MMMU_SUBJECTS for f in sorted(glob.glob(os.path.join(data_dir, "MMMU", s, f"{split}-*.parquet")))]
    table = _read("mmmu", files, ("id", "question", "options", "answer", "image_1", "question_type"))
    return _table_source(table, mmmu_example, _mmmu_image)


def math_vista_example(rows: Rows, rng=None) -> Example:
    """`MathVista(simplify_question=True)`: the bare question (hint and choices are not in the prompt);
    multiple choice lists the choices as lettered options."""
    query = rows["question"][0]
    question = query.split("Question:")[-1].split("Hint:")[0].strip()
    choices = rows["choices"][0]
    out = dict(question=question, metadata=dict(
        example_id=rows["pid"][0], answer=rows["answer"][0], precision=rows["precision"][0], query=query,
        choices=choices, question_type=rows["question_type"][0], answer_type=rows["answer_type"][0]))
    if rows["question_type"][0] == "multi_choice":
        out.update(options=list(choices), style="eval_multiple_choice")
    else:
        out["style"] = "eval_short_answer"
    return out


def math_vista(data_dir, split: str = "testmini") -> pixmo.TableSource:
    files = _files("math_vista", os.path.join(data_dir, "MathVista", "data", f"{split}-*.parquet"),
                   _hub_get("AI4Math/MathVista"))
    columns = ("pid", "question", "decoded_image", "choices", "answer", "precision", "question_type", "answer_type")
    return _table_source(_read("math_vista", files, columns), math_vista_example, _cell_image("decoded_image"))


def countbench_example(rows: Rows, rng=None) -> Example:
    """`CountBenchQa`: style point_count, the count in the metadata."""
    return dict(question=rows["question"][0], style="point_count",
                metadata=dict(count=int(rows["number"][0]), image_url=rows["image_url"][0]))


def _rgb(image: Mapping[str, Any] | None) -> bool:
    if image is None:
        return False
    with Image.open(io.BytesIO(image["bytes"])) as im:
        return len(np.asarray(im).shape) == 3


def countbench_qa(data_dir, split: str = "test") -> pixmo.TableSource:
    """The CountBench rows joined in order with the PaliGemma questions; rows without an image or with a
    one-channel image are dropped (counted in the log), as the official builder drops them."""
    home = os.path.join(data_dir, "countbench")
    files = _files("countbench_qa", os.path.join(home, "data", "train-*.parquet"), _hub_get("nielsr/countbench"))
    questions_file = os.path.join(home, "countbench_paired_questions.json")
    if not os.path.exists(questions_file):
        raise MissingDataError(
            f"countbench_qa: {questions_file} not found; get it from github google-research/big_vision "
            "big_vision/datasets/countbenchqa/data/countbench_paired_questions.json")
    with open(questions_file) as f:
        questions = [q["question"] for q in json.load(f)]
    table = _read("countbench_qa", files, ("image_url", "number", "image"))
    if len(questions) != len(table):
        raise ValueError(f"countbench_qa: {len(questions)} questions in {questions_file} for {len(table)} rows")
    table = table.append_column("question", pa.array(questions))
    keep = [i for i, image in enumerate(table.column("image").to_pylist()) if _rgb(image)]
    if len(keep) < len(table):
        logging.warning("countbench_qa: dropped %d of %d rows (no image or not RGB)", len(table) - len(keep),
                        len(table))
    return _table_source(table, countbench_example, _cell_image("image"), keep)


def _with_images(name: str, source: pixmo.TableSource, rows: int, image_dir: str) -> pixmo.TableSource:
    """`source` (whose examples without a cached image are already dropped), refused when none is left,
    the dropped ones counted in the log."""
    if rows and not len(source):
        raise MissingDataError(f"{name}: none of the {rows} images is in {image_dir}; download them with "
                               "data_pipelines.download (the PixMo downloader's cache)")
    if len(source) < rows:
        logging.warning("%s: %d of %d examples dropped: image not in %s", name, rows - len(source), rows, image_dir)
    return source


def points_eval_example(rows: Rows, rng=None) -> Example:
    """`PixMoPointsEval`: point to `label` (style pointing), percent points, the released object masks."""
    points = pixmo.xy_array(rows["points"][0])
    return dict(label=rows["label"][0], points=points, point_scale=100, style="pointing",
                masks=np.array(rows["masks"][0], dtype=bool), metadata=dict(image_url=rows["image_url"][0]))


def pixmo_points_eval(data_dir, image_dir, split: str = "test") -> pixmo.TableSource:
    files = _files("pixmo_points_eval", pixmo.hub_files(data_dir, "pixmo-points-eval", split),
                   _hub_get("allenai/pixmo-points-eval") + " and download its images (data_pipelines.download)")
    table = pixmo.read_table(files, "pixmo-points-eval")
    source = pixmo.url_source(table, pixmo.single_rows(len(table)), points_eval_example, image_dir,
                              pixmo.ReadStats(rows=len(table)))
    return _with_images("pixmo_points_eval", source, len(table), image_dir)


# ------------------------------------------------------------------------------------------------
# Academic sets (their validation / test splits)


@dataclasses.dataclass
class AcademicEvalSource:
    """An `academic.AcademicSource` whose conversations carry their question's `QUESTION_FIELDS` in their
    metadata (packed examples: each `message_list` entry its own)."""
    source: academic.AcademicSource

    def __len__(self) -> int:
        return len(self.source)

    def get(self, index: int, rng=None) -> Example:
        from data_pipelines import academic
        example = self.source.get(index, rng)
        questions = academic.decode_record(self.source.records[int(self.source.rows[index])])["messages"]
        fields = [{k: q[k] for k in QUESTION_FIELDS if k in q} for q in questions]
        if "message_list" in example:
            for message, extra in zip(example["message_list"], fields):
                message["metadata"] = extra
        else:
            example["metadata"].update(fields[0])
        return example


def academic_set(name: str, data_dir, split: str) -> AcademicEvalSource:
    """An academic set's `split`, built from its raw files on first use (needs tensorflow-datasets, the
    `data` extra)."""
    from data_pipelines import academic
    builder = academic.LOADERS[name].builder
    manual = os.path.join(data_dir, builder)
    if not os.path.isdir(manual) and not os.path.isdir(os.path.join(data_dir, "tfds", builder)):
        raise MissingDataError(f"{name}: {manual} not found; {academic.SPECS[builder].instructions}")
    return AcademicEvalSource(academic.load(name, os.path.join(data_dir, "tfds"), manual, split))


# ------------------------------------------------------------------------------------------------


HUB_READERS = {"real_world_qa": real_world_qa, "mmmu": mmmu, "math_vista": math_vista,
               "countbench_qa": countbench_qa}


def load(name: str, data_dir, split: str, image_dir=None) -> pixmo.Source:
    """The evaluation set `name` (an official dataset name, see the module docstring) from `data_dir`."""
    data_dir = os.fspath(data_dir)
    image_dir = os.fspath(image_dir) if image_dir else os.path.join(data_dir, "images")
    if name in HUB_READERS:
        return HUB_READERS[name](data_dir, split)
    if name == "pixmo_points_eval":
        return pixmo_points_eval(data_dir, image_dir, split)
    if name == "pixmo_count_counting":
        files = _files(name, pixmo.hub_files(data_dir, "pixmo-count", split), _hub_get("allenai/pixmo-count") +
                       " and download its images (data_pipelines.download)")
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        return _with_images(name, pixmo.load(name, data_dir, image_dir, split), rows, image_dir)
    if name.startswith("android_control_") and name[len("android_control_"):] in android_control.MODES:
        return android_control.load(data_dir, split, name[len("android_control_"):])
    from data_pipelines import academic
    if name in academic.LOADERS:
        return academic_set(name, data_dir, split)
    raise KeyError(f"no evaluation reader for {name!r}; known: "
                   f"{sorted([*HUB_READERS, 'pixmo_points_eval', 'pixmo_count_counting', *academic.LOADERS])}")
