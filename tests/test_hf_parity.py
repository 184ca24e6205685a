"""Parity with Hugging Face transformers for the base models Molmo is initialised from.

Tiny random Qwen2 / Olmo2 (OLMo-7B-1024) / Olmoe (norm_topk_prob=False) causal LMs and a CLIP ViT are
built on CPU in float32, converted with `molmo_jax.convert_base`, and must reproduce the transformers
logits / hidden states (rtol = atol = 1e-4). Weights are re-drawn at std 1/sqrt(fan_in) with norm weights
1 + N(0, 0.05): HF's init (std 0.02) gives near-uniform logits that would hide a wrong mapping.
Also: HF -> native -> params -> native is bit-exact, both OLMoE expert layouts agree, and bad inputs fail.
"""
from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
import torch

import transformers

from molmo_jax import checkpoints, config, convert_base
from molmo_jax.checkpoints import CheckpointError
from molmo_jax.config import ConfigError
from molmo_jax.models.molmo import Molmo
from molmo_jax.models.vit import VisionTransformer

TOL = dict(rtol=1e-4, atol=1e-4)
VOCAB, BATCH, SEQ = 256, 3, 12
VALID_LENGTHS = (SEQ, 9, 5)  # right padding on rows 1 and 2
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=None, pad_token_id=None,
              attn_implementation="eager")
HF_CONFIGS = {
    "qwen2": lambda: transformers.Qwen2Config(num_key_value_heads=2, rope_parameters=dict(
        rope_type="default", rope_theta=1e6), **COMMON),
    "olmo2": lambda: transformers.Olmo2Config(num_key_value_heads=4, rope_parameters=dict(
        rope_type="default", rope_theta=5e5), **COMMON),
    "olmoe": lambda: transformers.OlmoeConfig(num_key_value_heads=4, num_experts=8, num_experts_per_tok=2,
                                              norm_topk_prob=False, **{**COMMON, "intermediate_size": 32}),
}
HF_MODELS = {"qwen2": transformers.Qwen2ForCausalLM, "olmo2": transformers.Olmo2ForCausalLM,
             "olmoe": transformers.OlmoeForCausalLM}
TINY_FAMILY = {"qwen2": "qwen2", "olmo2": "olmo", "olmoe": "olmoe"}  # our tiny config with a small ViT


def recondition(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights ~ N(0, 1/fan_in), norm weights 1 + N(0, 0.05), other vectors (biases, ...) N(0, 0.05)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.ndim == 1:
                p.copy_(noise * 0.05 + (1.0 if "norm" in name and name.endswith("weight") else 0.0))
            else:
                fan_in = p[0].numel() if p.ndim == 4 else p.shape[-1]  # conv [C, 3, p, p]; linear [..., in]
                p.copy_(noise / fan_in ** 0.5)
    return model.eval()


@functools.lru_cache(maxsize=None)
def hf_llm(kind: str):
    torch.manual_seed(0)
    return recondition(HF_MODELS[kind](HF_CONFIGS[kind]()), seed=1)


def state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def our_config(kind: str):
    """Our tiny config of the family with the HF LLM and the tiny CLIP (3 of its 4 layers kept)."""
    return convert_base.config_from_hf(hf_llm(kind).config, hf_clip().config, base=config.tiny(TINY_FAMILY[kind]),
                                       vit_layers=(-1, -3))


@functools.lru_cache(maxsize=None)
def converted(kind: str):
    """(cfg, params) with the LLM of `kind` and the CLIP ViT converted from transformers."""
    cfg = our_config(kind)
    llm = (state_dict(hf_llm(kind)), hf_llm(kind).config)
    return cfg, convert_base.init_params_from_hf(cfg, jax.random.key(0), llm=llm, clip=state_dict(hf_clip()))


def token_batch() -> tuple[np.ndarray, np.ndarray]:
    """(ids int[B, T] with -1 at padding, valid bool[B, T])."""
    ids = np.random.default_rng(0).integers(0, VOCAB, (BATCH, SEQ))
    valid = np.arange(SEQ)[None] < np.asarray(VALID_LENGTHS)[:, None]
    return np.where(valid, ids, -1).astype(np.int32), valid


@pytest.mark.parametrize("kind", list(HF_MODELS))
def test_llm_logits_match_transformers(kind):
    ids, valid = token_batch()
    with torch.no_grad():
        expected = hf_llm(kind)(input_ids=torch.tensor(np.maximum(ids, 0)),
                                attention_mask=torch.tensor(valid.astype(np.int64))).logits.numpy()
    cfg, params = converted(kind)
    ours = np.asarray(jax.jit(Molmo(cfg).apply)({"params": {"llm": params["llm"]}}, ids))  # text only
    diff = np.abs(ours[valid] - expected[valid]).max()
    print(f"{kind}: max |logit diff| = {diff:.2e} (logit std {expected[valid].std():.2f})")
    assert expected[valid].std() > 0.5  # the weights make the test able to fail
    np.testing.assert_allclose(ours[valid], expected[valid], **TOL)


def test_load_llm_from_hf_is_the_llm_subtree():
    cfg, params = converted("qwen2")
    llm = convert_base.load_llm_from_hf(state_dict(hf_llm("qwen2")), hf_llm("qwen2").config, cfg, jax.random.key(0))
    assert jax.tree.structure(llm) == jax.tree.structure(params["llm"])
    for x, y in zip(jax.tree.leaves(llm), jax.tree.leaves(params["llm"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_llm_config_fields():
    fields = convert_base.llm_fields_from_hf(hf_llm("qwen2").config)
    assert (fields["n_kv_heads"], fields["head_dim"], fields["rope_theta"], fields["qkv_bias"]) == (2, 16, 1e6, True)
    olmo = convert_base.llm_fields_from_hf(hf_llm("olmo2").config)
    assert olmo["norm_after"] and olmo["qk_norm"] and olmo["rope_theta"] == 5e5
    legacy = {**hf_llm("qwen2").config.to_dict(), "rope_theta": 123.0}  # transformers-4 config.json
    del legacy["rope_parameters"]
    assert convert_base.llm_fields_from_hf(legacy)["rope_theta"] == 123.0
    with pytest.raises(ConfigError, match="norm_topk_prob"):
        convert_base.llm_fields_from_hf(transformers.OlmoeConfig(norm_topk_prob=True))
    with pytest.raises(ConfigError, match="model_type"):
        convert_base.llm_fields_from_hf(transformers.LlamaConfig())


# ----------------------------------------------------------------------------- CLIP ViT

CLIP = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, image_size=112,
            patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5, attn_implementation="eager")


@functools.lru_cache(maxsize=None)
def hf_clip():
    torch.manual_seed(0)
    return recondition(transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP)), seed=2)


def patchify(pixels: np.ndarray, p: int) -> np.ndarray:
    """float[N, 3, H, W] -> float[N, (H/p)*(W/p), p*p*3] with (dy, dx, c) order inside a patch."""
    n, c, h, w = pixels.shape
    x = pixels.reshape(n, c, h // p, p, w // p, p).transpose(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def test_clip_vit_matches_transformers():
    cfg, params = converted("qwen2")
    assert cfg.vit.n_layers == 3 and cfg.vit.num_pos == 65
    pixels = np.random.default_rng(1).normal(size=(2, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        hidden = hf_clip()(pixel_values=torch.tensor(pixels), output_hidden_states=True).hidden_states
    ours = np.asarray(jax.jit(VisionTransformer(cfg).apply)({"params": params["vit"]}, patchify(pixels, 14)))
    for i, layer in enumerate(cfg.vit_layers):
        expected = hidden[layer % cfg.vit.n_layers + 1].numpy()  # hidden_states[0] = pre_layrnorm output
        print(f"vit layer {layer}: max |diff| = {np.abs(ours[i] - expected).max():.2e}")
        np.testing.assert_allclose(ours[i], expected, **TOL)


# ----------------------------------------------------------------------------- round trips and errors

@pytest.mark.parametrize("kind", list(HF_MODELS))
def test_round_trip_is_bit_exact(kind):
    """HF -> native -> params -> native returns the converted native tensors bit for bit."""
    cfg, params = converted(kind)
    llm_native = convert_base.llm_to_native(state_dict(hf_llm(kind)), hf_llm(kind).config)
    vit_native = convert_base.clip_to_native(state_dict(hf_clip()), cfg.vit.n_layers)
    back = checkpoints.params_to_native(params, cfg)
    for k, x in {**llm_native, **vit_native}.items():
        assert back[k].dtype == x.dtype
        np.testing.assert_array_equal(back[k], x, err_msg=k)
    assert "vision_backbone.image_vit.transformer.resblocks.3.attention.wq.weight" not in vit_native


def per_expert_layout(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """transformers-5 fused OLMoE experts -> the transformers-4 per-expert Linear weights."""
    out = {}
    for k, x in sd.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            gate, up = np.split(x, 2, axis=1)
            for e in range(x.shape[0]):
                out[k.replace("gate_up_proj", f"{e}.gate_proj.weight")] = gate[e]
                out[k.replace("gate_up_proj", f"{e}.up_proj.weight")] = up[e]
        elif k.endswith("mlp.experts.down_proj"):
            out.update({k.replace("down_proj", f"{e}.down_proj.weight"): w for e, w in enumerate(x)})
        else:
            out[k] = x
    return out


def test_olmoe_expert_layouts_agree():
    sd, hf_config = state_dict(hf_llm("olmoe")), hf_llm("olmoe").config
    fused = convert_base.llm_to_native(sd, hf_config)
    split = convert_base.llm_to_native(per_expert_layout(sd), hf_config)
    assert sorted(fused) == sorted(split)
    for k in fused:
        np.testing.assert_array_equal(split[k], fused[k], err_msg=k)
    w1 = fused["transformer.blocks.0.ffn.experts.mlp.w1"]
    assert w1.shape == (8 * 32, 64)


def test_conversion_errors_name_the_tensor():
    sd, hf_config = state_dict(hf_llm("qwen2")), hf_llm("qwen2").config
    with pytest.raises(CheckpointError, match="does not use.*model.extra"):
        convert_base.llm_to_native({**sd, "model.extra": np.zeros(3)}, hf_config)
    missing = {k: v for k, v in sd.items() if k != "model.layers.1.mlp.up_proj.weight"}
    with pytest.raises(CheckpointError, match="model.layers.1.mlp.up_proj.weight"):
        convert_base.llm_to_native(missing, hf_config)
    deeper = our_config("qwen2")
    deeper.llm.n_layers = 4
    with pytest.raises(ConfigError, match=r"llm.n_layers=4 \(HF: 3\)"):
        convert_base.load_llm_from_hf(sd, hf_config, deeper)
    with pytest.raises(CheckpointError, match="the conversion does not use.*encoder.layers.0.extra"):
        convert_base.clip_to_native({**state_dict(hf_clip()), "vision_model.encoder.layers.0.extra": np.zeros(1)}, 3)
