"""data_pipelines/factory.py make_data: PixMo-lite and PixMo (tiny hub-schema files) through the official
pipelines for both stages, packed or not, the config errors, and a 2-step training run on PixMo-lite."""
import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from data_pipelines import factory, sources
from molmo_jax import config, io
from molmo_jax.recipes import common, lite, stage1, stage2
from molmo_jax.train import hooks, metrics_log, trainer
from test_data_pixmo import _png, _write

TOKENIZER = "tests/fixtures/molmo_ref/qwen2_7b_d/tokenizer.json"  # vocab 512, as the tiny models
SEQ_LEN = 192


def tiny(stage: int, /, **data):
    """The tiny stage config on PixMo-lite with 56 px images, one crop each, batch 2."""
    c = (stage1 if stage == 1 else stage2).get_config("tiny")
    c.model.vit.update(image_size=(56, 56), num_pos=17)
    c.model.preprocess.crop_mode = "resize"
    c.model = config.validate(c.model)
    c.data.update({**dict(kind="pixmo_lite", tokenizer=TOKENIZER, global_batch=2, seq_len=SEQ_LEN,
                          pixmo_lite_size=40, pixmo_lite_image_size=56), **data})
    return c


def check_batch(batch, cfg, crops: int):
    assert set(trainer.BATCH_KEYS) <= set(batch)
    rows = (2, cfg.data.seq_len)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["loss_masks"].shape == rows
    patches = int(np.prod(config.patch_grid(cfg.model)))
    assert batch["images"].shape == (2, crops, patches, 3 * cfg.model.vit.patch_size ** 2)
    assert batch["image_input_idx"].shape[:2] == (2, crops)
    assert (batch["loss_masks"] > 0).any() and (batch["image_input_idx"] >= 0).any()


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("pack_crops", [0, 3])
def test_pixmo_lite_batches(stage, pack_crops):
    cfg = tiny(stage, pack_crops=pack_crops)
    cfg.data.seq_len = 2 * SEQ_LEN if pack_crops else SEQ_LEN  # room for several captions per row
    it = factory.make_data(cfg)
    batch = next(it)
    check_batch(batch, cfg, crops=pack_crops or 1)
    if pack_crops:  # several examples per row: positions restart inside a row
        assert (batch["position_ids"] == 0).sum() > 2
    assert json.loads(json.dumps(it.get_state()))  # the trainer checkpoints it


@pytest.fixture(scope="module")
def pixmo_dir(tmp_path_factory):
    """PixMo-Cap (more rows than the 2048 carved out for validation), PixMo-Docs charts and PixMo-Count in
    the hub layout, with every URL image in <data_dir>/images."""
    data = tmp_path_factory.mktemp("pixmo")
    images = data / "images"
    images.mkdir()
    n = 2060
    urls = [f"http://x/{i}.jpg" for i in range(n)]
    _write(str(data / "pixmo-cap/data/train-00000-of-00001.parquet"), "pixmo-cap",
           dict(image_url=urls, caption=[f"A red square number {i}." for i in range(n)],
                transcripts=[["a red square", "red"]] * n), images)
    _write(str(data / "pixmo-docs/charts/train-00000-of-00001.parquet"), "pixmo-docs", dict(
        image=[{"bytes": _png(), "path": None}] * 3, image_id=["d0", "d1", "d2"],
        questions=[{"question": ["What is A?"], "answer": ["7"]}] * 3))
    _write(str(data / "pixmo-count/data/train-00000-of-00001.parquet"), "pixmo-count", dict(
        image_url=urls[:3], image_sha256=["0" * 64] * 3, count=[2] * 3,
        points=[{"x": [4.0, 20.0], "y": [10.0, 5.0]}] * 3, label=["squares"] * 3), images)
    return data


def test_pixmo_stage1_and_stage2_from_hub_files(pixmo_dir):
    cfg = tiny(1, kind="pixmo", data_dir=str(pixmo_dir))
    check_batch(next(factory.make_data(cfg)), cfg, crops=1)
    cfg = tiny(2, kind="pixmo", data_dir=str(pixmo_dir), datasets=("pixmo_docs_charts", "pixmo_count"))
    it = factory.make_data(cfg)
    check_batch(next(it), cfg, crops=1)
    assert it.skipped["bad_image"] == it.skipped["error"] == 0
    # the default stage-2 set needs every PixMo set of the mixture, and takes the academic sets present
    with pytest.raises(FileNotFoundError, match="pixmo-ask-model-anything"):
        sources.stage2_sources(pixmo_dir, pixmo_dir / "images", pixmo_dir / "academic")
    manual = pixmo_dir / "manual"
    (manual / "text_vqa").mkdir(parents=True)
    assert not sources.academic_present("text_vqa", pixmo_dir / "academic", manual)  # empty manual dir
    (manual / "text_vqa" / "train.parquet").write_bytes(b"")
    assert sources.academic_present("text_vqa", pixmo_dir / "academic", manual)
    with pytest.raises(KeyError, match="no reader"):
        sources.load("android_control")


@pytest.mark.parametrize("fields, match", [
    (dict(kind="webdataset"), "data.kind='webdataset' is unknown; known: synthetic, pixmo_lite, pixmo, user"),
    (dict(tokenizer=""), "needs data.tokenizer"),
    (dict(kind="pixmo"), "needs data.data_dir"),
    (dict(stage=3), "data.stage=3"),
    (dict(seq_len=4), "data.seq_len=4 cannot hold an image"),
])
def test_config_errors_name_the_field(fields, match):
    with pytest.raises(ValueError, match=match):
        factory.make_data(tiny(1, **fields))


def test_stage_configs_name_their_data():
    assert (stage1.get_config("tiny").data.kind, stage1.get_config("tiny").data.stage) == ("synthetic", 1)
    s2 = stage2.get_config("Molmo-7B-D-0924").data
    assert (s2.kind, s2.stage, s2.pack_crops, s2.too_long) == ("pixmo", 2, 0, "skip")


@pytest.mark.parametrize("arg", ["tiny", "Molmo-7B-D-0924", "lite", "lite-smoke"])
def test_stage_configs_format_and_seed_as_their_stage(arg):
    """The recipes, not the pipeline, set each stage's official formatting and data seed."""
    for stage, recipe in ((1, stage1), (2, stage2)):
        cfg = recipe.get_config(arg)
        assert cfg.data.stage == stage and cfg.data.seed == common.STAGE_SEEDS[stage]
        assert {k: cfg.model.formatting[k] for k in common.STAGE_FORMATTING[stage]} == common.STAGE_FORMATTING[stage]


def test_pixmo_lite_is_an_arg_of_the_stage_recipes():
    s1, s2, smoke = stage1.get_config("lite"), stage2.get_config("lite"), stage2.get_config("lite-smoke")
    assert s1.data.kind == s2.data.kind == "pixmo_lite" and s1.model.name == "pixmo-lite"
    assert (s1.optim.steps, s2.optim.steps, stage2.get_config("lite-long").optim.steps, smoke.optim.steps) == \
        (250, 1500, 6000, 2)
    assert s2.optim.warmup.llm == 75 and s2.checkpoint.every == 375 and smoke.checkpoint.every == 50
    for c, image_lr in ((s1, 5e-4), (s2, 1e-4)):  # the image path slower in stage 2
        assert (c.optim.lr.llm, c.optim.lr.vit, c.optim.lr.connector) == (1e-3, image_lr, image_lr)
    with pytest.raises(ValueError, match="recipe arg 'lite-huge'.*lite, lite-long, lite-smoke"):
        stage1.get_config("lite-huge")
    assert lite.is_lite("lite-long") and not lite.is_lite("tiny-olmo")


def test_synthetic_data_needs_no_tensorflow_datasets():
    """tensorflow-datasets (the "data" extra) is imported only for real PixMo / academic data."""
    code = "import sys, experiments.main, experiments.train; assert 'tensorflow_datasets' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_two_training_steps_on_pixmo_lite_with_periodic_eval_and_export(tmp_path):
    """experiments.train's run with --eval_every / --eval_task / --export_every: the held-out PixMo-lite sets
    are drawn as the run's data (56 px scenes here, not the generator's 112 px), scored every step into the
    log and <workdir>/eval/<step>/; the step-2 export is the run's final model."""
    from experiments import train

    cfg = tiny(2)
    cfg.optim.steps, cfg.log_every, cfg.mesh = 2, 1, (1, 1, 1)
    periodic = hooks.Periodic(eval_every=1, eval_tasks=("synthetic_points",), eval_examples=2, export_every=2)
    train.run(cfg, str(tmp_path), ("orbax",), periodic)
    rows = metrics_log.read(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss"]) for r in rows)
    assert "skipped/too_long" in rows[-1]
    assert [sorted(k for k in r if k.startswith("eval/")) for r in rows] == [
        ["eval/synthetic_points/f1", "eval/synthetic_points/precision", "eval/synthetic_points/recall"]] * 2
    for step in (1, 2):
        result = json.loads((tmp_path / "eval" / str(step) / "synthetic_points.json").read_text())
        assert result["prompts"] >= 2 and {tuple(p["reference"]["image_size"]) for p in result["predictions"]} == {
            (56, 56)}
        assert rows[step - 1]["eval/synthetic_points/f1"] == result["metrics"]["f1"]
    final, at_step_2 = io.load(tmp_path / "export" / "orbax"), io.load(tmp_path / "export_steps" / "2" / "orbax")
    jax.tree.map(np.testing.assert_array_equal, final[1], at_step_2[1])


@pytest.mark.parametrize("periodic, match", [
    (dict(eval_every=5), "needs both an interval"),
    (dict(eval_every=5, eval_tasks=("synthetic_nowhere",)), "eval task synthetic_nowhere: unknown; known: "),
    (dict(export_every=5), "need the run's tokenizer: set data.tokenizer"),
    (dict(eval_every=5, eval_tasks=("synthetic_points",), stage=1), "system_prompt_kind=.*: predict_batch would add"),
])
def test_periodic_flags_fail_before_training(tmp_path, periodic, match):
    from experiments import train

    cfg = tiny(periodic.pop("stage", 2))
    if "export_every" in periodic:
        cfg.data.kind, cfg.data.tokenizer = "synthetic", ""
    with pytest.raises(ValueError, match=match):
        train.run(cfg, str(tmp_path), ("orbax",), hooks.Periodic(**periodic))
    assert not (tmp_path / "checkpoints").exists()
