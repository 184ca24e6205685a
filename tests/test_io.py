"""Checkpoint I/O (`molmo_jax.io`): every export format reloads as the same model, the HF-release export has
the release's files and fields, a training run exports, and bad directories fail in one line naming them."""
from __future__ import annotations

import functools
import itertools
import json
import shutil

import jax
import ml_collections
import numpy as np
import pytest

import molmo_jax
from fixture_cases import HF_RELEASE_ROOT, ROOT
from molmo_jax import cli, io
from molmo_jax.checkpoints import CheckpointError
from molmo_jax.train import checkpointing, trainer

FAMILIES = ("qwen2_7b_d", "olmo_7b_o", "olmoe_1b")
PAIRS = list(itertools.product(io.EXPORT_FORMATS, repeat=2))


@functools.lru_cache(maxsize=None)
def original(family: str) -> molmo_jax.MolmoBundle:
    return molmo_jax.load(ROOT / family)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """(family, format) -> that format's export of the official fixture, written once."""
    root = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(family: str, fmt: str):
        if (family, fmt) not in cache:
            cache[family, fmt] = root / f"{family}-{fmt}"
            molmo_jax.save(original(family), cache[family, fmt], fmt)
        return cache[family, fmt]

    return get


def model_fields(cfg) -> dict:
    """Every config field but the name (which is the directory's name)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "name"}


def assert_same_model(a: molmo_jax.MolmoBundle, b: molmo_jax.MolmoBundle):
    assert model_fields(a.cfg) == model_fields(b.cfg)
    assert jax.tree.structure(a.params) == jax.tree.structure(b.params)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert a.tokenizer.tokenizer.to_str() == b.tokenizer.tokenizer.to_str()
    assert (a.tokenizer.eos_id, a.tokenizer.bos_id) == (b.tokenizer.eos_id, b.tokenizer.bos_id)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("first,second", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_export_round_trip_matrix(family, first, second, exports, tmp_path):
    """official native -> `first` -> load -> `second` -> load: the same config, params and tokenizer."""
    assert io.detect_format(exports(family, first)) == first
    again = molmo_jax.load(exports(family, first))
    assert_same_model(again, original(family))
    molmo_jax.save(again, tmp_path / second, second)
    assert io.detect_format(tmp_path / second) == second
    assert_same_model(molmo_jax.load(tmp_path / second), original(family))


def several_crops_image() -> np.ndarray:
    """A wide image that max_crops=4 tiles 1 x 3 (max_crops=12 would tile it 2 x 4)."""
    return np.random.default_rng(0).integers(0, 256, (500, 900, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", FAMILIES)
def test_hf_release_export_answers_as_the_original(family, exports):
    reloaded = molmo_jax.load(exports(family, "hf_release"))
    assert model_fields(reloaded.cfg) == model_fields(original(family).cfg)
    reloaded.cfg.name = original(family).cfg.name  # the directory's name: equal configs share one compiled program
    image, prompt = several_crops_image(), "Point to the square."
    assert reloaded.preprocessor(image, prompt)["images"].shape[0] == 4  # global view + 1 x 3 crops (12: 9)
    kw = dict(max_new_tokens=4)
    assert reloaded.generate(image, prompt, **kw) == original(family).generate(image, prompt, **kw)


# ----------------------------------------------------------------------------- the release layout

RELEASE_PREPROCESSOR_FIELDS = {  # allenai/Molmo-7B-D-0924 preprocessor_config.json
    "auto_map", "base_image_input_size", "do_normalize", "image_mean", "image_padding_mask", "image_patch_size",
    "image_processor_type", "image_std", "image_token_length_h", "image_token_length_w", "max_crops",
    "overlap_margins", "processor_class"}


@pytest.mark.parametrize("family,release", [("qwen2_7b_d", "molmo_7b_d"), ("olmoe_1b", "molmoe_1b")])
def test_hf_release_export_has_the_release_files_and_fields(family, release, exports):
    out, ref = exports(family, "hf_release"), HF_RELEASE_ROOT / release
    ours, theirs = (json.loads((d / "config.json").read_text()) for d in (out, ref))
    for key in ("auto_map", "architectures", "model_type"):
        assert ours[key] == theirs[key], key
    if family == "olmoe_1b":
        assert ours["image_pooling_2d"] == theirs["image_pooling_2d"] == "attention-meanq"
        for key in ("rope_impl", "rope_full_precision", "float32_attention", "moe_dropless", "moe_mlp_impl"):
            assert ours[key] == theirs[key], key  # the remote defaults differ (rope_impl "cockatoo")
    else:  # every field the release writes, with the release's values where the models agree
        assert set(theirs) - set(ours) == {"transformers_version"}
        same = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "qkv_bias")
        assert {k: ours[k] for k in same} == {k: theirs[k] for k in same}
    assert json.loads((out / "generation_config.json").read_text())["_from_model_config"] is True
    preprocessor = json.loads((out / "preprocessor_config.json").read_text())
    assert set(preprocessor) == RELEASE_PREPROCESSOR_FIELDS
    assert preprocessor["max_crops"] == original(family).cfg.preprocess.max_crops == 4
    assert json.loads((out / "processor_config.json").read_text())["processor_class"] == "MolmoProcessor"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    ref_index = json.loads((ref / "model.safetensors.index.json").read_text())
    assert sorted(index["weight_map"]) == sorted(ref_index["weight_map"])
    assert index["metadata"]["total_size"] == ref_index["metadata"]["total_size"]
    assert (out / "tokenizer.json").read_text() == original(family).tokenizer.tokenizer.to_str()


def test_hf_release_export_in_shards_reloads(tmp_path):
    bundle = original("qwen2_7b_d")
    io.save(bundle.params, bundle.cfg, bundle.tokenizer, tmp_path, "hf_release", max_shard_bytes=1 << 20)
    shards = set(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())
    assert len(shards) == 3 and sorted(p.name for p in tmp_path.glob("model-*")) == sorted(shards)
    assert_same_model(molmo_jax.load(tmp_path), bundle)


# ----------------------------------------------------------------------------- training runs

def write_run(bundle: molmo_jax.MolmoBundle, workdir, step: int = 7):
    """A training run as the trainer leaves it: recorded model files + a Checkpointer step of the state."""
    io.save_run_files(workdir, bundle.cfg, bundle.tokenizer)
    ckpt = checkpointing.Checkpointer(workdir / "checkpoints", every=1, async_save=False)
    replicated = jax.sharding.NamedSharding(molmo_jax.sharding.make_mesh(),
                                            jax.sharding.PartitionSpec())
    ckpt.save(step, {"params": bundle.params, "step": jax.device_put(np.int32(step), replicated)})
    ckpt.wait()
    ckpt.close()


def test_training_run_exports_through_the_cli_and_loads(tmp_path, capsys):
    bundle = original("qwen2_7b_d")
    write_run(bundle, tmp_path / "run")
    for source in ("run", "run/checkpoints", "run/checkpoints/7"):
        assert io.detect_format(tmp_path / source) == "train"
    assert_same_model(molmo_jax.load(tmp_path / "run"), bundle)
    out = tmp_path / "model"
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--to", "hf_release", "--out", str(out)]) == 0
    assert "wrote hf_release model" in capsys.readouterr().out
    assert_same_model(molmo_jax.load(out), bundle)


@pytest.mark.parametrize("fmt", io.EXPORT_FORMATS)
def test_trainer_init_from_reads_every_export(fmt, exports):
    bundle = original("qwen2_7b_d")
    cfg = ml_collections.ConfigDict({"init_from": str(exports("qwen2_7b_d", fmt)), "model": bundle.cfg})
    params = trainer.initial_params(cfg, jax.random.key(0), molmo_jax.sharding.make_mesh())
    jax.tree.map(np.testing.assert_array_equal, params, bundle.params)


def test_cli_formats_are_io_formats():
    assert cli.export.EXPORT_FORMATS == io.EXPORT_FORMATS


# ----------------------------------------------------------------------------- bad input: one line naming the path

def one_line_error(path, match: str):
    with pytest.raises(CheckpointError, match=match) as info:
        molmo_jax.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_no_checkpoint_of_any_kind(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    one_line_error(tmp_path, r"not a checkpoint directory .*notes\.txt")
    assert cli.main(["predict", "--checkpoint", str(tmp_path), "--prompt", "Hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path}: not a checkpoint directory" in err
    one_line_error(tmp_path / "missing", "no such checkpoint directory")


@pytest.mark.parametrize("fmt", io.EXPORT_FORMATS)
def test_half_written_export(fmt, exports, tmp_path):
    copy = shutil.copytree(exports("qwen2_7b_d", fmt), tmp_path / fmt)
    (copy / "config.json").unlink()  # written last: an export killed before it has none
    one_line_error(copy, "half-written export")


def test_release_export_missing_a_shard(tmp_path):
    bundle = original("qwen2_7b_d")
    io.save(bundle.params, bundle.cfg, bundle.tokenizer, tmp_path, "hf_release", max_shard_bytes=1 << 20)
    (tmp_path / "model-00002-of-00003.safetensors").unlink()
    one_line_error(tmp_path, "model-00002-of-00003.safetensors: weight file missing")


@pytest.mark.parametrize("fmt,field,value", [("native", "n_layers", 3), ("hf_release", "num_hidden_layers", 3),
                                             ("orbax", "n_layers", 3), ("hf_release", "intermediate_size", 200)])
def test_config_that_contradicts_the_weights(fmt, field, value, exports, tmp_path):
    copy = shutil.copytree(exports("qwen2_7b_d", fmt), tmp_path / fmt)
    d = json.loads((copy / "config.json").read_text())
    d[field] = value
    (copy / "config.json").write_text(json.dumps(d))
    one_line_error(copy, "missing|does not match|do not match")


def test_corrupt_weight_file(tmp_path):
    copy = shutil.copytree(ROOT / "qwen2_7b_d", tmp_path / "native")
    (copy / "weights.safetensors").write_bytes(b"\x00" * 16)
    one_line_error(copy, "unreadable safetensors file")
