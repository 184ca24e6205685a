"""Parity of molmo_jax.preprocess / tokenizer with the official Molmo preprocessor (fixture arrays).

Every fixture dir and case under $MOLMO_FIXTURES (default tests/fixtures/molmo_ref) is checked: cases with
a prompt.txt through the inference and the training format, the padded batch through collate().
"""
import functools
import json
import os

import numpy as np
import pytest
import torch

from molmo_jax import config as config_lib
from molmo_jax import preprocess, tokenizer

FIXTURES = os.environ.get("MOLMO_FIXTURES", os.path.join(os.path.dirname(__file__), "fixtures", "molmo_ref"))
IMAGE_ATOL = 1e-5
PREPROCESSOR_KEYS = ("input_tokens", "target_tokens", "loss_masks", "position_ids", "images", "image_masks",
                     "image_input_idx")


def _cases(with_prompt: bool):
    out = []
    for fixture in sorted(os.listdir(FIXTURES)):
        cases_dir = os.path.join(FIXTURES, fixture, "cases")
        for case in sorted(os.listdir(cases_dir)) if os.path.isdir(cases_dir) else ():
            has_prompt = os.path.exists(os.path.join(cases_dir, case, "prompt.txt"))
            if has_prompt == with_prompt:
                out.append(pytest.param(fixture, case, id=f"{fixture}/{case}"))
    return out


PROMPT_CASES = _cases(with_prompt=True)
BATCH_CASES = _cases(with_prompt=False)
FIXTURE_NAMES = sorted({p.values[0] for p in PROMPT_CASES + BATCH_CASES})


@functools.lru_cache(maxsize=None)
def _fixture(fixture):
    """(config, Preprocessor) of a fixture dir, tokenizer from its final tokenizer.json."""
    root = os.path.join(FIXTURES, fixture)
    with open(os.path.join(root, "config.json")) as f:
        cfg = config_lib.from_official(json.load(f))
    tok = tokenizer.load_tokenizer(os.path.join(root, "tokenizer.json"), cfg.llm.vocab_size)
    return cfg, preprocess.Preprocessor(cfg, tok)


def _case(fixture, case):
    d = os.path.join(FIXTURES, fixture, "cases", case)
    with open(os.path.join(d, "case.json")) as f:
        meta = json.load(f)
    prompt = open(os.path.join(d, "prompt.txt")).read() if os.path.exists(os.path.join(d, "prompt.txt")) else None
    image = os.path.join(d, "image.png") if os.path.exists(os.path.join(d, "image.png")) else None
    return meta, prompt, image, np.load(os.path.join(d, "arrays.npz"))


def _check(ours, ref, prefix=""):
    """Integer arrays exactly (dtype included), float pixel arrays within IMAGE_ATOL."""
    expected = [k for k in PREPROCESSOR_KEYS if prefix + k in ref.files]
    assert expected, f"no {prefix}* preprocessor arrays in the fixture"
    for key in expected:
        r, o = ref[prefix + key], ours[key]
        assert o.shape == r.shape and o.dtype == r.dtype, (key, o.shape, o.dtype, r.shape, r.dtype)
        if key in ("images", "image_masks"):
            np.testing.assert_allclose(o, r, rtol=0, atol=IMAGE_ATOL, err_msg=key)
        else:
            np.testing.assert_array_equal(o, r, err_msg=key)


@pytest.mark.parametrize("fixture,case", PROMPT_CASES)
def test_inputs(fixture, case):
    cfg, pre = _fixture(fixture)
    meta, prompt, image, ref = _case(fixture, case)
    messages, _ = pre.formatter({"prompt": prompt, "style": "demo"}, False, True, np.random)
    assert messages == meta["formatted_messages_inference"]
    ours = pre(image, prompt)
    assert set(ours) == {k for k in PREPROCESSOR_KEYS if k in ref.files}
    _check(ours, ref)


@pytest.mark.parametrize("fixture,case", PROMPT_CASES)
def test_train_inputs(fixture, case):
    cfg, pre = _fixture(fixture)
    meta, prompt, image, ref = _case(fixture, case)
    messages, _ = pre.formatter({"prompt": prompt, "style": "demo", "text": meta["answer"]}, False, False,
                                np.random)
    assert messages == meta["formatted_messages_train"]
    ours = pre(image, prompt, answer=meta["answer"])
    _check(ours, ref, prefix="train_")


@pytest.mark.parametrize("fixture,case", BATCH_CASES)
def test_collated_batch(fixture, case):
    cfg, pre = _fixture(fixture)
    meta, _, _, ref = _case(fixture, case)
    members = [_case(fixture, m) for m in meta["members"]]
    examples = [pre(image, prompt) for _, prompt, image, _ in members]
    batch = preprocess.collate(examples)
    for key in ("input_ids", "image_masks", "image_input_idx"):
        assert batch[key].shape == ref[key].shape, key
        np.testing.assert_array_equal(batch[key], ref[key], err_msg=key)
    assert batch["input_ids"].dtype == np.int64
    assert tuple(batch["images"].shape) == tuple(meta["images_shape"])
    for row, (_, _, image, member_ref) in zip(batch["images"], members):
        if image is None:
            assert np.all(row == -1)
        else:
            np.testing.assert_allclose(row, member_ref["images"], rtol=0, atol=IMAGE_ATOL)


@pytest.mark.parametrize("fixture", FIXTURE_NAMES)
def test_tokenizer_built_from_base_matches_final(fixture):
    cfg, _ = _fixture(fixture)
    root = os.path.join(FIXTURES, fixture)
    final = tokenizer.load_tokenizer(os.path.join(root, "tokenizer.json"), cfg.llm.vocab_size)
    built = tokenizer.load_tokenizer(os.path.join(root, "base_tokenizer"), cfg.llm.vocab_size)
    with open(os.path.join(root, "fixture_meta.json")) as f:
        meta = json.load(f)
    assert len(built) == len(final) == meta["final_tokenizer_len"]
    v = cfg.llm.vocab_size
    assert [built.special.im_start, built.special.im_end, built.special.im_patch, built.special.im_col,
            built.special.image_prompt] == list(range(v, v + 5))
    assert {k: getattr(built.special, n) for k, n in zip(tokenizer.EXTRA_TOKENS, (
        "im_start", "im_end", "im_patch", "im_col", "image_prompt"))} == meta["special_token_ids"]
    assert built.eos_id == final.eos_id == meta["eos_token_id"]
    assert built.bos_id == meta["bos_token_id_used"]
    text = " User: Point to the <|image|> cup.<im_patch><im_col> |<EXTRA_TOKENS_0>| Ünïcödé 123 <|endoftext|>"
    assert built.encode(text) == final.encode(text)
    assert built.decode(final.encode("a b c")) == "a b c"


@pytest.mark.parametrize("max_crops", [1, 2, 3, 7, 12])
@pytest.mark.parametrize("hw", [(1, 1), (50, 700), (700, 50), (336, 336), (1000, 1500)])
def test_image_input_idx_points_at_patch_tokens(max_crops, hw):
    """Every kept pooled token maps to a distinct <im_patch> position and every <im_patch> is used."""
    base_cfg, base = _fixture(FIXTURE_NAMES[0])
    cfg = base_cfg.copy_and_resolve_references()
    cfg.preprocess.max_crops = max_crops
    pre = preprocess.Preprocessor(cfg, base.tokenizer)
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    out = pre(image, "Describe this image.")
    idx = out["image_input_idx"]
    kept = idx[idx >= 0]
    patch_positions = np.flatnonzero(out["input_tokens"] == pre.tokenizer.special.im_patch)
    np.testing.assert_array_equal(np.sort(kept), patch_positions)
    assert set(np.unique(idx[idx < 0])) <= {preprocess.IGNORE_INDEX}
    assert out["images"].shape[0] == idx.shape[0] == out["image_masks"].shape[0] <= 1 + max_crops
    rows, cols = pre.images.tiling(*hw)
    assert rows * cols <= max_crops and out["images"].shape[0] == 1 + rows * cols


def test_resize_crop_mode():
    """crop_mode="resize": one global view, 144 patch tokens in a 158-token block."""
    cfg = config_lib.from_official(json.load(open(os.path.join(FIXTURES, FIXTURE_NAMES[0], "config.json"))))
    cfg.preprocess.crop_mode = "resize"
    pre = preprocess.Preprocessor(cfg, _fixture(FIXTURE_NAMES[0])[1].tokenizer)
    out = pre(np.full((100, 300, 3), 200, np.uint8), "Describe this image.")
    assert out["images"].shape == (1, 576, 588) and out["image_masks"].shape == (1, 576)
    np.testing.assert_array_equal(np.sort(out["image_input_idx"].ravel()),
                                  np.flatnonzero(out["input_tokens"] == pre.tokenizer.special.im_patch))
    assert 0 < out["image_masks"].mean() < 1  # a 1:3 image leaves padding rows


def _torchvision_resize(image_u8, size, mode, antialias):
    """What torchvision.transforms.Resize does to a uint8 CHW tensor: float interpolate, clamp, round."""
    t = torch.from_numpy(image_u8).permute(2, 0, 1)[None].to(torch.float32)
    t = torch.nn.functional.interpolate(t, size=size, mode=mode, align_corners=False, antialias=antialias)
    if mode == "bicubic":
        t = t.clamp(0, 255)
    return (torch.round(t).to(torch.uint8)[0].permute(1, 2, 0).to(torch.float32) / 255.0).numpy()


@pytest.mark.parametrize("resize_mode,mode,antialias", [("metaclip", "bicubic", True), ("dino", "bicubic", True),
                                                        ("siglip", "bilinear", False)])
@pytest.mark.parametrize("hw", [(300, 451), (120, 90), (1000, 37)])
def test_squash_resize_modes_match_torch(resize_mode, mode, antialias, hw):
    image = np.random.default_rng(1).integers(0, 256, (*hw, 3), dtype=np.uint8)
    ours, mask = preprocess._RESIZE_MODES[resize_mode](image, (336, 336))
    ref = _torchvision_resize(image, (336, 336), mode, antialias)
    assert mask.all() and ours.shape == ref.shape
    diff = np.abs(ours - ref)
    # Bit-exact except rare values that land on a .5 rounding boundary (~1e-7 filter differences).
    assert diff.max() <= 1 / 255 + 1e-7 and np.mean(diff > 0) < 1e-4, (diff.max(), np.mean(diff > 0))


@pytest.mark.parametrize("hw,out", [((300, 451), (223, 336)), ((160, 240), (336, 336)), ((7, 9), (336, 400)),
                                    ((2000, 90), (336, 15))])
def test_default_resize_matches_torch(hw, out):
    """Antialiased bilinear of [0, 1] floats vs torch.nn.functional.interpolate."""
    image = np.random.default_rng(2).integers(0, 256, (*hw, 3), dtype=np.uint8)
    t = torch.from_numpy(image).permute(2, 0, 1)[None].to(torch.float32) / 255.0
    ref = torch.nn.functional.interpolate(t, size=out, mode="bilinear", align_corners=False,
                                          antialias=True)[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(preprocess.torch_resize(image, out) / np.float32(255), ref, rtol=0, atol=1e-6)
    exact = preprocess.torch_resize(image.astype(np.float32) / np.float32(255), out, exact=True)
    np.testing.assert_allclose(exact, ref, rtol=0, atol=2.5e-7)


def test_multi_annotation_message_list():
    """Subsegments, per-conversation positions and root_subsegments loss weights
    (olmo/data/model_preprocessor.py: MultiModalPreprocessor.__call__, loss_token_weighting)."""
    _, pre = _fixture(FIXTURE_NAMES[0])
    convs = [[" User: a Assistant:", " b"], [" User: cc dd Assistant:", " ee ff"], [" User: g Assistant:", " h"]]
    out = pre.encode(np.zeros((40, 60, 3), np.uint8), convs)
    sub, pos, masks = out["subsegment_ids"], out["position_ids"], out["loss_masks"]
    n_image = int(np.sum(sub == preprocess.IMAGE_AT_START_SUBSEGMENT))
    assert sub[0] == preprocess.IMAGE_AT_START_SUBSEGMENT and np.all(np.diff(sub[n_image:]) >= 0)
    for k, conv in enumerate(convs, start=1):
        at = sub == k
        n_conv = sum(len(pre.tokenizer.encode(m)) for m in conv) + 1  # + EOS
        # the shifted input drops the last EOS of the last conversation
        assert at.sum() == n_conv - (k == len(convs))
        np.testing.assert_array_equal(pos[at], n_image + np.arange(at.sum()))
    np.testing.assert_allclose(masks[masks > 0], np.sqrt(1 / len(convs)), rtol=1e-6)
    text_only = pre(None, "hi")
    batch = preprocess.collate([out, text_only])
    assert np.all(batch["subsegment_ids"][1][:len(text_only["input_tokens"])] == 1)
