"""Academic tfds builders on tiny files in each manual-dir layout, built as ArrayRecord and read back."""
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipelines import academic, mixtures, synthetic
from molmo_jax import config
from molmo_jax.preprocess import load_image
from molmo_jax.tokenizer import load_tokenizer

FIXTURE = "tests/fixtures/molmo_ref/qwen2_7b_d"
SIZE = (24, 16)  # (width, height) of every image written


def _encoded(fmt: str = "PNG", color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", SIZE, color).save(out, format=fmt)
    return out.getvalue()


def _file(path: Path, data: bytes | str | object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))


def _hub(manual: Path, split: str, rows: list[dict]) -> None:
    """A hub parquet file of `rows`; an "image" value of None stays null, bytes become {"bytes", "path"}."""
    for r in rows:
        if r.get("image") is not None:
            r["image"] = {"bytes": r["image"], "path": None}
    path = manual / "data" / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


# ------------------------------------------------------------------------------------------------
# One writer per builder: 2-4 questions per split in the layout of SPECS[name]


def write_vqa_v2(m):
    for d in ("train2014", "val2014", "test2015"):
        qs = [dict(image_id=7, question_id=70, question="What color?"),
              dict(image_id=9, question_id=90, question="Why?"),
              dict(image_id=7, question_id=71, question="How many?")]
        _file(m / f"v2_OpenEnded_mscoco_{d}_questions.json", {"questions": qs})
        if d != "test2015":
            answers = {70: ["red"] * 6 + ["blue"] * 4, 71: ["2"] * 10, 90: ["because"] * 10}
            _file(m / f"v2_mscoco_{d}_annotations.json", {"annotations": [
                dict(question_id=q, answers=[{"answer": a} for a in ans]) for q, ans in answers.items()]})
        for i in (7, 9):
            _file(m / d / f"COCO_{d}_{i:012d}.jpg", _encoded("JPEG"))


def write_text_vqa(m):
    for split in ("train", "validation", "test"):
        _hub(m, split, [dict(image=_encoded(), image_id="i0", question_id=1, question="What brand?",
                             answers=["nokia"] * 10)])


def write_ok_vqa(m):
    for split in ("train", "validation"):
        _hub(m, split, [dict(image=_encoded(), image_id=3, question_id=30, question="What sport?",
                             answers=[dict(answer="tennis", raw_answer="Tennis")] * 10)])


def write_chart_qa(m):
    for split in ("train", "val", "test"):
        _hub(m, split, [dict(image=_encoded(), query="Max value?", label=["7"], human_or_machine=0),
                        dict(image=b"not an image", query="Min value?", label=["1"], human_or_machine=1),
                        dict(image=_encoded(), query="Min value?", label=["1"], human_or_machine=1)])


def write_doc_qa(m):
    for split in ("train", "validation", "test"):
        _hub(m, split, [dict(image=_encoded(), docId=5, questionId=50, question="What date?",
                             answers=None if split == "test" else ["1 May", "May 1"])])


def write_info_qa(m):
    for name in ("train_v1.0", "val_v1.0_withQT", "test_v1.0"):
        _file(m / f"infographicsVQA_{name}.json", {"data": [
            dict(questionId=11, question="How many?", answers=["3"], image_local_name="a.jpeg")]})
    _file(m / "images" / "a.jpeg", _encoded("JPEG"))


def write_ai2d(m):
    questions = {"Which letter is the sun?": dict(abcLabel=True, answerTexts=["A", "B", "{}", "A"],
                                                   correctAnswer=1, questionId="1.png-0"),
                 "What eats grass?": dict(abcLabel=False, answerTexts=["cow", "lion"], correctAnswer=0,
                                          questionId="1.png-1")}
    for image_id in (1, 2, 3):
        name = f"{image_id}.png"
        _file(m / "ai2d" / "questions" / f"{name}.json", dict(imageName=name, questions=questions))
        _file(m / "ai2d" / "images" / name, _encoded())
        _file(m / "ai2d" / "annotations" / f"{name}.json", {"text": {
            "T1": dict(rectangle=[[2, 2], [10, 8]], replacementText="A"),
            "T2": dict(rectangle=[[12, 4], [20, 12]], replacementText="B")}})
    _file(m / "ai2d_test_ids.csv", "3\n")


def write_a_okvqa(m):
    for split in ("train", "val", "test"):
        qs = [dict(question_id=f"q{k}", question=f"Why {k}?", image_id=4, choices=["a", "b", "c", "d"],
                   difficult_direct_answer=k == 1, **({} if split == "test" else dict(
                       correct_choice_idx=2, direct_answers=["because"] * 10))) for k in range(2)]
        _file(m / f"aokvqa_v1p0_{split}.json", qs)
        _file(m / f"{split}2017" / f"{4:012d}.jpg", _encoded("JPEG"))


def write_science_qa(m):
    for split in ("train", "validation", "test"):
        _hub(m, split, [dict(image=None, question="No image?", choices=["x", "y"], answer=0, hint=""),
                        dict(image=_encoded(), question="Which is a mammal?", choices=["fish", "cat"], answer=1,
                             hint="Mammals have fur.")])


def write_tab_mwp(m):
    home = m / "data" / "tabmwp"
    for split in ("train", "dev", "test"):
        _file(home / f"problems_{split}.json", {"12": dict(question="How much?", answer="5", choices=None)})
    _file(home / "tables" / "12.png", _encoded())


def write_st_qa(m):
    for split in ("train", "test"):
        _file(m / f"{split}_task_3.json", {"data": [
            dict(file_path=f"coco/{k}.jpg", question=f"What word {k}?", question_id=k, answers=["stop"])
            for k in range(3)]})
    for k in range(3):
        _file(m / "coco" / f"{k}.jpg", _encoded("JPEG"))


def write_tally_qa(m):
    for split in ("train", "test"):
        _file(m / f"{split}.json", [
            dict(image="VG_100K/1.jpg", image_id=1, question="How many dogs?", answer=2, question_id=10),
            dict(image="train2014/COCO_train2014_000000000002.jpg", image_id=2, question="How many cats?",
                 answer=0, question_id=20),
            dict(image="VG_100K/1.jpg", image_id=1, question="How many cups?", answer=1, question_id=11)])
    _file(m / "VG_100K" / "1.jpg", _encoded("JPEG"))
    _file(m / "train2014" / "COCO_train2014_000000000002.jpg", _encoded("JPEG"))


def write_dv_qa(m):
    for split in ("train", "val_easy", "val_hard"):
        _file(m / f"{split}_qa.json", [dict(image="bar_0.png", question=f"Label {k}?", answer=f"a{k}",
                                            question_id=k, answer_bbox=[]) for k in range(2)])
    _file(m / "images" / "bar_0.png", _encoded())


def write_figure_qa(m):
    for d in ("train1", "validation1", "validation2", "no_annot_test1", "no_annot_test2"):
        _file(m / d / "qa_pairs.json", {"qa_pairs": [
            dict(image_index=0, question_string=f"Is A the max {k}?", question_id=k,
                 **({} if d.startswith("no_annot") else dict(answer=k % 2))) for k in range(2)]})
        _file(m / d / "png" / "0.png", _encoded())


def write_plot_qa(m):
    for d in ("train", "val", "test"):
        _file(m / d / "qa_pairs_V2.json", {"qa_pairs": [
            dict(image_index=3, question_string="What is the sum?", question_id=1, answer=12.5)]})
        _file(m / d / "png" / "3.png", _encoded())


WRITERS = {name[len("write_"):]: fn for name, fn in globals().items() if name.startswith("write_")}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(data_dir, manual root) with every builder's files written and every builder built."""
    root = tmp_path_factory.mktemp("academic")
    academic.tfds.disable_progress_bar()
    patch = pytest.MonkeyPatch()  # tiny sets: carve 1 validation image / question
    patch.setattr(academic, "AI2D_VAL_IMAGES", 1)
    patch.setattr(academic, "ST_QA_VAL_QUESTIONS", 1)
    for name, write in WRITERS.items():
        write(root / "manual" / name)
        academic.build(name, root / "data", root / "manual" / name)
    patch.undo()
    return root / "data", root / "manual"


def _load(dirs, name, split="train"):
    data, manual = dirs
    return academic.load(name, data, manual / academic.LOADERS[name].builder, split)


def _checked_image(example):
    assert isinstance(example["image"], bytes)
    assert load_image(example["image"]).shape == (SIZE[1], SIZE[0], 3)


def test_every_builder_of_the_stage2_mixture():
    assert set(WRITERS) == set(academic.SPECS)
    academic_names = {n for g in mixtures.STAGE2_MIXTURE for n in g.datasets} - {"android_control"}
    assert academic_names - set(academic.LOADERS) == {n for n in academic_names if n.startswith("pixmo_")}


# (official name, split, len, fields of example 0)
SINGLE = [
    ("text_vqa", "test", 1, dict(question="What brand?", answers=["nokia"] * 10, style="text_vqa")),
    ("okvqa", "validation", 1, dict(question="What sport?", answers=["Tennis"] * 10, style="okvqa")),
    ("chart_qa", "validation", 3, dict(question="Max value?", answers=["7"], style="chart_qa")),
    ("doc_qa", "test", 1, dict(question="What date?", answers=[], style="doc_qa")),
    ("doc_qa", "train", 1, dict(answers=["1 May", "May 1"])),
    ("info_qa", "validation", 1, dict(question="How many?", answers=["3"], style="info_qa")),
    ("a_okvqa_mc", "train", 2, dict(question="Why 0?", options=["a", "b", "c", "d"], answer_idx=2,
                                    style="a_okvqa_mc")),
    ("a_okvqa_mc", "test", 2, dict(options=["a", "b", "c", "d"])),
    ("a_okvqa_da", "train", 2, dict(question="Why 0?", answers=["because"] * 10, style="a_okvqa_da")),
    ("a_okvqa_da", "validation", 1, dict(question="Why 0?")),  # the difficult question is dropped
    ("science_qa_img", "train", 1, dict(question="Mammals have fur.\nWhich is a mammal?", options=["fish", "cat"],
                                        answer_idx=1, style="science_qa")),
    ("tabwmp_da", "validation", 1, dict(question="How much?", answer="5", style="tabwmp_da")),
    ("st_qa", "validation", 1, dict(answers=["stop"], style="st_qa")),
]


@pytest.mark.parametrize("name,split,n,fields", SINGLE, ids=[f"{c[0]}-{c[1]}" for c in SINGLE])
def test_single_question_sets(dirs, name, split, n, fields):
    src = _load(dirs, name, split)
    ex = src.get(0, np.random.RandomState(0))
    assert len(src) == n and {k: ex[k] for k in fields} == fields
    assert "message_list" not in ex and "example_id" in ex["metadata"]
    _checked_image(ex)


PACKED = [
    ("coco_2014_vqa_multi", "train", 2, [("What color?", ["red"] * 6 + ["blue"] * 4), ("How many?", ["2"] * 10)],
     "vqa2"),
    ("coco_2014_vqa_multi", "test", 2, [("What color?", []), ("How many?", [])], "vqa2"),
    ("tally_qa", "train", 2, [("How many dogs?", "2"), ("How many cups?", "1")], "tally_qa"),
    ("dv_qa", "val_hard", 1, [("Label 0?", "a0"), ("Label 1?", "a1")], "dv_qa"),
    ("figure_qa", "validation2", 1, [("Is A the max 0?", "0"), ("Is A the max 1?", "1")], "figure_qa"),
    ("plot_qa", "validation", 1, [("What is the sum?", "12.5")], "plot_qa"),
]


@pytest.mark.parametrize("name,split,n,qas,style", PACKED, ids=[f"{c[0]}-{c[1]}" for c in PACKED])
def test_packed_sets_have_one_example_per_image(dirs, name, split, n, qas, style):
    src = _load(dirs, name, split)
    ex = src.get(0, np.random.RandomState(0))
    key = "answers" if name == "coco_2014_vqa_multi" else "answer"
    assert len(src) == n
    assert [(m["question"], m[key], m["style"]) for m in ex["message_list"]] == [(q, a, style) for q, a in qas]
    _checked_image(ex)


def test_figure_qa_test_split_has_no_answers(dirs):
    data, manual = dirs
    record = academic.decode_record(academic.open_records("figure_qa", data, "test")[0])
    assert [m["answers"] for m in record["messages"]] == [[], []]


def test_chart_qa_weights_balance_the_human_part(dirs):
    src = _load(dirs, "chart_qa_weighted")
    human, augmented = (src.get(i, None)["weight"] for i in (0, 2))
    assert human == pytest.approx(2 * 20901 / 28299) and augmented == pytest.approx(2 * 7398 / 28299)
    assert human * 7398 == pytest.approx(augmented * 20901)  # both parts weigh the same in total
    m = dict(human=True)
    assert academic.chart_qa_weight(m, official_weights=True) == pytest.approx(augmented)


def test_science_qa_official_hint_bug():
    m = dict(question="Q?", hint="H.", options=["a"], answer_idx=0)
    assert academic.science_qa_message(m, official_hint_bug=True)["question"] == "H.\nH."
    assert academic.science_qa_message(dict(m, hint=""))["question"] == "Q?"


def test_ai2d_mix_of_opaque_and_transparent_letter_boxes(dirs):
    test = _load(dirs, "ai2_diagram_v2_mix_transparent", "test")  # image 3
    examples = [test.get(i, None) for i in range(len(test))]
    assert [e["style"] for e in examples] == ["ai2_diagram_no_letter", "ai2_diagram_no_letter", "ai2_diagram"]
    abc, transparent, plain = examples
    assert abc["unlabelled_options"] == ["A", "B"] and abc["answer_idx"] == 1  # "{}" and the duplicate pruned
    assert transparent["metadata"]["example_id"] == "1.png-0_transparent"
    assert plain["options"] == ["cow", "lion"] and plain["answer_idx"] == 0
    images = [load_image(e["image"]) for e in examples]
    assert not np.array_equal(images[0], images[1])  # opaque vs half-transparent boxes
    np.testing.assert_array_equal(images[2], load_image(_encoded()))  # the plain question keeps the diagram
    assert images[0][2, 2].tolist() == list(academic.BOX_FILL)  # a corner of the opaque "A" box
    assert [len(_load(dirs, "ai2_diagram_v2_mix_transparent", s)) for s in ("train", "validation")] == [3, 3]


def test_missing_files_name_the_dataset_and_the_source(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(academic.MissingFileError, match=r"dv_qa: manual directory .* is missing or empty.*DVQA"):
        academic.build("dv_qa", tmp_path / "data", tmp_path / "manual")
    (tmp_path / "manual" / "README").write_text("not the data")
    with pytest.raises(academic.MissingFileError, match=r"tally_qa: .*train.json not found.*tallyqa.zip"):
        academic.build("tally_qa", tmp_path / "data", tmp_path / "manual")
    with pytest.raises(academic.MissingFileError, match=r"chart_qa: no parquet file of split 'train'.*ChartQA"):
        academic.build("chart_qa", tmp_path / "data", tmp_path / "manual")
    with pytest.raises(FileNotFoundError, match="doc_qa is not built.*pass manual_dir"):
        academic.load("doc_qa", tmp_path / "data")
    with pytest.raises(KeyError, match="unknown academic dataset"):
        academic.load("coco_2014_vqa", tmp_path / "data")


def test_stage2_mixture_of_academic_and_synthetic_sources(dirs):
    cfg = config.from_official(json.load(open(f"{FIXTURE}/config.json")))
    cfg.preprocess.crop_mode = "resize"
    tok = load_tokenizer(f"{FIXTURE}/tokenizer.json", cfg.llm.vocab_size)
    sources = {"chart_qa_weighted": _load(dirs, "chart_qa_weighted"), "tally_qa": _load(dirs, "tally_qa"),
               "synthetic_cap_qa": synthetic.SyntheticSource("cap_qa", size=8, image_size=56)}
    groups = (mixtures.Group("aux", 0.6, {"chart_qa_weighted": None, "tally_qa": None}),
              mixtures.Group("demo", 0.4, {"synthetic_cap_qa": None}))
    opts = mixtures.PipelineOptions(batch_size=4, seq_len=512, seed=1)
    it = iter(mixtures.stage2(sources, cfg, tok, opts, groups))
    batches = [next(it) for _ in range(3)]
    assert all(b["input_ids"].shape == (4, 512) for b in batches)
    assert it.skipped["bad_image"] > 0 and sum(it.skipped.values()) == it.skipped["bad_image"]  # the corrupt chart
