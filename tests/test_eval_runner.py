"""The eval runner (molmo_jax.eval.runner): prompts as the official inference formats them, gold answers
scoring 1.0 on every task (prompt -> reference -> metric plumbing), a run of the fixture checkpoint end to
end (result keys, metric ranges, JSON, drawings) and the `molmo-jax eval` subcommand in-process."""
from __future__ import annotations

import functools
import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

import molmo_jax
from data_pipelines import synthetic
from fixture_cases import ROOT
from molmo_jax import api, cli, io, points
from molmo_jax.eval import runner, tasks
from molmo_jax.formatting import Formatter

FIXTURE = ROOT / "qwen2_7b_d"
RESULT_KEYS = {"task", "benchmark", "split", "examples", "prompts", "dropped", "max_new_tokens", "max_crops", "metrics",
               "seconds", "files", "predictions"}
PREDICTION_KEYS = {"example", "prompt", "answer", "prediction", "points", "reference", "scores"}
FAST = dict(n=1, batch_size=4, max_new_tokens=8, show=False)  # 3 pointing prompts, one compiled program


@functools.lru_cache(maxsize=None)
def fixture_cfg():
    return io.load_config(FIXTURE)


@functools.lru_cache(maxsize=None)
def fixture_bundle() -> api.MolmoBundle:
    return molmo_jax.load(FIXTURE)


class GoldBundle:
    """A bundle whose answer to each (image, prompt) is `edit` of the gold answer of the training format."""

    def __init__(self, items, edit=lambda answer: answer):
        self.cfg = fixture_cfg()
        self.gold = {(it.image.tobytes(), it.prompt): edit(it.answer) for it in items}

        self.batch_sizes = []

    def predict_batch(self, images, prompts, max_new_tokens=None):
        self.batch_sizes.append(len(prompts))
        texts = [self.gold[(image.tobytes(), prompt)] for image, prompt in zip(images, prompts)]
        return [api.Prediction(t, points.pixel_points(t, (im.shape[1], im.shape[0]))) for t, im in zip(texts, images)]


def items_of(name: str, n: int, seed: int = 0) -> list[runner.EvalItem]:
    source = runner.open_dataset(runner.TASKS[name])
    return list(runner.eval_items(source, runner.TASKS[name], n, runner.prompt_formatter(fixture_cfg()), seed))


@pytest.mark.parametrize("name", ["synthetic_points", "synthetic_count", "synthetic_cap_qa", "synthetic_clocks"])
def test_prompts_are_the_official_inference_prompts(name):
    """Role-tagged as predict_batch tags them, the prompts equal the full formatter's inference messages
    of the example read with the same rng (style prefix, template choice and all)."""
    items = items_of(name, 3, seed=7)
    official = Formatter.from_config(fixture_cfg())
    expected = []
    for index in range(3):
        rng = np.random.RandomState(7 + index)
        messages, _ = official(runner.open_dataset(runner.TASKS[name]).get(index, rng), False, True, rng)
        expected += [m[0] for m in messages] if isinstance(messages[0], list) else messages
    assert [f" User: {it.prompt} Assistant:" for it in items] == expected
    if name == "synthetic_clocks":
        assert items[0].prompt == "clocks: What time is being shown?"


@pytest.mark.parametrize("name", [t.name for t in tasks.SYNTHETIC])
def test_gold_answers_score_one_on_every_task(name):
    n = 8
    scoring = {"count_none_is_zero": True}  # the official scorer calls the gold "There are none." invalid
    result = runner.evaluate(GoldBundle(items_of(name, n)), name, n=n, batch_size=3, scoring=scoring, show=False)
    assert result["metrics"] and all(v == pytest.approx(1.0) for v in result["metrics"].values()), result["metrics"]
    assert result["examples"] == n and result["prompts"] == len(result["predictions"]) >= n


def test_clocks_are_scored_by_the_clock_scorer():
    """References are the shown time (no seconds); a reading 2 minutes late is close, not exact."""
    items = items_of("synthetic_clocks", 6)
    for it in items:
        hour, minute = it.answer.split(":")
        assert it.reference == dict(hour=int(hour), minute=int(minute), second=-1)
    late = lambda answer: f"{answer.split(':')[0]}:{int(answer.split(':')[1]) + 2:02d}"  # noqa: E731
    result = runner.evaluate(GoldBundle(items, late), "synthetic_clocks", n=6, batch_size=3, show=False)
    assert result["benchmark"] == "clocks"
    assert result["metrics"] == dict(overall_close=1.0, overall_exact=0.0, all_correct=0.0, all_close=1.0,
                                     hour_correct=1.0, minute_correct=0.0, minute_close=1.0)
    assert json.loads(json.dumps(result["predictions"][0]["reference"])) == items[0].reference


def test_a_short_last_batch_is_padded_to_the_compiled_size():
    bundle = GoldBundle(items_of("synthetic_points", 3))
    result = runner.evaluate(bundle, "synthetic_points", n=3, batch_size=4, show=False)
    assert bundle.batch_sizes == [4, 4, 4] and result["prompts"] == 9
    assert [p["example"] for p in result["predictions"]] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    single = GoldBundle(items_of("synthetic_points", 1))
    runner.evaluate(single, "synthetic_points", n=1, batch_size=4, show=False)
    assert single.batch_sizes == [3]  # a lone short batch is not padded


def test_pointing_masks_come_from_the_shapes_else_a_disc():
    item = next(it for it in items_of("synthetic_points", 4) if len(it.reference["points"]) > 1)
    ref = item.reference
    assert ref["mask_source"] == "shapes" and len(ref["masks"]) == len(ref["points"])
    assert np.sum(ref["masks"], axis=0).max() == 1  # one object per gold point
    for (x, y), mask in zip(ref["points"], ref["masks"]):
        assert mask[round(y), round(x)] and 20 < mask.sum() < 0.2 * mask.size
    message = dict(points=ref["points"])
    disc = runner.pointing_reference(message, item.image, objects=None)
    assert disc["mask_source"] == "disc"
    for (x, y), mask in zip(ref["points"], disc["masks"]):
        assert mask[round(y), round(x)] and mask.sum() == pytest.approx(np.pi * (0.05 * 112) ** 2, rel=0.2)
    given = runner.pointing_reference(dict(message, masks=ref["masks"]), item.image, objects=None)
    assert given["mask_source"] == "dataset"


def test_fixture_checkpoint_run_is_well_formed(tmp_path):
    result = runner.evaluate(fixture_bundle(), "synthetic_points", out_dir=tmp_path, draw=2, **FAST)
    assert RESULT_KEYS | {"mask_source"} == set(result) and result["mask_source"] == ["shapes"]
    assert (result["examples"], result["prompts"], result["max_new_tokens"]) == (1, 3, 8)
    assert set(result["metrics"]) == {"precision", "recall", "f1"}
    assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
    assert all(set(p) == PREDICTION_KEYS and "masks" not in p["reference"] for p in result["predictions"])
    json_file, *drawings, predictions = result["files"]
    assert predictions == str(tmp_path / "synthetic_points.predictions.jsonl")
    assert json.loads((tmp_path / "synthetic_points.json").read_text()) == result and json_file.endswith(".json")
    assert [d.rsplit("/", 1)[1] for d in drawings] == ["synthetic_points_000.png", "synthetic_points_001.png"]
    with Image.open(drawings[0]) as png:
        assert png.format == "PNG" and png.size == (2 * 448 + 8, 448)  # gold | predicted, 112 px upscaled x4


def test_eval_rejects_bad_arguments():
    with pytest.raises(KeyError, match="unknown eval task"):
        runner.evaluate(None, "synthetic_nope")
    with pytest.raises(ValueError, match="has 1000 examples"):
        runner.evaluate(None, "synthetic_clocks", n=1001)
    with pytest.raises(ValueError, match="needs the task"):
        runner.evaluate(None, synthetic.held_out_source("synthetic_clocks"))


def test_cli_eval_writes_the_result_and_prints_the_table(tmp_path, capsys):
    argv = ["eval", "--checkpoint", FIXTURE, "--task", "synthetic_points", "--n", 1, "--batch-size", 4,
            "--max-new-tokens", 8, "--draw", 1, "--out", tmp_path]
    assert cli.main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "precision" in out and "f1" in out and f"wrote {tmp_path}/synthetic_points.json" in out
    result = json.loads((tmp_path / "synthetic_points.json").read_text())
    assert result["prompts"] == 3 and len(result["files"]) == 3 and (tmp_path / "synthetic_points_000.png").exists()


def test_held_out_sets_are_the_pixmo_lite_recipes_scenes_unless_a_config_says_otherwise():
    """`molmo-jax eval --task synthetic_points` on a main-job export scores the scenes its recipe trained on;
    a training run's hook passes its own data section."""
    from molmo_jax.recipes import lite, stage2
    lite_data = stage2.get_config("lite").data
    source = runner.open_dataset(runner.TASKS["synthetic_points"])
    assert (source.seed, source.image_size, source.style) == (
        synthetic.HELD_OUT_SEED, lite_data.pixmo_lite_image_size, synthetic.config_style(lite_data))
    assert source.style.kind_colors and source.style != synthetic.SceneStyle()
    other = {**lite.data_fields(), "pixmo_lite_image_size": 56, "pixmo_lite_kind_colors": False}
    source = runner.open_dataset(runner.TASKS["synthetic_points"], lite_data=ml_collections.ConfigDict(other))
    assert (source.image_size, source.style.kind_colors) == (56, False)
