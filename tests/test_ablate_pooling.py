"""The connector ablation sweep (experiments/ablate_pooling.py, experiments/ablations.py).

Every variant of both sweeps is checked structurally without compiling (config, preprocessor token layout
vs connector output, the traced forward of the whole model); the train + evaluate pipeline runs for real on
a tiny budget (2 steps, 2 held-out examples per task, 2 new tokens) and twice for determinism.
"""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablate_pooling, ablations
from molmo_jax import config as config_lib
from molmo_jax.models.connector import Connector
from molmo_jax.models.molmo import Molmo, dummy_inputs
from molmo_jax.preprocess import ImageProcessor
from molmo_jax.tokenizer import SpecialIds

ALL_VARIANTS = {v["name"]: v for v in ablations.get_config("full").variants}


def tiny_sweep(**overrides):
    sweep = ablations.get_config("quick")
    sweep.update({**dict(stage1_steps=0, stage2_steps=2, eval_examples=2, eval_batch=2, max_new_tokens=2,
                         caption_batches=1), **overrides})
    return sweep


def test_quick_sweep_is_a_subset_and_covers_every_official_type():
    quick = [v["name"] for v in ablations.get_config("quick").variants]
    assert set(quick) <= set(ALL_VARIANTS) and len(set(quick)) == len(quick)
    full = ALL_VARIANTS.values()
    assert {v["pooling"] for v in full} == {"attention_meanq", "attention", "attention_2wide", "stack", "none"}
    assert {v["projector"] for v in full} == {"mlp", "2mlp", "linear"}
    assert {tuple(v["pool"]) for v in full} == {(1, 1), (2, 2), (3, 3)}
    assert {tuple(v["vit_layers"]) for v in full} == {(-2, -9), (-1,)}
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
    x = jax.ShapeDtypeStruct((1, 1, gh * gw, m.vit.width * len(m.vit_layers)), np.float32)
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
    x = jax.random.normal(jax.random.key(1), (1, 1, 64, m.vit.width * len(m.vit_layers)))
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
    assert result["name"] == "meanq_2x2" and not result["resumed"]
    assert result["timing"]["stage2"]["steps_run"] == 2 and "stage1" not in result["timing"]
    for column in ablate_pooling.COLUMNS:
        assert np.isfinite(result[column]), column
    assert all(0 <= result[c] <= 1 for c, *_ in ablate_pooling.METRICS)
    assert result["image_tokens"] == 16 and result["pooled_dim"] == 64
    assert (workdir / "meanq_2x2" / "stage2" / "curves.png").exists()
    assert json.loads((workdir / "meanq_2x2" / "result.json").read_text())["fingerprint"] == result["fingerprint"]
    # a rerun loads the finished variant instead of training it
    (again,) = ablate_pooling.run_sweep(sweep, workdir, ("meanq_2x2",))
    assert again["resumed"] and again["count_acc"] == result["count_acc"]
    # another budget is another config: refused rather than silently mixed
    with pytest.raises(RuntimeError, match="another config"):
        ablate_pooling.run_sweep(tiny_sweep(stage2_steps=3), workdir, ("meanq_2x2",))
    out = tmp_path / "results" / "table"
    ablate_pooling.write_outputs(sweep, [result], out, "python -m experiments.ablate_pooling --arg quick")
    md = out.with_suffix(".md").read_text()
    assert "`python -m experiments.ablate_pooling --arg quick`" in md.splitlines()[2]
    assert "| meanq_2x2 | attention_meanq | 2x2 | mlp |" in md
    assert json.loads(out.with_suffix(".json").read_text())["results"][0]["name"] == "meanq_2x2"
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_sweep_is_deterministic(first_run, tmp_path):
    sweep, _, (result,) = first_run
    (again,) = ablate_pooling.run_sweep(sweep, tmp_path, ("meanq_2x2",))
    assert not again["resumed"]
    for key in ("final_train_loss",) + ablate_pooling.COLUMNS:
        assert again[key] == result[key], key
    for task, r in result["eval"].items():
        assert again["eval"][task]["metrics"] == r["metrics"], task
    predictions = [json.loads((d / "meanq_2x2" / "eval" / "synthetic_clocks.json").read_text())["predictions"]
                   for d in (first_run[1], tmp_path)]
    assert [p["prediction"] for p in predictions[0]] == [p["prediction"] for p in predictions[1]]
