"""Benchmark evaluation (molmo_jax.eval.tasks / runner / report, data_pipelines.eval_sets): every benchmark
read from a tiny copy in its public layout (written by tests/eval_set_writers.py), its official prompt,
answer length and crop count; gold answers scoring 1 through the real scorer; the fixture model on the
paper's table from the CLI; a killed run resumed equal to an uninterrupted one; test-server files;
missing-file errors; the AndroidControl scorer; Elo from the CLI."""
from __future__ import annotations

import functools
import json

import numpy as np
import pytest
from PIL import Image

import molmo_jax
from data_pipelines import android_control as android_data, eval_sets
import eval_set_writers
from eval_set_writers import write_and_build
from fixture_cases import ROOT
from molmo_jax import api, cli, points
from molmo_jax.eval import android_control, report, runner, tasks

FIXTURE = ROOT / "qwen2_7b_d"

# The first prompt of each task on the tiny copies: the official inference prompt (olmo/data/data_formatter.py:
# DataFormatter with for_inference=True: the style prefix of the reader's style, eval_short_answer -> "vqa2:",
# eval_multiple_choice -> "a_okvqa_mc:", none for the demo style point_count 90% of the time; options lettered
# "A: x") and (tokens, crops).
HIGH = (12, 36)
SPEC = {
    "ai2d": ("ai2_diagram_no_letter: Which letter is the sun?\nA\nB\n", HIGH),
    "chart_qa": ("chart_qa: Max value?", HIGH),
    "vqa_v2": ("vqa2: What color?", HIGH),
    "doc_qa": ("doc_qa: What date?", HIGH),
    "info_qa": ("info_qa: How many?", HIGH),
    "text_vqa": ("text_vqa: What brand?", HIGH),
    "real_world_qa": ("vqa2: How many cars are there?", HIGH),
    "mmmu": ("a_okvqa_mc: Which value is largest? <image 1>\nA: 12\nB: 15\nC: 9\n", HIGH),
    "math_vista": ("a_okvqa_mc: Which shape is red?\nA: square\nB: circle\n", HIGH),
    "countbench_qa": ("How many dogs are there?", (192, 12)),
    "pixmo_count": ("If there are any boats present, indicate their positions and output the total count.",
                    (192, 12)),
    "pointing_eval": ("Point to red square\nPlease say 'This isn't in the image.' if it is not in the image.",
                      (192, 12)),
    "android_control": ("low_level: Tap the search bar", (16, 12)),
    "okvqa": ("okvqa: What sport?", HIGH),
    "a_okvqa_mc": ("a_okvqa_mc: Why 0?\nA: a\nB: b\nC: c\nD: d\n", HIGH),
    "a_okvqa_da": ("a_okvqa_da: Why 0?", HIGH),
    "science_qa": ("science_qa: Mammals have fur.\nWhich is a mammal?\nA: fish\nB: cat\n", HIGH),
    "tab_mwp": ("tabwmp_da: How much?", HIGH),
    "st_qa": ("st_qa: What word 0?", HIGH),
    "tally_qa": ("tally_qa: How many dogs?", HIGH),
    "dv_qa": ("dv_qa: Label 0?", HIGH),
    "figure_qa": ("figure_qa: Is A the max 0?", HIGH),
    "plot_qa": ("plot_qa: What is the sum?", HIGH),
}
BENCHMARKS = sorted(name for name, t in tasks.TASKS.items() if t.dataset is not None)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_and_build(tmp_path_factory.mktemp("evaldata"))


@functools.lru_cache(maxsize=None)
def fixture_bundle() -> api.MolmoBundle:
    return molmo_jax.load(FIXTURE)


@functools.lru_cache(maxsize=None)
def crops_of_a_large_image(max_crops: int) -> int:
    """Crops (global view included) the bundle at `max_crops` cuts a large image into whose aspect ratio is
    that of the fullest tiling (6 x 6 tiles for 36 crops, 3 x 4 for 12)."""
    bundle = runner.with_max_crops(fixture_bundle(), max_crops)
    rows = max(r for r in range(1, int(max_crops ** 0.5) + 1) if max_crops % r == 0)
    image = np.zeros((300 * rows, 300 * (max_crops // rows), 3), np.uint8)
    return len(bundle.preprocessor(image, "Describe this.")["images"])


def items(task_name: str, data_dir, split=None) -> list[runner.EvalItem]:
    task = tasks.TASKS[task_name]
    source = runner.open_dataset(task, split, data_dir)
    return list(runner.eval_items(source, task, len(source), runner.prompt_formatter(fixture_bundle().cfg)))


def test_every_benchmark_has_its_spec():
    assert sorted(SPEC) == BENCHMARKS
    assert tasks.PAPER_TASKS == ("ai2d", "chart_qa", "vqa_v2", "doc_qa", "info_qa", "text_vqa", "real_world_qa",
                                 "mmmu", "math_vista", "countbench_qa", "pixmo_count")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_prompt_answer_length_and_crops_follow_the_official_settings(name, data_dir):
    prompt, (max_new_tokens, max_crops) = SPEC[name]
    task = tasks.TASKS[name]
    assert items(name, data_dir)[0].prompt == prompt
    assert (task.max_new_tokens, task.max_crops) == (max_new_tokens, max_crops)
    assert crops_of_a_large_image(task.max_crops) == 1 + max_crops


def gold(item: runner.EvalItem) -> str:
    """The gold answer: the training answer, else the metadata's (a letter for multiple choice, a count)."""
    ref = item.reference
    if item.answer is not None:
        return item.answer
    if "count" in ref:
        return str(ref["count"])
    if ref.get("choices") and ref["answer"] in ref["choices"]:
        return "ABCDEFGH"[list(ref["choices"]).index(ref["answer"])]
    return ref["answer"]


class GoldBundle:
    """Answers each prompt of a task's items with its gold answer (prompts with equal text share it)."""

    def __init__(self, task_items: list[runner.EvalItem]):
        self.cfg = fixture_bundle().cfg
        self.answers = {it.prompt: gold(it) for it in task_items}

    def predict_batch(self, images, prompts, max_new_tokens=None):
        texts = [self.answers[p] for p in prompts]
        return [api.Prediction(t, points.pixel_points(t, (im.shape[1], im.shape[0]))) for t, im in zip(texts, images)]


class Interrupted:
    """A bundle's answers, counting `predict_batch` calls; the call after `kill_after` raises KeyboardInterrupt."""

    def __init__(self, bundle, kill_after: int | None = None):
        self.bundle, self.cfg, self.calls, self.kill_after = bundle, bundle.cfg, 0, kill_after

    def predict_batch(self, *args, **kwargs):
        self.calls += 1
        if self.kill_after is not None and self.calls > self.kill_after:
            raise KeyboardInterrupt("killed")
        return self.bundle.predict_batch(*args, **kwargs)


def gold_bundle(data_dir, name, split=None) -> GoldBundle:
    return GoldBundle(items(name, data_dir, split))


@pytest.mark.parametrize("name", BENCHMARKS)
def test_gold_answers_score_one_on_every_benchmark(name, data_dir):
    task = tasks.TASKS[name]
    result = runner.evaluate(gold_bundle(data_dir, name), name, data_dir=data_dir, batch_size=2, show=False)
    assert result["split"] == task.split and result["prompts"] == len(result["predictions"]) > 0
    assert result["metrics"][task.headline] == pytest.approx(1.0), result["metrics"]
    assert all(p["scores"][task.headline] == pytest.approx(1.0) for p in result["predictions"]
               if task.headline in p["scores"] and not name == "ai2d")


def test_unreadable_and_filtered_examples_are_dropped_and_counted(data_dir):
    result = runner.evaluate(gold_bundle(data_dir, "chart_qa"), "chart_qa", data_dir=data_dir, show=False)
    assert [d[0] for d in result["dropped"]] == [1] and "not a recognised image format" in result["dropped"][0][1]
    assert len(eval_sets.load("countbench_qa", data_dir, "test")) == 2  # no image / grayscale rows left out


@pytest.mark.parametrize("name, key, ids", [("vqa_v2", "question_id", [70, 71, 90]),
                                            ("doc_qa", "questionId", [50]), ("info_qa", "questionId", [11])])
def test_server_scored_test_splits_write_submission_files(name, key, ids, data_dir, tmp_path):
    """No gold answers: no metrics; the server file holds each question's id and its short answer (the
    text after "Answer:", as `VqaEval` reads it)."""
    test_items = items(name, data_dir, "test")
    bundle = GoldBundle([])
    bundle.answers = {it.prompt: f"The answer. Answer: a{it.question_id}" for it in test_items}
    result = runner.evaluate(bundle, name, split="test", data_dir=data_dir, out_dir=tmp_path, show=False)
    assert result["metrics"] == {} and str(tmp_path / f"{name}_test_submission.json") in result["files"]
    submission = json.loads((tmp_path / f"{name}_test_submission.json").read_text())
    assert submission == [{key: i, "answer": f"a{i}"} for i in ids]


def test_a_killed_run_resumes_to_the_uninterrupted_result(data_dir, tmp_path):
    """Real fixture model, one prompt per batch: killed after the first batch (plus a torn line), run again
    it answers only the rest and its predictions and metrics equal an uninterrupted run's; other settings
    (another checkpoint) are refused, and `resume=False` starts afresh."""
    bundle = fixture_bundle()
    options = dict(data_dir=data_dir, batch_size=1, max_new_tokens=4, max_crops=4, show=False, resume=True,
                   checkpoint="fixture")  # 4 crops: at vqa_v2's 36 one answer takes 12 s on CPU
    whole = runner.evaluate(bundle, "vqa_v2", out_dir=tmp_path / "whole", **options)
    with pytest.raises(KeyboardInterrupt):
        runner.evaluate(Interrupted(bundle, kill_after=1), "vqa_v2", out_dir=tmp_path / "cut", **options)
    log = runner.predictions_file(tmp_path / "cut", "vqa_v2")
    assert len(log.read_text().splitlines()) == 2  # settings + one answer
    with open(log, "a") as f:
        f.write('{"example": 0, "prom')  # killed while writing
    counting = Interrupted(bundle)
    resumed = runner.evaluate(counting, "vqa_v2", out_dir=tmp_path / "cut", **options)
    assert whole["prompts"] == 3 and counting.calls == 2
    strip = lambda r: {k: v for k, v in r.items() if k not in ("seconds", "files")}  # noqa: E731
    assert strip(resumed) == strip(whole)
    written = [runner.predictions_file(d, "vqa_v2").read_text() for d in (tmp_path / "whole", tmp_path / "cut")]
    assert written[0] == written[1]
    for other in (dict(max_new_tokens=5), dict(checkpoint="another")):
        with pytest.raises(ValueError, match="other settings"):
            runner.evaluate(counting, "vqa_v2", out_dir=tmp_path / "cut", **dict(options, **other))
    fresh = runner.evaluate(counting, "vqa_v2", out_dir=tmp_path / "cut", **dict(options, resume=False))
    assert counting.calls == 2 + 3 and strip(fresh) == strip(whole)  # without resume: answered afresh


def test_generation_sharded_over_the_mesh_answers_as_on_one_device(data_dir):
    """8 simulated devices, one batch of 8 (3 prompts padded) split over them: the same answers."""
    options = dict(data_dir=data_dir, max_new_tokens=4, max_crops=4, show=False)
    sharded = molmo_jax.load(FIXTURE, mesh=runner.data_parallel_mesh(8))
    assert sharded.mesh is not None and sharded.mesh.devices.size == 8
    on_mesh = runner.evaluate(sharded, "vqa_v2", batch_size=8, **options)
    single = runner.evaluate(fixture_bundle(), "vqa_v2", batch_size=1, **options)
    assert [p["prediction"] for p in on_mesh["predictions"]] == [p["prediction"] for p in single["predictions"]]


def test_cli_paper_table_of_the_fixture_model(data_dir, tmp_path, capsys):
    argv = ["eval", "--checkpoint", FIXTURE, "--task", "paper", "--data-dir", data_dir, "--out", tmp_path, "--n", 1,
            "--batch-size", 1, "--max-new-tokens", 4, "--max-crops", 4]
    assert cli.main([str(a) for a in argv]) == 0
    assert "| checkpoint | ai2d | chart_qa |" in capsys.readouterr().out
    (row,) = json.loads((tmp_path / "paper.json").read_text())
    assert row["checkpoint"] == "qwen2_7b_d" and set(row) == {"checkpoint", *tasks.PAPER_TASKS, "average"}
    assert all(0.0 <= row[name] <= 100.0 for name in tasks.PAPER_TASKS)
    assert row["average"] == pytest.approx(np.mean([row[name] for name in tasks.PAPER_TASKS]))
    assert (tmp_path / "paper.md").read_text().startswith("| checkpoint |")
    with Image.open(tmp_path / "paper.png") as png:
        assert png.format == "PNG"
    for name in tasks.PAPER_TASKS:
        settings, *answers = runner.predictions_file(tmp_path / "qwen2_7b_d", name).read_text().splitlines()
        settings = json.loads(settings)["settings"]
        assert settings["max_crops"] == 4 and settings["checkpoint"] == str(FIXTURE.resolve()) and answers


def test_paper_average_needs_all_eleven():
    full = {name: {"metrics": {tasks.TASKS[name].headline: 0.5}} for name in tasks.PAPER_TASKS}
    partial = {k: v for k, v in full.items() if k != "mmmu"}
    rows = report.paper_rows({"a": full, "b": partial})
    assert rows[0]["average"] == pytest.approx(50.0) and rows[1]["average"] is None and rows[1]["mmmu"] is None
    assert "| b | 50.0 |" in report.markdown(rows) and "| - |" in report.markdown(rows)


@pytest.mark.parametrize("name, dataset", [("real_world_qa", "RealWorldQA"), ("math_vista", "MathVista"),
                                           ("countbench_qa", "countbench"), ("mmmu", "MMMU"),
                                           ("pointing_eval", "pixmo-points-eval"), ("pixmo_count", "pixmo-count"),
                                           ("chart_qa", "chart_qa")])
def test_missing_files_name_the_dataset_the_path_and_where_to_get_it(name, dataset, tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        runner.open_dataset(tasks.TASKS[name], None, tmp_path)
    message = str(error.value)
    assert message.startswith(tasks.TASKS[name].dataset) and str(tmp_path / dataset) in message
    assert "huggingface-cli download" in message or "Download" in message


def test_pixmo_eval_sets_need_their_downloaded_images(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"pixmo_points_eval: none of the 1 images is in .*data_pipelines.download"):
        eval_sets.load("pixmo_points_eval", data_dir, "test", image_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="pixmo_count_counting: none of the 2 images"):
        eval_sets.load("pixmo_count_counting", data_dir, "test", image_dir=tmp_path)


def test_cli_interrupted_run_says_how_to_resume(tmp_path, capsys, monkeypatch):
    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(runner, "evaluate", killed)
    argv = ["eval", "--checkpoint", str(FIXTURE), "--task", "synthetic_count", "--out", str(tmp_path)]
    assert cli.main(argv) == 130
    assert "interrupted; the answers so far are in" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["eval", "--checkpoint", str(FIXTURE), "--task", "mmmu", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("molmo-jax eval: error: mmmu: no validation parquet")
    assert cli.main(["eval", "--checkpoint", str(FIXTURE), "--task", "mmmu", "--split", "train"]) == 1
    assert "no split 'train'" in capsys.readouterr().err
    assert cli.main(["eval", "--checkpoint", "not/loaded", "--task", "paper", "--data-dir", str(tmp_path)]) == 1
    assert "error: ai2_diagram_v2_mix_transparent: " in capsys.readouterr().err  # data checked before any model


def test_android_control_step_accuracy_follows_the_official_rules():
    box = "(100.0, 200.0, 300.0, 400.0)"
    cases = [  # (prediction, target, box, correct)
        ("Click(150, 250)", "Click(160, 260)", box, True),
        ("click(99, 250)", "Click(160, 260)", box, False),
        ("Long Press(300, 400)", "Long Press(200, 300)", box, True),  # edges included
        ("Click(150, 250)", "Long Press(200, 300)", box, False),
        ("Click(150, 250)", "Open App Gmail", box, True),  # a click on the app opens it
        ("Click(150, 250)", "Open App Gmail", None, False),
        ("Open App gmail", "Open App Gmail", None, True),
        ("Type Hello", "type hello", None, True),
        ("Type hello world", "Type hello", None, False),
        ("Scroll down", "Scroll Down", None, True),
        ("Scroll up", "Scroll down", None, False),
        ("Navigate Back", "Navigate Back", None, True),
        ("Plan: go back Action: Navigate Home", "Navigate Home", None, True),
        ("Wait", "Navigate Home", None, False),
        ("Click(150, 250)", "Click(160, 260)", "(100, 200, 300, 400)", False),  # official: decimals only
        ("gibberish", "also gibberish", None, True),  # official: two unknown actions are equal
    ]
    predictions, targets, boxes, correct = zip(*cases)
    assert android_control.step_accuracy(predictions, targets, boxes) == [float(c) for c in correct]
    refs = [dict(target_action=t, target_box=b) for t, b in zip(targets, boxes)]
    assert molmo_jax.eval.metrics.score("android_control_ll", predictions, refs) == {
        "accuracy": pytest.approx(np.mean(correct))}


def test_android_control_steps_from_the_tfrecord_release(data_dir):
    """Episode 7's two steps (its last screenshot has none): click coordinates and the smallest visible box
    around them in percent of the 200 x 100 screen; "Open App gmail" boxed by the node whose text starts
    with it; the train episode left out."""
    source = eval_sets.load("android_control_ll", data_dir, "validation")
    assert len(source) == 2
    first, second = (source.get(i)["metadata"] for i in range(2))
    assert (first["target_action"], first["target_box"]) == ("Click(25.0, 50.0)", "[20.0, 40.0, 30.0, 60.0]")
    assert (second["target_action"], second["target_box"]) == ("Open App gmail", "[50.0, 20.0, 70.0, 60.0]")
    assert source.get(1)["prompt"] == "low_level: Open gmail" and first["hl_instruction"] == "Find my mail"
    assert android_data.app_box({"windows": [{"tree": {"nodes": [
        {"text": "Gmail", "isVisibleToUser": True, "boundsInScreen": {"right": 10, "bottom": 10}}]}}]}, "Gmail") is None
    with pytest.raises(FileNotFoundError, match="android_control: .*splits.json not found; get it from gs://"):
        eval_sets.load("android_control_ll", data_dir / "nowhere", "validation")


def test_cli_elo_from_a_preference_file(tmp_path, capsys):
    rows = ([dict(model_a="big", model_b="small", winner="model_a")] * 8 +
            [dict(model_a="small", model_b="big", winner="model_a")] * 2 +
            [dict(model_a="small", model_b="tiny", winner="tie (bothbad)")] * 3 +
            [dict(model_a="tiny", model_b="big", winner="model_b")] * 5)
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "elo.json"
    assert cli.main(["elo", "--preferences", str(prefs), "--bootstrap", "20", "--out", str(out)]) == 0
    ratings = json.loads(out.read_text())
    assert list(ratings) == ["big", "small", "tiny"] and "big" in capsys.readouterr().out
    assert all(r["ci_low"] <= r["rating"] <= r["ci_high"] for r in ratings.values())
    prefs.write_text(json.dumps(dict(model_a="a", model_b="b", winner="c")) + "\n")
    assert cli.main(["elo", "--preferences", str(prefs)]) == 1
    assert "winner 'c' is not model_a, model_b or tie" in capsys.readouterr().err


def test_readers_follow_the_official_dataset_classes():
    """MMMU drops the image when several options are images; RealWorldQA cuts the instruction of short
    answers only; MathVista keeps the bare question."""
    image_options = dict(question_type=["multiple-choice"], options=[str(["<img='a.png'>", "<img='b.png'>"])],
                         question=["Which?"], answer=["A"], id=["x"], image_1=[{"bytes": b"png"}])
    assert eval_sets._mmmu_image(image_options) is None
    assert eval_sets._mmmu_image(dict(image_options, options=[str(["<img='a.png'>", "cat"])])) == b"png"
    short, mc = ({k: [v] for k, v in row.items()} for row in eval_set_writers.RWQA_ROWS)
    assert eval_sets.real_world_qa_example(short)["question"] == "How many cars are there?"
    assert eval_sets.real_world_qa_example(mc)["question"] == mc["question"][0]
    with pytest.raises(ValueError, match="without either official instruction"):
        eval_sets.real_world_qa_example(dict(mc, question=["Which way?\nA. left"]))
    vista = dict(question=["Hint: Answer with a letter.\nQuestion: Which is red?"], pid=["1"], answer=["A"],
                 precision=[None], choices=[["x", "y"]], question_type=["multi_choice"], answer_type=["text"])
    assert eval_sets.math_vista_example(vista)["question"] == "Which is red?"
