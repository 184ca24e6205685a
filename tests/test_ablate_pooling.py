"""The connector ablation sweep (experiments/ablate_pooling.py, experiments/ablations.py).

Every variant of both sweeps is checked structurally without compiling (config, preprocessor token layout
vs connector output, the traced forward of the whole model); the train + evaluate pipeline runs for real on
a tiny budget (2 steps, 2 held-out examples per task, 2 new tokens) and twice for determinism; the
statistics (intervals over seeds, paired differences) are checked against hand-computed values, and the
stored sweep against the columns the README quotes.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablate_pooling, ablations, image_gain
from molmo_jax import config as config_lib
from molmo_jax.models.connector import Connector
from molmo_jax.models.molmo import Molmo, dummy_inputs
from molmo_jax.preprocess import ImageProcessor
from molmo_jax.tokenizer import SpecialIds

ALL_VARIANTS = {v["name"]: v for v in ablations.get_config("full").variants}


def tiny_sweep(**overrides):
    sweep = ablations.get_config("quick")
    sweep.update({**dict(seeds=(0,), stage1_steps=0, stage2_steps=2, eval_examples=2, eval_batch=2,
                         max_new_tokens=2, gain_examples=2), **overrides})
    return sweep


def test_quick_sweep_is_a_subset_and_covers_every_official_type():
    quick = [v["name"] for v in ablations.get_config("quick").variants]
    assert set(quick) <= set(ALL_VARIANTS) and len(set(quick)) == len(quick)
    full = ALL_VARIANTS.values()
    assert {v["pooling"] for v in full} == {"attention_meanq", "attention", "attention_2wide", "stack", "none"}
    assert {v["projector"] for v in full} == {"mlp", "2mlp", "linear"}
    assert {tuple(v["pool"]) for v in full} == {(1, 1), (2, 2), (3, 3), (4, 4)}
    # both official layer choices (CLIP's and the other encoders', train_captioner.py) and three others
    assert {tuple(v["vit_layers"]) for v in full} == {(-2, -9), (-3, -9), (-1,), (-2,), (-3, -6)}
    assert ALL_VARIANTS[ablations.BASE_NAME] == dict(ablations.BASE, name=ablations.BASE_NAME)
    for arg in ("reduced", *ablations.AXES, "full"):
        assert len(ablations.get_config(arg).seeds) >= 3
    # the axes' sweeps together are the full sweep, each with the base first and the full sweep's budget
    full_cfg = ablations.get_config("full")
    axes = {arg: ablations.get_config(arg) for arg in ablations.AXES}
    assert set().union(*({v["name"] for v in c.variants} for c in axes.values())) == set(ALL_VARIANTS)
    for c in axes.values():
        assert c.variants[0]["name"] == ablations.BASE_NAME
        assert (c.stage1_steps, c.stage2_steps, c.eval_examples, c.gain_examples, c.seeds) == (
            full_cfg.stage1_steps, full_cfg.stage2_steps, full_cfg.eval_examples, full_cfg.gain_examples,
            full_cfg.seeds)
    tokens = ablations.get_config("tokens")
    assert (tokens.stage1_steps, tokens.stage2_steps, tokens.eval_examples) == (-1, -1, 64)
    assert sorted(ablate_pooling.model_stats(ablate_pooling.variant_config(tokens, v).model)["image_tokens"]
                  for v in tokens.variants) == [4, 16, 64]
    with pytest.raises(ValueError, match="quick"):
        ablations.get_config("medium")


@pytest.mark.parametrize("name", list(ALL_VARIANTS))
def test_variant_builds_and_preprocessor_agrees_with_connector(name):
    sweep = ablations.get_config("full")
    cfg = ablate_pooling.variant_config(sweep, ALL_VARIANTS[name])
    m = cfg.model
    stats = ablate_pooling.model_stats(m)
    gh, gw = config_lib.patch_grid(m)
    ph, pw = ALL_VARIANTS[name]["pool"]
    assert stats["image_tokens"] == -(-gh // ph) * -(-gw // pw)
    # the preprocessor's token layout has exactly one slot per pooled token the connector produces
    special = SpecialIds(*range(m.llm.vocab_size, m.llm.vocab_size + 5))
    idx = ImageProcessor(m, special)(np.zeros((112, 112, 3), np.uint8)).input_idx
    assert idx.shape == (1, stats["image_tokens"]) and (idx >= 0).all()
    x = jax.ShapeDtypeStruct((1, 1, gh * gw, m.vit.d_model * len(m.vit_layers)), np.float32)
    masks = jax.ShapeDtypeStruct((1, 1, gh * gw), np.float32)
    out = jax.eval_shape(lambda x, mk, k: Connector(m).init_with_output(k, x, mk)[0], x, masks, jax.random.key(0))
    assert out.shape == (1, 1, stats["image_tokens"], m.llm.d_model)
    # the whole model traces with the variant's connector
    inputs = dummy_inputs(m, seq_len=8, crops=1)
    logits, _ = jax.eval_shape(lambda k: Molmo(m).init_with_output(k, **inputs), jax.random.key(0))
    assert logits.shape[:2] == (1, 8)


def test_unknown_pooling_is_rejected_with_the_known_names():
    sweep = ablations.get_config("quick")
    bad = ablations.variant("bad", pooling="max_pool")
    with pytest.raises(config_lib.ConfigError) as err:
        ablate_pooling.variant_config(sweep, bad)
    message = str(err.value)
    assert "connector.pooling='max_pool'" in message
    for known in ("attention_meanq", "attention", "attention_2wide", "stack", "none"):
        assert repr(known) in message
    with pytest.raises(config_lib.ConfigError, match="'none' needs connector.pooling_h"):
        ablate_pooling.variant_config(sweep, ablations.variant("bad", pooling="none"))
    with pytest.raises(config_lib.ConfigError, match="'2mlp'"):
        ablate_pooling.variant_config(sweep, ablations.variant("bad", projector="2mlp"))
    with pytest.raises(ValueError, match="unknown variants"):
        ablate_pooling.run_sweep(sweep, "/nonexistent", ("nope",))


def test_registered_pooling_needs_only_a_function_and_a_config_value(monkeypatch):
    from molmo_jax.models import connector
    monkeypatch.setattr(connector, "POOLINGS", dict(connector.POOLINGS))
    connector.register_pooling("max", lambda cfg, name: MaxPool(cfg, name=name))
    cfg = ablate_pooling.variant_config(ablations.get_config("quick"), ablations.variant("max_2x2", pooling="max"))
    assert ablate_pooling.model_stats(cfg.model)["image_tokens"] == 16
    m = cfg.model
    x = jax.random.normal(jax.random.key(1), (1, 1, 64, m.vit.d_model * len(m.vit_layers)))
    params = Connector(m).init(jax.random.key(0), x, jnp.ones((1, 1, 64)))
    out, variables = Connector(m).apply(params, x, jnp.ones((1, 1, 64)), mutable=["intermediates"])
    assert out.shape == (1, 1, 16, m.llm.d_model)
    pooled = np.asarray(variables["intermediates"]["pooled_features"][0])
    np.testing.assert_allclose(pooled[0, 0, 0], np.asarray(x)[0, 0, [0, 1, 8, 9]].max(0), rtol=1e-6)


class MaxPool(nn.Module):
    """The README's example of a new pooling: the max over each window, float[N, k, C] -> float[N, C]."""
    cfg: object

    def __call__(self, windows):
        return windows.max(axis=1)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """A persistent XLA cache for this module only, so the determinism rerun reuses the first run's
    compiled programs (identical configs give identical programs); restored afterwards."""
    from jax._src import compilation_cache
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {name: getattr(jax.config, name) for name in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("xla_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    compilation_cache.reset_cache()
    yield
    for name, value in old.items():
        jax.config.update(name, value)
    compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, compile_cache):
    workdir = tmp_path_factory.mktemp("ablate")
    sweep = tiny_sweep()
    results = ablate_pooling.run_sweep(sweep, workdir, ("meanq_2x2",))
    return sweep, workdir, results


def test_variant_trains_evaluates_writes_outputs_and_resumes(first_run, tmp_path):
    sweep, workdir, (result,) = first_run
    assert result["name"] == "meanq_2x2" and result["seed"] == 0 and not result["resumed"]
    assert result["timing"]["stage2"]["steps_run"] == 2 and "stage1" not in result["timing"]
    # stage 1 is not trained: no caption columns; every other column is there
    assert ablate_pooling.columns_of([result]) == [c for c in ablate_pooling.COLUMNS if not c.startswith("caption_")]
    for column in ablate_pooling.columns_of([result]):
        assert np.isfinite(result[column]), column
    assert all(0 <= result[c] <= 1 for c, *_ in ablate_pooling.METRICS)
    for task, r in result["answer_losses"].items():  # the gain columns are image_gain's, per task
        assert result[f"{task}_gain"] == r["swapped"] - r["own"] and r["examples"] == 2, task
    assert result["image_tokens"] == 16 and result["pooled_dim"] == 64
    assert 16 <= result["image_tokens_per_row"] <= 16 * lite_pack_crops()  # 1..pack_crops images per row
    run_dir = workdir / "meanq_2x2" / "seed0"
    assert (run_dir / "stage2" / "curves.png").exists()
    assert json.loads((run_dir / "result.json").read_text())["fingerprint"] == result["fingerprint"]
    # a rerun loads the finished variant instead of training it
    (again,) = ablate_pooling.run_sweep(sweep, workdir, ("meanq_2x2",))
    assert again["resumed"] and again["count_acc"] == result["count_acc"]
    # another budget is another config: refused rather than silently mixed
    with pytest.raises(RuntimeError, match="another config"):
        ablate_pooling.run_sweep(tiny_sweep(stage2_steps=3), workdir, ("meanq_2x2",))
    # outputs of two seeds of two variants: the real run plus shifted copies of it
    runs = [result] + [dict(result, seed=seed, name=name, count_acc=result["count_acc"] + shift)
                       for seed, name, shift in ((1, "meanq_2x2", 0.1), (0, "other", 0.2), (1, "other", 0.4))]
    out = tmp_path / "results" / "table"
    ablate_pooling.write_outputs(sweep, runs, out, "python -m experiments.ablate_pooling --arg quick")
    md = out.with_suffix(".md").read_text()
    assert "`python -m experiments.ablate_pooling --arg quick`" in md.splitlines()[2]
    assert "| meanq_2x2 | attention_meanq | 2x2 | mlp |" in md
    assert all(ablate_pooling.TITLES[c] in md for c in ablate_pooling.columns_of([result]))
    stored = json.loads(out.with_suffix(".json").read_text())
    assert stored["command"] == "python -m experiments.ablate_pooling --arg quick" and stored["commit"]
    assert [r["name"] for r in stored["summary"]] == ["meanq_2x2", "other"]
    other = stored["summary"][1]["difference"]["count_acc"]  # paired: +0.2 and +0.3
    assert other["n"] == 2 and other["mean"] == pytest.approx(0.25)
    assert other["ci95"] == pytest.approx(12.7062 * 0.05, rel=1e-4)  # sd 0.0707 / sqrt(2) = 0.05
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_reuse_takes_stored_runs_with_the_same_configs(first_run, tmp_path):
    sweep, _, (result,) = first_run
    out = tmp_path / "stored"
    ablate_pooling.write_outputs(sweep, [result], out, "python -m experiments.ablate_pooling --arg quick")
    reuse = ablate_pooling.load_reusable([out.with_suffix(".json")])
    (taken,) = ablate_pooling.run_sweep(sweep, tmp_path / "other", ("meanq_2x2",), reuse)
    assert taken["resumed"] and taken["reused_from"] == "stored.json" and taken["commit"] == result["commit"]
    assert taken["count_acc"] == result["count_acc"]
    assert not (tmp_path / "other" / "meanq_2x2").exists()  # nothing trained
    assert "1 runs reused from stored.json" in ablate_pooling.reused_line([taken])
    assert ablate_pooling.reused_line([result]) == ""
    # another budget has another fingerprint: not taken (the first seed of it would train, so stop at the check)
    other = tiny_sweep(stage2_steps=3)
    assert ablate_pooling.fingerprint(other, ablate_pooling.variant_configs(other, other.variants[0])) not in reuse
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not an ablate_pooling result"):
        ablate_pooling.load_reusable([tmp_path / "bad.json"])


def test_sweep_is_deterministic(first_run, tmp_path):
    sweep, _, (result,) = first_run
    (again,) = ablate_pooling.run_sweep(sweep, tmp_path, ("meanq_2x2",))
    assert not again["resumed"]
    for key in ("final_train_loss", *ablate_pooling.columns_of([result])):
        assert again[key] == result[key], key
    for task, r in result["eval"].items():
        assert again["eval"][task]["metrics"] == r["metrics"], task
    predictions = [json.loads((d / "meanq_2x2" / "seed0" / "eval" / "synthetic_clocks.json").read_text())["predictions"]
                   for d in (first_run[1], tmp_path)]
    assert [p["prediction"] for p in predictions[0]] == [p["prediction"] for p in predictions[1]]


def lite_pack_crops() -> int:
    from molmo_jax.recipes import stage2
    return stage2.get_config("lite").data.pack_crops


def test_interval_and_paired_difference_match_hand_values():
    # three seeds: t(0.975, 2) = 4.3027; the difference is paired only over the seeds both ran
    assert ablate_pooling.interval([0.2, 0.4, 0.6]) == pytest.approx(
        {"mean": 0.4, "ci95": 4.302653 * 0.2 / math.sqrt(3), "n": 3}, rel=1e-5)
    assert ablate_pooling.interval([0.5]) == {"mean": 0.5, "ci95": None, "n": 1}
    runs = [{"name": name, "seed": seed, "variant": {}, "image_tokens": 16, "pooled_dim": 64,
             "connector_params": 1, "step_seconds": 0.1, "image_tokens_per_row": 40.0, "final_train_loss": 1.0,
             **{c: value + seed for c in ablate_pooling.COLUMNS}}
            for name, value, seeds in (("meanq_2x2", 0.0, (0, 1, 2)), ("b", 0.5, (0, 1))) for seed in seeds]
    base, b = ablate_pooling.summarize(runs)
    assert base["difference"]["count_acc"] is None and base["metrics"]["count_acc"]["n"] == 3
    assert b["difference"]["point_f1"] == {"mean": 0.5, "ci95": 0.0, "n": 2}


RESULTS = Path(__file__).parents[1] / "experiments" / "results"
STORED = sorted(p.stem.removeprefix("ablate_pooling_") for p in RESULTS.glob("ablate_pooling_*.json"))


@pytest.mark.parametrize("arg", STORED)
def test_stored_sweep_has_the_columns_the_readme_quotes(arg):
    """The README's "Ablate the connector" blocks are tools/readme_tables.py's renderings of the stored JSONs
    (tests/test_readme.py checks they are current): every cell they quote must be in the JSON, made by the
    documented command from the current sweep config, every (variant, seed) finished."""
    stored = json.loads((RESULTS / f"ablate_pooling_{arg}.json").read_text())
    assert stored["commit"] != "unknown" and "+dirty" not in stored["commit"]
    assert stored["command"].startswith(f"python -m experiments.ablate_pooling --arg {arg}")
    current = json.loads(json.dumps(ablations.get_config(arg).to_dict()))
    assert stored["sweep"] == current, f"stale: rerun the README's --arg {arg} command"
    names = [v["name"] for v in current["variants"]]
    assert [r["name"] for r in stored["summary"]] == names
    assert sorted((r["name"], r["seed"]) for r in stored["runs"]) == sorted(
        (name, seed) for name in names for seed in current["seeds"])
    assert all(r["seconds"] > 0 for r in stored["runs"])
    generated = ({c for c, *_ in ablate_pooling.METRICS} if current["eval_examples"] and current["stage2_steps"]
                 else set())
    assert set(stored["majority_baseline"]) == generated
    columns = ablate_pooling.columns_of(stored["summary"])
    stages = ablate_pooling.trained_stages(ablations.get_config(arg))
    assert set(columns) == generated | {f"{task}_{kind}" for task, _, stage in image_gain.TASKS if stage in stages
                                        for kind in ("loss", "gain")}
    for row in stored["summary"]:
        assert len(row["seeds"]) >= 3, row["name"]
        for key in ("step_seconds", "image_tokens_per_row", *columns):
            assert row["metrics"][key]["ci95"] is not None, (row["name"], key)
        for column in columns:
            assert (row["difference"][column] is None) == (row["name"] == ablations.BASE_NAME)
            if row["name"] != ablations.BASE_NAME:
                assert row["difference"][column]["n"] == 3 and row["difference"][column]["ci95"] is not None

    readme_tables = _readme_tables()
    block = readme_tables.ablation_table(f"ablate_pooling_{arg}")
    table_rows = [line for line in block.splitlines() if line.startswith("| ")]
    for name in names:  # a row in all three tables but the base's, which has no difference row
        assert sum(line.startswith(f"| {name} |") for line in table_rows) == (2 if name == ablations.BASE_NAME else 3)
    assert all(ablate_pooling.TITLES[c] in block for c in columns)
    assert stored["commit"] in block and stored["command"] in block
    if arg in ablations.AXES:  # in the axes' table, each variant but the base once
        axes = readme_tables.ablation_axes_table()
        assert all(ablate_pooling.short_title(c) in axes for c in readme_tables.AXES_COLUMNS)
        for name in names[1:]:
            assert sum(line.startswith(f"| {name} |") for line in axes.splitlines()) == 1, name
        assert stored["commit"] in axes


def _readme_tables():
    sys.path.insert(0, str(RESULTS.parents[1] / "tools"))
    import readme_tables
    return readme_tables


def test_stored_reduced_sweep_reads_as_the_readme_says():
    """The README reads the reduced sweep as image tokens per crop 64 / 16 / 4 and, at 16, the first patch vs
    the mean as the pooling query; its generated block is in the README."""
    stored = json.loads((RESULTS / "ablate_pooling_reduced.json").read_text())
    assert sorted(r["image_tokens"] for r in stored["summary"]) == [4, 16, 16, 64]
    assert {r["variant"]["pooling"] for r in stored["summary"] if r["image_tokens"] == 16} == {"attention_meanq",
                                                                                               "attention"}
    readme = (RESULTS.parents[1] / "README.md").read_text()
    for name in ("ablate_pooling_reduced", "ablate_pooling_tokens", "ablate_pooling_axes"):
        assert f"<!-- generated: {name} (tools/readme_tables.py) -->" in readme


@pytest.mark.parametrize("arg", STORED)
def test_stored_runs_were_made_with_the_current_configs(arg):
    """Every stored run's fingerprint (its stage configs and evaluation settings) is what the current code
    builds: a change to the PixMo-lite recipe or the model defaults makes the stored results stale."""
    stored = json.loads((RESULTS / f"ablate_pooling_{arg}.json").read_text())
    sweep = ablations.get_config(arg)
    variants = {v["name"]: v for v in sweep.variants}
    for run in stored["runs"]:
        cfgs = ablate_pooling.variant_configs(sweep, variants[run["name"]], run["seed"])
        assert run["fingerprint"] == ablate_pooling.fingerprint(sweep, cfgs), (
            f"{run['name']} seed {run['seed']}: stale, rerun the README's --arg {arg} command")
