"""The academic datasets of the stage-2 mixture as tensorflow-datasets builders (ArrayRecord, no TensorFlow).

Each dataset is read from a manual directory holding the files the official reader reads
(`olmo/data/academic_datasets.py`, `olmo/hf_datasets/*.py`), in the layout it expects: the original
release json / zips (extracted), or a local copy of the Hugging Face hub parquet files for the sets the
official code loads with `datasets` (`huggingface-cli download <repo> --repo-type dataset --local-dir
<manual_dir>`). One builder class per dataset, made by `builder_class` from a `Spec` (name, source, parse
function); every builder has the same features:

  image     tfds Image: the encoded bytes as the source ships them (JPEG / PNG), never re-encoded, except
            the AI2D images the official builder draws letter boxes on (PNG)
  image_id  text
  messages  text: a JSON list of the question dicts of this image, each with question, question_id and
            some of answers (list of str), options (list of str), answer_idx (int), plus dataset fields
            (ChartQA human, A-OKVQA difficult_direct_answer, AI2D abc_label / option_is_abc /
            has_transparent_box, ScienceQA hint). JSON because tfds serialises nested lists (a list of
            answers per question) only through TensorFlow.

Sets whose official reader packs all questions of an image into one example (VQA v2 multi, TallyQA, DVQA,
FigureQA, PlotQA) are built one record per image; the others one record per question.

    build("text_vqa", data_dir, manual_dir)          # tfds download_and_prepare(file_format="array_record")
    src = load("text_vqa", data_dir, manual_dir)     # an `AcademicSource` (a `pixmo.Source`) by official name
    src.get(0, rng)                                  # {"image": b"...", "question", "answers", "style", ...}

Official bugs fixed here, each with a named option restoring the official behaviour:
  * ChartQA weighting: the official `is_human` is the hub's `human_or_machine` (0 human, 1 machine), so the
    larger weight 2*20901/28299 goes to the augmented questions; here it goes to the human ones, which
    balances the two parts as the official `ChartQa(weighted=True)` documents (olmo/data/academic_datasets.py)
    (`chart_qa_weight(official_weights=True)`).
  * ScienceQA: the official prompt is `hint + "\\n" + hint`; here `hint + "\\n" + question`
    (`science_qa_message(official_hint_bug=True)`).
  * ST-VQA validation: the official reader opens `validation_task_3.json` (there is none); here the
    validation split is carved from the train file as the official code intends.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import logging
import os
from collections import defaultdict
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow.parquet as pq
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from data_pipelines.pixmo import Example
from molmo_jax import paths

Record = dict[str, Any]  # {"image": encoded bytes, "image_id": str, "messages": [question dicts]}
Parse = Callable[[epath.Path, str], Iterator[tuple[str, Record]]]  # (manual dir, source split) -> (key, record)

CHART_QA_HUMAN, CHART_QA_AUGMENTED = 7398, 20901  # train questions of the two ChartQA parts
AI2D_VAL_IMAGES, AI2D_VAL_SEED = 384, 5961
ST_QA_VAL_QUESTIONS, ST_QA_VAL_SEED = 1024, 63069


@dataclasses.dataclass(frozen=True)
class Spec:
    """One dataset: tfds `name`, where to get it, the manual-dir `layout`, tfds split -> source split, and
    `parse` (manual dir, source split) -> (key, record) pairs."""
    name: str
    source: str
    layout: str
    splits: Mapping[str, str]
    parse: Parse

    @property
    def instructions(self) -> str:
        return f"Download {self.source} and put into the manual directory: {self.layout}"


class MissingFileError(FileNotFoundError):
    """A file the dataset needs is not in the manual directory."""


def _require(spec_name: str, path: epath.Path) -> epath.Path:
    if not path.exists():
        spec = SPECS[spec_name]
        raise MissingFileError(f"{spec_name}: {path} not found. {spec.instructions}")
    return path


def _read_json(spec_name: str, path: epath.Path):
    return json.loads(_require(spec_name, path).read_text())


def _image(spec_name: str, path: epath.Path) -> bytes:
    return _require(spec_name, path).read_bytes()


def _question(question: str, question_id, answers=None, options=None, answer_idx=None, **extra) -> dict:
    """A question dict of the `messages` feature (None fields left out)."""
    fields = dict(answers=answers, options=options, answer_idx=answer_idx)
    return dict(question=question, question_id=str(question_id), **{k: v for k, v in fields.items() if v is not None},
                **extra)


def _grouped(items: Sequence[dict], key: str) -> dict[Any, list[dict]]:
    """Items grouped by `item[key]`, groups in order of first occurrence."""
    groups = defaultdict(list)
    for item in items:
        groups[item[key]].append(item)
    return groups


# ------------------------------------------------------------------------------------------------
# Hub parquet snapshots (datasets the official code loads with `datasets.load_dataset`)

HUB_PATTERNS = ("data/{split}-*.parquet", "*/{split}/*.parquet")  # hub data files, or refs/convert/parquet


def hub_rows(spec_name: str, manual: epath.Path, split: str, columns: Sequence[str]) -> Iterator[dict]:
    """Rows (column -> value) of a hub split's parquet files, in file order."""
    files = sorted({os.fspath(f) for p in HUB_PATTERNS for f in manual.glob(p.format(split=split))})
    if not files:
        raise MissingFileError(f"{spec_name}: no parquet file of split {split!r} under {manual} "
                               f"(looked for {[p.format(split=split) for p in HUB_PATTERNS]}). "
                               f"{SPECS[spec_name].instructions}")
    for path in files:
        with epath.Path(path).open("rb") as f:
            parquet = pq.ParquetFile(f)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(f"{spec_name}: {path} lacks the column(s) {missing}")
            for batch in parquet.iter_batches(batch_size=64, columns=list(columns)):
                yield from batch.to_pylist()


def _hub_image(value: Mapping[str, Any] | None) -> bytes | None:
    """Bytes of a `datasets.Image` cell ({"bytes", "path"}), None for a missing image."""
    return None if value is None else value["bytes"]


def hub_vqa(name: str, image_id: str, question_id: str) -> Parse:
    """The parse function of a hub VQA set with columns image, question, answers and the given id columns."""
    def parse(manual: epath.Path, split: str):
        for i, r in enumerate(hub_rows(name, manual, split, ("image", image_id, question_id, "question", "answers"))):
            yield str(i), dict(image=_hub_image(r["image"]), image_id=str(r[image_id]),
                               messages=[_question(r["question"], r[question_id], answers=r["answers"] or [])])
    return parse


def parse_ok_vqa(manual: epath.Path, split: str):
    for i, r in enumerate(hub_rows("ok_vqa", manual, split, ("image", "image_id", "question_id", "question",
                                                              "answers"))):
        answers = [a["raw_answer"] for a in r["answers"]]
        yield str(i), dict(image=_hub_image(r["image"]), image_id=str(r["image_id"]),
                           messages=[_question(r["question"], r["question_id"], answers=answers)])


def parse_chart_qa(manual: epath.Path, split: str):
    for i, r in enumerate(hub_rows("chart_qa", manual, split, ("image", "query", "label", "human_or_machine"))):
        yield str(i), dict(image=_hub_image(r["image"]), image_id=str(i), messages=[
            _question(r["query"], i, answers=r["label"], human=r["human_or_machine"] == 0)])


def parse_science_qa(manual: epath.Path, split: str):
    """Questions with an image only (official `ScienceQAImageOnly`)."""
    for i, r in enumerate(hub_rows("science_qa", manual, split, ("image", "question", "choices", "answer",
                                                                  "hint"))):
        if r["image"] is not None:
            yield str(i), dict(image=_hub_image(r["image"]), image_id=str(i), messages=[
                _question(r["question"], i, options=r["choices"], answer_idx=r["answer"], hint=r["hint"] or "")])


# ------------------------------------------------------------------------------------------------
# Original releases


def parse_vqa_v2(manual: epath.Path, split: str):
    """All questions of an image in one record (`coco_2014_vqa_multi`); test has no annotations."""
    questions = _read_json("vqa_v2", manual / f"v2_OpenEnded_mscoco_{split}_questions.json")["questions"]
    answers = {}
    if not split.startswith("test"):
        annotations = _read_json("vqa_v2", manual / f"v2_mscoco_{split}_annotations.json")["annotations"]
        answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in annotations}
    for image_id, qs in _grouped(questions, "image_id").items():
        yield str(image_id), dict(
            image=_image("vqa_v2", manual / split / f"COCO_{split}_{image_id:012d}.jpg"), image_id=str(image_id),
            messages=[_question(q["question"], q["question_id"], answers=answers.get(q["question_id"], []))
                      for q in qs])


def parse_info_qa(manual: epath.Path, split: str):
    for q in _read_json("info_qa", manual / f"infographicsVQA_{split}.json")["data"]:
        yield str(q["questionId"]), dict(
            image=_image("info_qa", manual / "images" / q["image_local_name"]), image_id=q["image_local_name"],
            messages=[_question(q["question"], q["questionId"], answers=q.get("answers", []))])


def parse_a_okvqa(manual: epath.Path, split: str):
    """Questions of A-OKVQA v1.0 with their COCO 2017 image; test has no answers."""
    for q in _read_json("a_okvqa", manual / f"aokvqa_v1p0_{split}.json"):
        image = manual / f"{split}2017" / f"{q['image_id']:012d}.jpg"
        yield q["question_id"], dict(image=_image("a_okvqa", image), image_id=str(q["image_id"]), messages=[
            _question(q["question"], q["question_id"], answers=q.get("direct_answers") or [], options=q["choices"],
                     answer_idx=q.get("correct_choice_idx"), difficult_direct_answer=q["difficult_direct_answer"])])


def parse_tab_mwp(manual: epath.Path, split: str):
    home = manual / "data" / "tabmwp"
    for example_id, q in _read_json("tab_mwp", home / f"problems_{split}.json").items():
        yield example_id, dict(image=_image("tab_mwp", home / "tables" / f"{example_id}.png"), image_id=example_id,
                               messages=[_question(q["question"], example_id, answers=[str(q["answer"])],
                                                  options=q.get("choices") or [])])


def parse_st_qa(manual: epath.Path, split: str):
    """ST-VQA task 3; validation is 1024 questions of the train file (sorted by id, seeded shuffle)."""
    questions = _read_json("st_qa", manual / f"{'test' if split == 'test' else 'train'}_task_3.json")["data"]
    if split != "test":
        questions = sorted(questions, key=lambda q: q["question_id"])
        np.random.RandomState(ST_QA_VAL_SEED).shuffle(questions)
        questions = questions[:ST_QA_VAL_QUESTIONS] if split == "validation" else questions[ST_QA_VAL_QUESTIONS:]
    for q in questions:
        yield str(q["question_id"]), dict(
            image=_image("st_qa", manual / q["file_path"]), image_id=q["file_path"],
            messages=[_question(q["question"], q["question_id"], answers=q.get("answers", []))])


def parse_tally_qa(manual: epath.Path, split: str):
    """Questions grouped per image; images are `<manual>/<train2014|val2014|VG_100K|VG_100K_2>/<file>`."""
    for image, qs in _grouped(_read_json("tally_qa", manual / f"{split}.json"), "image").items():
        yield image, dict(image=_image("tally_qa", manual / image), image_id=str(qs[0]["image_id"]), messages=[
            _question(q["question"], q["question_id"], answers=[str(q["answer"])]) for q in qs])


def parse_dv_qa(manual: epath.Path, split: str):
    for image, qs in _grouped(_read_json("dv_qa", manual / f"{split}_qa.json"), "image").items():
        yield image, dict(image=_image("dv_qa", manual / "images" / image), image_id=image, messages=[
            _question(q["question"], f"{image}-{k}", answers=[q["answer"]]) for k, q in enumerate(qs)])


def _parse_figure_or_plot_qa(spec_name: str, folder: epath.Path, qa_file: str):
    """FigureQA / PlotQA: `<folder>/<qa_file>` {"qa_pairs": [...]} and `<folder>/png/<image_index>.png`."""
    pairs = _read_json(spec_name, folder / qa_file)["qa_pairs"]
    for index, qs in _grouped(pairs, "image_index").items():
        yield str(index), dict(image=_image(spec_name, folder / "png" / f"{index}.png"), image_id=str(index),
                               messages=[_question(q["question_string"], q["question_id"],
                                                  answers=[str(q["answer"])] if "answer" in q else [])
                                         for q in qs])


def parse_figure_qa(manual: epath.Path, split: str):
    return _parse_figure_or_plot_qa("figure_qa", manual / split, "qa_pairs.json")


def parse_plot_qa(manual: epath.Path, split: str):
    return _parse_figure_or_plot_qa("plot_qa", manual / split, "qa_pairs_V2.json")


# ------------------------------------------------------------------------------------------------
# AI2D: letter boxes drawn over the text the abc questions refer to (official `Ai2dDatasetBuilder`)

BOX_FILL = (25, 249, 255)


def _font(size: int) -> ImageFont.ImageFont:
    """Arial as the official builder, else PIL's default font at that size."""
    try:
        return ImageFont.truetype("Arial.ttf", size)
    except OSError:
        return ImageFont.load_default(size)


def draw_abc_labels(image: Image.Image, text_boxes: Sequence[Mapping], transparent: bool) -> bytes:
    """PNG of `image` with each text box covered and labelled by its `replacementText` letter.

    Opaque: the box filled, the letter inside it (font shrunk from 22 px to fit the box height).
    Transparent: the box half-transparent, the letter on white at its top-left corner (16-32 px font).
    """
    image = image.convert("RGB")
    draw = ImageDraw.Draw(image, "RGBA" if transparent else "RGB")
    for box in text_boxes:
        (x1, y1), (x2, y2) = box["rectangle"]
        if y1 == y2:
            continue  # degenerate box (never the answer of a question)
        letter = box["replacementText"]
        draw.rectangle([x1, y1, x2, y2], fill=BOX_FILL + (127,) if transparent else BOX_FILL)
        if transparent:
            font = _font(min(max(16, min(image.size) // 50), 32))
            xy = (max(x1 - 12, 0), max(y1 - 10, 0))
            draw.rectangle(draw.textbbox(xy, letter, font=font), fill="white")
            draw.text(xy, letter, fill="black", font=font)
        else:
            size, height = 22, y2 - y1
            bbox = draw.textbbox((0, 0), letter, font=_font(size))
            while height > 4 and size > 1 and bbox[3] - bbox[1] > height:
                size -= 1
                bbox = draw.textbbox((0, 0), letter, font=_font(size))
            x = (x1 + x2) / 2 - (bbox[2] - bbox[0]) / 2
            y = y1 - bbox[1] + (height - (bbox[3] - bbox[1])) / 2
            draw.text((x, y), letter, fill="black", font=_font(size))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _ai2d_questions(root: epath.Path, question_file: epath.Path) -> Iterator[tuple[int, str, dict]]:
    """(image id, key, record) of every question of one diagram: the plain or opaque-box image, and for
    abc questions a second record with the transparent-box image (the "mix" of both kinds)."""
    data = json.loads(question_file.read_text())
    name = data["imageName"]
    image_id = int(name.split(".")[0])
    plain = _image("ai2d", root / "images" / name)
    letters, images = set(), {}
    if any(q["abcLabel"] for q in data["questions"].values()):
        boxes = list(_read_json("ai2d", root / "annotations" / f"{name}.json")["text"].values())
        letters = {b["replacementText"] for b in boxes}
        with Image.open(io.BytesIO(plain)) as diagram:
            images = {t: draw_abc_labels(diagram, boxes, t) for t in (False, True)}
    for question, q in data["questions"].items():
        correct = q["answerTexts"][q["correctAnswer"]]
        options = []  # "{}" marks a null option; duplicates are pruned (either copy is correct)
        for option in q["answerTexts"]:
            if option != "{}" and option not in options:
                options.append(option)
        abc = [o.upper() in letters for o in options]
        for transparent in (False, True) if q["abcLabel"] else (False,):
            qid = q["questionId"] + ("_transparent" if transparent else "")
            yield image_id, qid, dict(
                image=images[transparent] if q["abcLabel"] else plain, image_id=str(image_id),
                messages=[_question(question, qid, options=options, answer_idx=options.index(correct),
                                   abc_label=q["abcLabel"], option_is_abc=abc, has_transparent_box=transparent)])


def parse_ai2d(manual: epath.Path, split: str):
    """AI2D "mix": test = the images listed in ai2d_test_ids.csv; validation = 384 other images (seeded)."""
    root = manual / "ai2d"
    test_ids = {int(line) for line in _require("ai2d", manual / "ai2d_test_ids.csv").read_text().splitlines()
                if line.strip()}
    files = sorted(_require("ai2d", root / "questions").glob("*.json"))
    by_image = defaultdict(list)
    for file in files:
        for image_id, key, record in _ai2d_questions(root, file):
            if (image_id in test_ids) == (split == "test"):
                by_image[image_id].append((key, record))
    ids = sorted(by_image)
    if split != "test":
        np.random.RandomState(AI2D_VAL_SEED).shuffle(ids)
        ids = ids[:AI2D_VAL_IMAGES] if split == "validation" else ids[AI2D_VAL_IMAGES:]
    for image_id in ids:
        yield from by_image[image_id]


# ------------------------------------------------------------------------------------------------
# The builders

_HF = "the Hugging Face dataset {repo} (huggingface-cli download {repo} --repo-type dataset --local-dir <manual_dir>)"
_HF_LAYOUT = "data/<split>-*.parquet (or <config>/<split>/*.parquet of refs/convert/parquet)"
_SPLITS = {"train": "train", "validation": "validation", "test": "test"}

SPECS: dict[str, Spec] = {s.name: s for s in (
    Spec("vqa_v2", "the VQA v2 question and annotation zips (visualqa.org) and COCO train2014 / val2014 / test2015",
         "v2_OpenEnded_mscoco_<train2014|val2014|test2015>_questions.json, v2_mscoco_<train2014|val2014>_"
         "annotations.json, <train2014|val2014|test2015>/COCO_<dir>_<12-digit image id>.jpg",
         {"train": "train2014", "validation": "val2014", "test": "test2015"}, parse_vqa_v2),
    Spec("text_vqa", _HF.format(repo="facebook/textvqa"), _HF_LAYOUT, _SPLITS,
         hub_vqa("text_vqa", "image_id", "question_id")),
    Spec("ok_vqa", _HF.format(repo="HuggingFaceM4/OK-VQA"), _HF_LAYOUT,
         {"train": "train", "validation": "validation"}, parse_ok_vqa),
    Spec("chart_qa", _HF.format(repo="HuggingFaceM4/ChartQA"), _HF_LAYOUT,
         {"train": "train", "validation": "val", "test": "test"}, parse_chart_qa),
    Spec("doc_qa", _HF.format(repo="HuggingFaceM4/DocumentVQA"), _HF_LAYOUT, _SPLITS,
         hub_vqa("doc_qa", "docId", "questionId")),
    Spec("info_qa", "InfographicVQA (https://rrc.cvc.uab.es/?ch=17, task 3)",
         "infographicsVQA_<train_v1.0|val_v1.0_withQT|test_v1.0>.json, images/<image_local_name>",
         {"train": "train_v1.0", "validation": "val_v1.0_withQT", "test": "test_v1.0"}, parse_info_qa),
    Spec("ai2d", "ai2d-all.zip (ai2-website s3, data/ai2d-all.zip) and ai2d_test_ids.csv (prior-datasets s3)",
         "ai2d/questions/*.json, ai2d/images/<name>, ai2d/annotations/<name>.json, ai2d_test_ids.csv",
         _SPLITS, parse_ai2d),
    Spec("a_okvqa", "aokvqa_v1p0.tar.gz (prior-datasets s3, aokvqa/) and COCO 2017 train / val / test images",
         "aokvqa_v1p0_<train|val|test>.json, <train2017|val2017|test2017>/<12-digit image id>.jpg",
         {"train": "train", "validation": "val", "test": "test"}, parse_a_okvqa),
    Spec("science_qa", _HF.format(repo="derek-thomas/ScienceQA"), _HF_LAYOUT, _SPLITS, parse_science_qa),
    Spec("tab_mwp", "the PromptPG repository (github lupantech/PromptPG, its data/tabmwp folder)",
         "data/tabmwp/problems_<train|dev|test>.json, data/tabmwp/tables/<example id>.png",
         {"train": "train", "validation": "dev", "test": "test"}, parse_tab_mwp),
    Spec("st_qa", "ST-VQA (https://rrc.cvc.uab.es/?ch=11, task 3)",
         "train_task_3.json, test_task_3.json and the images at their file_path",
         _SPLITS, parse_st_qa),
    Spec("tally_qa", "tallyqa.zip (github manoja328/tallyqa), COCO train2014 / val2014 and Visual Genome images",
         "train.json, test.json, train2014/, val2014/, VG_100K/, VG_100K_2/ (the paths of the json `image`)",
         {"train": "train", "test": "test"}, parse_tally_qa),
    Spec("dv_qa", "DVQA (github kushalkafle/DVQA_dataset: images and qa google drive files)",
         "<train|val_easy|val_hard>_qa.json, images/<image>",
         {"train": "train", "val_easy": "val_easy", "val_hard": "val_hard"}, parse_dv_qa),
    Spec("figure_qa", "FigureQA v1 (microsoft download figureqa-<split>-v1.tar.gz, extracted)",
         "<train1|validation1|validation2|no_annot_test1|no_annot_test2>/qa_pairs.json and png/<index>.png",
         {"train": "train1", "validation": "validation1", "validation2": "validation2", "test": "no_annot_test1",
          "test2": "no_annot_test2"}, parse_figure_qa),
    Spec("plot_qa", "PlotQA (github NiteshMethani/PlotQA: png and qa_pairs_V2 google drive files)",
         "<train|val|test>/qa_pairs_V2.json and <train|val|test>/png/<index>.png",
         {"train": "train", "validation": "val", "test": "test"}, parse_plot_qa),
)}


class AcademicBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """tfds builder of one `Spec` (see `builder_class`); needs `download_config.manual_dir`."""
    VERSION = tfds.core.Version("1.0.0")
    SPEC: Spec

    def _info(self) -> tfds.core.DatasetInfo:
        # disable_shuffling: records in the order of the source files, as the official readers keep them
        return tfds.core.DatasetInfo(builder=self, description=self.SPEC.instructions, disable_shuffling=True,
                                     features=tfds.features.FeaturesDict({
                                         "image": tfds.features.Image(),
                                         "image_id": tfds.features.Text(),
                                         "messages": tfds.features.Text(),
                                     }))

    def _split_generators(self, dl_manager):
        manual = epath.Path(dl_manager.manual_dir)
        return {split: self._generate_examples(manual, source) for split, source in self.SPEC.splits.items()}

    def _generate_examples(self, manual: epath.Path, source: str):
        for key, record in self.SPEC.parse(manual, source):
            if record["image"] is None:
                raise ValueError(f"{self.SPEC.name}: record {key} of {manual} has no image")
            yield key, dict(record, messages=json.dumps(record["messages"]))


@functools.cache
def builder_class(name: str) -> type[AcademicBuilder]:
    """The tfds builder class of `SPECS[name]` (tfds name `name`, version 1.0.0)."""
    if name not in SPECS:
        raise KeyError(f"unknown academic dataset builder {name!r}; known: {sorted(SPECS)}")
    spec = SPECS[name]
    return type(f"Academic_{name}", (AcademicBuilder,),
                {"name": name, "SPEC": spec, "MANUAL_DOWNLOAD_INSTRUCTIONS": spec.instructions},
                skip_registration=True)


def build(name: str, data_dir, manual_dir=None) -> AcademicBuilder:
    """The prepared builder of `name` in `data_dir`: built from `manual_dir` as ArrayRecord unless it is
    already there. `manual_dir` may be gs://; `data_dir` must be local (array_record opens its files
    with POSIX open(), not through a file-system layer that knows gs://)."""
    if paths.is_remote(data_dir):
        raise ValueError(f"academic data_dir {data_dir}: tensorflow-datasets' ArrayRecord files are written and read "
                         "with POSIX open() and cannot live in object storage; use a local directory (manual_dir "
                         "may stay in the bucket)")
    builder = builder_class(name)(data_dir=os.fspath(data_dir))
    if not builder.is_prepared():
        if manual_dir is None:
            raise FileNotFoundError(f"{name} is not built in {data_dir}; pass manual_dir. {SPECS[name].instructions}")
        if not paths.names(manual_dir):
            raise MissingFileError(f"{name}: manual directory {manual_dir} is missing or empty. "
                                   f"{SPECS[name].instructions}")
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
    return builder


# ------------------------------------------------------------------------------------------------
# Records -> formatter examples (official `get` of each dataset class)


def answers_message(m: Mapping) -> dict:
    return dict(question=m["question"], answers=list(m["answers"]))


def answer_message(m: Mapping) -> dict:
    """The single answer as `answer` (official TallyQA, DVQA, FigureQA, PlotQA, TabMWP)."""
    return dict(question=m["question"], answer=m["answers"][0])


def options_message(m: Mapping) -> dict:
    """Multiple choice: the answer is the letter of `answer_idx` (absent when unknown)."""
    out = dict(question=m["question"], options=list(m["options"]))
    if m.get("answer_idx") is not None:
        out["answer_idx"] = m["answer_idx"]
    return out


def ai2d_message(m: Mapping) -> dict:
    """Letter-box questions whose options are (nearly) all box letters list the options unlabelled (style
    ai2_diagram_no_letter, answer = the option); the others are lettered multiple choice."""
    out = dict(question=m["question"], answer_idx=m["answer_idx"])
    if m["abc_label"] and sum(m["option_is_abc"]) >= len(m["options"]) - 1:
        out["unlabelled_options"] = [o.upper() if abc else o for o, abc in zip(m["options"], m["option_is_abc"])]
        out["style"] = "ai2_diagram_no_letter"
    else:
        out["options"] = list(m["options"])
    return out


def science_qa_message(m: Mapping, official_hint_bug: bool = False) -> dict:
    """The hint (when there is one) goes on a line before the question."""
    question = m["question"]
    if m["hint"]:
        question = m["hint"] + "\n" + (m["hint"] if official_hint_bug else question)
    return dict(options_message(m), question=question)


def chart_qa_weight(m: Mapping, official_weights: bool = False) -> float:
    """Balances ChartQA's human and augmented parts: 2 * (size of the other part) / (both parts)."""
    upweighted = m["human"] != official_weights
    return 2 * (CHART_QA_AUGMENTED if upweighted else CHART_QA_HUMAN) / (CHART_QA_HUMAN + CHART_QA_AUGMENTED)


def easy_direct_answer(m: Mapping, split: str) -> bool:
    """A-OKVQA direct answer drops the "difficult" questions from validation and test."""
    return split == "train" or not m["difficult_direct_answer"]


@dataclasses.dataclass(frozen=True)
class Loader:
    """An official dataset name: its `builder`, `style`, question dict -> formatter dict (`message`),
    `packed` (all questions of a record in one `message_list` example), optional example `weight` and
    question filter `keep` (message, split) -> bool."""
    builder: str
    style: str
    message: Callable[[Mapping], dict]
    packed: bool = False
    weight: Callable[[Mapping], float] | None = None
    keep: Callable[[Mapping, str], bool] | None = None


LOADERS: dict[str, Loader] = {
    "coco_2014_vqa_multi": Loader("vqa_v2", "vqa2", answers_message, packed=True),
    "text_vqa": Loader("text_vqa", "text_vqa", answers_message),
    "okvqa": Loader("ok_vqa", "okvqa", answers_message),
    "chart_qa": Loader("chart_qa", "chart_qa", answers_message),
    "chart_qa_weighted": Loader("chart_qa", "chart_qa", answers_message, weight=chart_qa_weight),
    "doc_qa": Loader("doc_qa", "doc_qa", answers_message),
    "info_qa": Loader("info_qa", "info_qa", answers_message),
    "ai2_diagram_v2_mix_transparent": Loader("ai2d", "ai2_diagram", ai2d_message),
    "a_okvqa_mc": Loader("a_okvqa", "a_okvqa_mc", options_message),
    "a_okvqa_da": Loader("a_okvqa", "a_okvqa_da", answers_message, keep=easy_direct_answer),
    "science_qa_img": Loader("science_qa", "science_qa", science_qa_message),
    "tabwmp_da": Loader("tab_mwp", "tabwmp_da", answer_message),
    "st_qa": Loader("st_qa", "st_qa", answers_message),
    "tally_qa": Loader("tally_qa", "tally_qa", answer_message, packed=True),
    "dv_qa": Loader("dv_qa", "dv_qa", answer_message, packed=True),
    "figure_qa": Loader("figure_qa", "figure_qa", answer_message, packed=True),
    "plot_qa": Loader("plot_qa", "plot_qa", answer_message, packed=True),
}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def decode_record(record: Mapping[str, Any]) -> Record:
    """A data-source record (image undecoded) -> {"image": bytes, "image_id": str, "messages": [dicts]}."""
    return dict(image=bytes(record["image"]), image_id=_text(record["image_id"]),
                messages=json.loads(_text(record["messages"])))


def open_records(name: str, data_dir, split: str) -> Sequence[Mapping[str, Any]]:
    """The ArrayRecord data source of a built split, images left encoded (see `decode_record`)."""
    return builder_class(name)(data_dir=os.fspath(data_dir)).as_data_source(
        split, decoders={"image": tfds.decode.SkipDecoding()})


@dataclasses.dataclass
class AcademicSource:
    """A built split as a `pixmo.Source`: example `i` is record `rows[i]` of the split through `loader`;
    the image stays encoded bytes (decoded, and skipped if broken, by the pipeline). The ArrayRecord files
    are opened on first use in each process: a source is pickled to grain workers without them."""
    data_dir: str
    split: str
    loader: Loader
    rows: np.ndarray

    @functools.cached_property
    def records(self) -> Sequence[Mapping[str, Any]]:
        return open_records(self.loader.builder, self.data_dir, self.split)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "records"}

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, index: int, rng=None) -> Example:
        record = decode_record(self.records[int(self.rows[index])])
        messages = [{"style": self.loader.style, **self.loader.message(m)} for m in record["messages"]]
        if self.loader.packed:
            example: Example = dict(message_list=messages)
        else:
            (example,) = messages
            example["metadata"] = dict(example_id=record["messages"][0]["question_id"])
            if self.loader.weight is not None:
                example["weight"] = self.loader.weight(record["messages"][0])
        example["image"] = record["image"]
        example.setdefault("metadata", {})["image_id"] = record["image_id"]
        return example


def load(name: str, data_dir, manual_dir=None, split: str = "train") -> AcademicSource:
    """An academic dataset by its official mixture name (`olmo/data/__init__.py:get_dataset_by_name`),
    built into `data_dir` from `manual_dir` on first use."""
    if name not in LOADERS:
        raise KeyError(f"unknown academic dataset {name!r}; known: {sorted(LOADERS)}")
    loader = LOADERS[name]
    builder = build(loader.builder, data_dir, manual_dir)
    if split not in builder.info.splits:
        raise ValueError(f"{name}: no split {split!r}; built splits: {sorted(builder.info.splits)}")
    records = open_records(loader.builder, data_dir, split)
    rows = np.arange(len(records))
    if loader.keep is not None:
        rows = np.array([i for i in rows if all(loader.keep(m, split)
                                                 for m in decode_record(records[int(i)])["messages"])], np.int64)
    logging.info("%s %s: %d examples", name, split, len(rows))
    return AcademicSource(os.fspath(data_dir), split, loader, rows)
