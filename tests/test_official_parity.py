"""Parity with the official allenai/molmo PyTorch model on every reference fixture and case.

Fed the stored preprocessed arrays, the JAX model must reproduce the official ViT features of the used
layers, pooled and projected image features, LLM input embeddings, per-layer hidden states, logits and
teacher-forced loss in float32 (rtol = atol = 1e-4, the fixtures README's guidance).
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from fixture_cases import ROOT, case_id, cases, load_arrays, no_mask_variant
from molmo_jax import io, plan
from molmo_jax.models.molmo import Molmo, dummy_inputs
from molmo_jax.preprocess import Preprocessor
from molmo_jax.tokenizer import load_tokenizer
from data_pipelines.random_batches import make_batch
from molmo_jax.train.loss import cross_entropy

TOL = dict(rtol=1e-4, atol=1e-4)
IMAGE_CASES = cases(lambda a: "images" in a)
SINGLE_CASES = cases(lambda a: "input_tokens" in a)
BATCH_CASES = cases(lambda a: "input_ids" in a)
TRAIN_CASES = cases(lambda a: "train_input_tokens" in a)


@functools.lru_cache(maxsize=None)
def load_model(fixture: str):
    cfg, params = io.load(ROOT / fixture)
    model = Molmo(cfg)
    fn = jax.jit(lambda p, kw: model.apply({"params": p}, **kw, mutable=["intermediates"]))
    return cfg, params, fn


def model_inputs(arrays: dict[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    kw = {"input_ids": arrays[f"{prefix}input_tokens"][None].astype(np.int32)}
    if "images" in arrays:
        kw.update(images=arrays["images"][None], image_input_idx=arrays[f"{prefix}image_input_idx"][None])
    if "image_masks" in arrays:  # a model without a padding embedding has none
        kw["image_masks"] = arrays["image_masks"][None]
    return kw


@functools.lru_cache(maxsize=None)
def run_case(fixture: str, case: str):
    _, params, fn = load_model(fixture)
    logits, state = fn(params, model_inputs(load_arrays(fixture, case)))
    return np.asarray(logits[0]), jax.tree.map(np.asarray, state["intermediates"])


def image_layer_keys(arrays) -> list[str]:
    """vit_hidden_layer<k> keys in vit_layers order (as the fixture stores them: -2 first)."""
    return [k for k in arrays if k.startswith("vit_hidden_layer")]


@pytest.mark.parametrize("pair", IMAGE_CASES, ids=case_id)
def test_vit_features(pair):
    arrays = load_arrays(*pair)
    cfg, _, _ = load_model(pair[0])
    _, inter = run_case(*pair)
    features = inter["vit_features"][0]  # [len(vit_layers), crops, tokens, width]
    n = cfg.vit.n_layers
    for i, layer in enumerate(cfg.vit_layers):
        np.testing.assert_allclose(features[i], arrays[f"vit_hidden_layer{layer % n}"], **TOL)
    assert len(cfg.vit_layers) == len(image_layer_keys(arrays))


@pytest.mark.parametrize("pair", IMAGE_CASES, ids=case_id)
def test_pooled_features(pair):
    _, inter = run_case(*pair)
    np.testing.assert_allclose(inter["connector"]["pooled_features"][0][0], load_arrays(*pair)["pooled_features"],
                               **TOL)


@pytest.mark.parametrize("pair", IMAGE_CASES, ids=case_id)
def test_image_features(pair):
    _, inter = run_case(*pair)
    np.testing.assert_allclose(inter["image_features"][0][0], load_arrays(*pair)["image_features"], **TOL)


@pytest.mark.parametrize("pair", SINGLE_CASES, ids=case_id)
def test_input_embeddings(pair):
    _, inter = run_case(*pair)
    np.testing.assert_allclose(inter["input_embeddings"][0][0], load_arrays(*pair)["llm_input_embeddings"], **TOL)


@pytest.mark.parametrize("pair", SINGLE_CASES, ids=case_id)
def test_hidden_states(pair):
    """Official hidden states: the input of every block, then the output after the final norm."""
    _, inter = run_case(*pair)
    expected = load_arrays(*pair)["llm_hidden_states"]
    ours = np.concatenate([inter["llm"]["blocks"]["block_input"][0][:, 0],
                           inter["llm"]["final_hidden"][0]], axis=0)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, **TOL)


@pytest.mark.parametrize("pair", SINGLE_CASES, ids=case_id)
def test_logits(pair):
    logits, _ = run_case(*pair)
    np.testing.assert_allclose(logits, load_arrays(*pair)["logits"], **TOL)


@pytest.mark.parametrize("pair", TRAIN_CASES, ids=case_id)
def test_teacher_forced_loss(pair):
    arrays = load_arrays(*pair)
    _, params, fn = load_model(pair[0])
    logits, _ = fn(params, model_inputs(arrays, prefix="train_"))
    per_token, total = cross_entropy(logits, arrays["train_target_tokens"][None],
                                     arrays["train_loss_masks"][None])
    np.testing.assert_allclose(np.asarray(per_token[0]), arrays["train_ce_per_token"], **TOL)
    np.testing.assert_allclose(float(per_token.sum() / total), float(arrays["train_loss_mean"]), **TOL)


def batch_images(fixture: str, arrays) -> np.ndarray:
    """The padded batch stores no images: row 0 holds the image case's crops, other rows are all -1."""
    image_case = next(c for f, c in IMAGE_CASES if f == fixture and
                      load_arrays(f, c)["image_input_idx"].shape == arrays["image_input_idx"].shape[1:])
    crops = load_arrays(fixture, image_case)["images"]
    images = np.full((arrays["input_ids"].shape[0],) + crops.shape, -1, np.float32)
    images[0] = crops
    return images


@pytest.mark.parametrize("pair", BATCH_CASES, ids=case_id)
def test_logits_padded_batch(pair):
    """A right-padded batch (ids -1) as the official evaluator runs it: derived masks and positions."""
    arrays = load_arrays(*pair)
    _, params, fn = load_model(pair[0])
    logits, _ = fn(params, dict(input_ids=arrays["input_ids"].astype(np.int32),
                                images=batch_images(pair[0], arrays), image_masks=arrays["image_masks"],
                                image_input_idx=arrays["image_input_idx"]))
    np.testing.assert_allclose(np.asarray(logits), arrays["logits"], **TOL)


@pytest.fixture(scope="module")
def no_mask_fixture(tmp_path_factory):
    return no_mask_variant("qwen2_7b_d", tmp_path_factory.mktemp("no_mask") / "qwen2_7b_d_no_pad_embed")


def test_model_without_image_masks(no_mask_fixture):
    """`image_padding_embed = None`: the preprocessor emits no image masks and every consumer runs without
    them. ViT features stay the official ones; the rest equals the fixture model with a zero pad_embed
    (the official connector then adds nothing), which differs from the official logits with it."""
    cfg, params = io.load(no_mask_fixture)
    assert cfg.connector.padding_embed is None and "pad_embed" not in params["connector"]
    with np.load(no_mask_fixture / "cases" / "pointing" / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    assert "image_masks" not in arrays
    tok = load_tokenizer(str(no_mask_fixture / "tokenizer.json"), cfg.llm.vocab_size)
    case = no_mask_fixture / "cases" / "pointing"
    ours = Preprocessor(cfg, tok)(str(case / "image.png"), (case / "prompt.txt").read_text())
    assert "image_masks" not in ours
    for key in ("input_tokens", "image_input_idx"):
        np.testing.assert_array_equal(ours[key], arrays[key])

    logits, state = jax.jit(lambda p, kw: Molmo(cfg).apply({"params": p}, **kw, mutable=["intermediates"]))(
        params, model_inputs(arrays))
    for i, layer in enumerate(cfg.vit_layers):
        np.testing.assert_allclose(state["intermediates"]["vit_features"][0][i],
                                   arrays[f"vit_hidden_layer{layer % cfg.vit.n_layers}"], **TOL)
    _, base_params, fn = load_model("qwen2_7b_d")
    zero_pad = {**base_params, "connector": {**base_params["connector"],
                                             "pad_embed": np.zeros_like(base_params["connector"]["pad_embed"])}}
    expected, _ = fn(zero_pad, model_inputs(load_arrays("qwen2_7b_d", "pointing")))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(expected), **TOL)
    assert not np.allclose(np.asarray(expected[0]), load_arrays("qwen2_7b_d", "pointing")["logits"], **TOL)

    batch = make_batch(cfg, np.random.default_rng(0), 2, 32, crops=1)
    assert "image_masks" not in batch and "image_masks" not in dummy_inputs(cfg)
    assert "image_masks" not in plan.batch_shapes(cfg, 2, 32, 1)
