"""Checkpoint import/export in both official formats: exact round trips, release-format logits, errors."""
from __future__ import annotations

import functools
import json
import re

import jax
import numpy as np
import pytest

from fixture_cases import HF_RELEASE_ROOT, ROOT
from safetensors.numpy import load_file

from molmo_jax import checkpoints, config, io
from molmo_jax.checkpoints import CheckpointError
from molmo_jax.models.molmo import Molmo

NATIVE = ["qwen2_7b_d", "olmo_7b_o", "olmoe_1b"]
RELEASE = {"molmo_7b_d": "qwen2_7b_d", "molmoe_1b": "olmoe_1b"}  # release dir -> same weights, native dir


def release_vision(name: str) -> dict:
    return json.loads((HF_RELEASE_ROOT / name / "fixture_meta.json").read_text())["vision_backbone_used_here"]


@functools.lru_cache(maxsize=None)
def load_native(name: str):
    return io.load(ROOT / name)


@functools.lru_cache(maxsize=None)
def load_release(name: str):
    return io.load(HF_RELEASE_ROOT / name, vision=release_vision(name))


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("name", NATIVE)
def test_native_export_is_bit_exact(name, tmp_path):
    cfg, params = load_native(name)
    io.save(params, cfg, io.load_tokenizer(ROOT / name, cfg), tmp_path, "native")
    original = load_file(ROOT / name / "weights.safetensors")
    exported = load_file(tmp_path / "weights.safetensors")
    assert sorted(original) == sorted(exported)
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    _, reloaded = io.load(tmp_path, cfg=cfg)
    assert_trees_equal(reloaded, params)


@pytest.mark.parametrize("release,native", RELEASE.items())
def test_release_loads_the_same_params_as_native(release, native):
    assert_trees_equal(load_release(release)[1], load_native(native)[1])


@pytest.mark.parametrize("release", RELEASE)
@pytest.mark.parametrize("case", ["text_only", "image"])
def test_release_logits(release, case):
    cfg, params = load_release(release)
    case_dir = sorted(p for p in (HF_RELEASE_ROOT / release / "cases").iterdir()
                      if (p.name == "text_only") == (case == "text_only"))[0]
    with np.load(case_dir / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    kw = {}
    if "images" in arrays:
        kw = dict(images=arrays["images"][None], image_masks=arrays["image_masks"][None],
                  image_input_idx=arrays["image_input_idx"][None])
    logits = Molmo(cfg).apply({"params": params}, arrays["input_tokens"][None].astype(np.int32), **kw)
    np.testing.assert_allclose(np.asarray(logits[0]), arrays["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("release", RELEASE)
def test_release_export_is_bit_exact(release, tmp_path):
    cfg, params = load_release(release)
    io.save(params, cfg, io.load_tokenizer(HF_RELEASE_ROOT / release, cfg), tmp_path, "hf_release",
            max_shard_bytes=1 << 20)
    original = read_all(sorted((HF_RELEASE_ROOT / release).glob("model-*.safetensors")))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    exported = read_all(sorted({tmp_path / f for f in index["weight_map"].values()}))
    assert len(index["weight_map"]) == len(original) and len({*index["weight_map"].values()}) > 1
    assert sorted(original) == sorted(exported)
    for k in original:
        np.testing.assert_array_equal(exported[k], original[k], err_msg=k)
    _, reloaded = io.load(tmp_path)  # the export's molmo_jax.json / config.json give the vision tower
    assert_trees_equal(reloaded, params)


def read_all(files) -> dict[str, np.ndarray]:
    return {k: x for f in files for k, x in load_file(f).items()}


def native_tensors(name: str) -> dict[str, np.ndarray]:
    return load_file(ROOT / name / "weights.safetensors")


def convert(tensors, cfg):
    return checkpoints.native_to_params(tensors.__getitem__, tensors.keys(), cfg)


def test_missing_and_unexpected_tensors_are_listed():
    cfg, _ = load_native("qwen2_7b_d")
    tensors = native_tensors("qwen2_7b_d")
    del tensors["transformer.blocks.1.ff_out.weight"]
    tensors["transformer.blocks.7.ff_out.weight"] = np.zeros((64, 128), np.float32)
    with pytest.raises(CheckpointError, match=r"missing tensors \['transformer.blocks.1.ff_out.weight'\]; "
                                              r"unexpected tensors \['transformer.blocks.7.ff_out.weight'\]"):
        convert(tensors, cfg)


@pytest.mark.parametrize("key,shape", [
    ("transformer.blocks.0.ff_out.weight", (64, 100)),
    ("vision_backbone.image_pooling_2d.wq.weight", (64, 64)),
    ("transformer.blocks.1.att_proj.weight", (130, 64)),
])
def test_shape_mismatch_names_tensor_and_both_shapes(key, shape):
    cfg, _ = load_native("qwen2_7b_d")
    tensors = native_tensors("qwen2_7b_d")
    good = tensors[key].shape
    assert tuple(good) != tuple(shape)
    tensors[key] = np.zeros(shape, np.float32)
    message = f"tensor {key}: checkpoint shape [{tuple(shape)}] does not match the model's [{tuple(good)}]"
    with pytest.raises(CheckpointError, match=re.escape(message)):
        convert(tensors, cfg)


def test_missing_directory_files(tmp_path):
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        io.load(tmp_path)


@pytest.mark.parametrize("name", NATIVE)
def test_official_config_round_trip(name):
    cfg, _ = load_native(name)
    again = config.from_official(config.to_official(cfg), name=cfg.name)
    assert again.to_dict() == cfg.to_dict()
