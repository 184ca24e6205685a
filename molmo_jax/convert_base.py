"""Hugging Face BASE checkpoints (what Molmo training starts from) -> official native names -> our params.

Molmo initialises its LLM from Qwen2 (7B-D, 72B), OLMo-7B-1024 (7B-O, the `Olmo2ForCausalLM` architecture)
or OLMoE-1B-7B (MolmoE-1B), and its ViT from OpenAI CLIP ViT-L/14-336. This module maps those state dicts
to the official native names (as allenai/molmo scripts/convert_hf_to_molmo.py: convert_state_dict_qwen2,
_olmo_1024_preview, _olmoe, _clip), so that
`checkpoints.native_to_params` loads them like any native checkpoint:

  Qwen2    att_proj = cat(q, k, v) (weights and biases), ff_proj = cat(up, gate), ff_out = down,
           attn_norm = input_layernorm, ff_norm = post_attention_layernorm
  OLMo-2   as Qwen2 without biases, attn_norm = post_attention_layernorm,
           ff_norm = post_feedforward_layernorm (post-norm), plus q_norm / k_norm (full projection width)
  OLMoE    as Qwen2 without biases, plus q_norm / k_norm; router = mlp.gate; experts from the fused
           transformers-5 layout (gate_up_proj [E, 2F, d], down_proj [E, d, F]) or the per-expert
           transformers-4 layout (experts.{e}.{gate,up,down}_proj): w1 = cat_e(gate_e), v1 = cat_e(up_e),
           w2 = cat_e(down_e^T), each [E*F, d]
  all      wte.embedding = embed_tokens, ln_f = norm, transformer.ff_out = lm_head
  CLIP     q/k/v/out_proj -> wq/wk/wv/wo, fc1/fc2 -> w1/w2, layer_norm1/2 -> attention_norm/ffn_norm,
           pre_layrnorm -> pre_ln, patch conv [C, 3, p, p] permuted to [C, p, p, 3] and flattened
           ((dy, dx, c) pixel order), class / position embeddings; layers beyond the config's
           `vit.n_layers` and post_layernorm are dropped (Molmo keeps 23 of CLIP-L's 24 layers).

Conversion is strict: every tensor of the HF state dict is used or explicitly dropped, otherwise a
`checkpoints.CheckpointError` names the leftovers. The config builders read transformers-5 configs
(rope_theta inside `rope_parameters`, `head_dim` possibly absent) as well as older config.json dicts.

Training starts from base models saved by transformers (`save_pretrained` directories: config.json and
safetensors, local or gs://): `init_params_from_hf_dirs` reads them for the stage-1 configs' `init.vit` /
`init.llm`.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from etils import epath

from molmo_jax import checkpoints, io
from molmo_jax import config as config_lib
from molmo_jax.checkpoints import CheckpointError
from molmo_jax.config import ConfigError
from molmo_jax.models.molmo import init_params

LLM_TYPES = ("qwen2", "olmo2", "olmoe")
_TEMPLATES = {"qwen2": config_lib.molmo_7b_d, "olmo2": config_lib.molmo_7b_o, "olmoe": config_lib.molmoe_1b}
# (HF layer norm, native norm) per family: OLMo-2 is post-norm, so its two norms follow the branches.
_BLOCK_NORMS = {
    "qwen2": (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ff_norm")),
    "olmoe": (("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ff_norm")),
    "olmo2": (("post_attention_layernorm", "attn_norm"), ("post_feedforward_layernorm", "ff_norm")),
}
_NEW_IN_MOLMO = frozenset({"transformer.wte.new_embedding"})  # image special-token rows: random init
# Non-persistent buffers some transformers versions put into state_dict().
_BUFFERS = re.compile(r".*(rotary_emb\.inv_freq|position_ids)")
_VIT_NATIVE = "vision_backbone.image_vit"
_CLIP_LAYER = (("self_attn.q_proj", "attention.wq"), ("self_attn.k_proj", "attention.wk"),
               ("self_attn.v_proj", "attention.wv"), ("self_attn.out_proj", "attention.wo"),
               ("mlp.fc1", "feed_forward.w1"), ("mlp.fc2", "feed_forward.w2"),
               ("layer_norm1", "attention_norm"), ("layer_norm2", "ffn_norm"))


# ----------------------------------------------------------------------------- configs

def _as_dict(hf_config) -> dict[str, Any]:
    """A transformers config object or its config.json dict -> plain dict."""
    return dict(hf_config) if isinstance(hf_config, Mapping) else hf_config.to_dict()


def _rope_theta(d: Mapping[str, Any]) -> float:
    """transformers 5 keeps rope_theta in `rope_parameters`; older config.json has it top-level."""
    rope = d.get("rope_parameters") or {}
    if rope.get("rope_type", "default") != "default" or d.get("rope_scaling"):
        raise ConfigError(f"HF config rope {rope or d.get('rope_scaling')!r} is not supported; "
                          "supported: the default (unscaled) rotary embedding")
    return float(rope.get("rope_theta", d.get("rope_theta", 10_000.0)))


def _require(cond: bool, d: Mapping[str, Any], field: str, supported: str):
    if not cond:
        raise ConfigError(f"HF {d.get('model_type')} config field {field}={d.get(field)!r} is not "
                          f"supported; supported: {supported}")


def llm_model_type(hf_config) -> str:
    """"qwen2" | "olmo2" | "olmoe"; raises ConfigError for other architectures."""
    kind = _as_dict(hf_config).get("model_type")
    if kind not in LLM_TYPES:
        raise ConfigError(f"HF model_type {kind!r} is not a Molmo base LLM; supported: {LLM_TYPES}")
    return kind


def llm_fields_from_hf(hf_config, vocab_size: int | None = None) -> dict[str, Any]:
    """Our `llm` fields from a Qwen2Config / Olmo2Config / OlmoeConfig (object or dict).

    HF `vocab_size` is the number of embedding rows (our `embedding_size`); `vocab_size` is the tokenizer
    size, which the HF config does not record (default: the same).
    """
    d, kind = _as_dict(hf_config), llm_model_type(hf_config)
    _require(d.get("hidden_act", "silu") == "silu", d, "hidden_act", "'silu' (SwiGLU)")
    _require(not d.get("attention_bias", False), d, "attention_bias", "False")
    _require(d.get("clip_qkv") is None, d, "clip_qkv", "None")
    _require(not d.get("use_sliding_window", False), d, "use_sliding_window", "False")
    n_heads = d["num_attention_heads"]
    fields = dict(
        block_type="sequential", d_model=d["hidden_size"], n_layers=d["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=d.get("num_key_value_heads") or n_heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // n_heads, mlp_hidden=d["intermediate_size"],
        norm_type="rms", norm_eps=float(d["rms_norm_eps"]), norm_after=kind == "olmo2",
        qk_norm=kind != "qwen2", qkv_bias=kind == "qwen2", rope_theta=_rope_theta(d),
        vocab_size=vocab_size or d["vocab_size"], embedding_size=d["vocab_size"],
        moe_num_experts=0, moe_top_k=0)
    if kind == "olmoe":
        _require(not d.get("norm_topk_prob", False), d, "norm_topk_prob",
                 "False (Molmo's dMoE does not renormalise the top-k router weights)")
        fields.update(block_type="moe", moe_num_experts=d["num_experts"], moe_top_k=d["num_experts_per_tok"])
    return fields


def vit_fields_from_hf(clip_config, num_layers: int | None = None) -> dict[str, Any]:
    """Our `vit` fields from a CLIPVisionConfig (or a CLIPConfig / their dicts).

    num_layers: layers kept; default all but the last, as every released Molmo (23 of CLIP-L's 24).
    """
    d = _as_dict(clip_config)
    d = d.get("vision_config", d)
    grid = d["image_size"] // d["patch_size"]
    kept = d["num_hidden_layers"] - 1 if num_layers is None else num_layers
    if not 0 < kept <= d["num_hidden_layers"]:
        raise ConfigError(f"num_layers={kept} must be in [1, {d['num_hidden_layers']}] (CLIP layers)")
    n_heads = d["num_attention_heads"]
    return dict(kind="openai", image_size=(d["image_size"], d["image_size"]), patch_size=d["patch_size"],
                d_model=d["hidden_size"], n_heads=n_heads, n_kv_heads=n_heads,
                head_dim=d["hidden_size"] // n_heads, mlp_hidden=d["intermediate_size"], n_layers=kept,
                activation=d.get("hidden_act", "quick_gelu"), norm_eps=float(d.get("layer_norm_eps", 1e-5)),
                num_pos=grid * grid + 1)


def config_from_hf(llm_config, clip_config=None, *, base: ml_collections.ConfigDict | None = None,
                   vocab_size: int | None = None, vit_num_layers: int | None = None,
                   vit_layers: tuple[int, ...] | None = None, name: str | None = None):
    """A Molmo config whose LLM (and ViT, if `clip_config`) are the given HF base models.

    base: config to start from (default: the released Molmo of the LLM's family, e.g. Molmo-7B-D for
    Qwen2); its connector hidden width follows the LLM's MLP width, as in every released model.
    """
    cfg = base.copy_and_resolve_references() if base is not None else _TEMPLATES[llm_model_type(llm_config)]()
    cfg.llm.update(llm_fields_from_hf(llm_config, vocab_size))
    cfg.connector.projector_hidden = cfg.llm.mlp_hidden
    if clip_config is not None:
        cfg.vit.update(vit_fields_from_hf(clip_config, vit_num_layers))
    if vit_layers is not None:
        cfg.vit_layers = tuple(vit_layers)
    cfg.name = name or cfg.name
    return config_lib.validate(cfg)


# ----------------------------------------------------------------------------- tensors

def _numpy(x) -> np.ndarray:
    """torch tensor (any dtype, any device) or array -> numpy (bfloat16 widened to float32)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        return x.numpy()
    return np.asarray(x)


class _Source:
    """A state dict read by name; `finish()` raises naming every tensor that was never taken.

    `prefix` is stripped where present (CLIPVisionModel's "vision_model."); buffers are ignored.
    """

    def __init__(self, state_dict: Mapping[str, Any], prefix: str = ""):
        self._left = {k.removeprefix(prefix): v for k, v in state_dict.items() if not _BUFFERS.fullmatch(k)}
        self._what = prefix or "HF"

    def __contains__(self, name: str) -> bool:
        return name in self._left

    def take(self, name: str) -> np.ndarray:
        if name not in self._left:
            raise CheckpointError(f"{self._what} state dict has no tensor {name!r}")
        return _numpy(self._left.pop(name))

    def drop(self, unused: Callable[[str], bool]):
        """Discards the tensors whose names satisfy `unused` (parts Molmo does not use)."""
        for k in [k for k in self._left if unused(k)]:
            del self._left[k]

    def finish(self):
        if self._left:
            raise CheckpointError(f"{self._what} state dict has tensors the conversion does not use: "
                                  f"{sorted(self._left)}")


def _attention(src: _Source, hf: str, native: str, bias: bool, qk_norm: bool) -> dict[str, np.ndarray]:
    take = lambda n, t="weight": src.take(f"{hf}.self_attn.{n}.{t}")
    out = {f"{native}.att_proj.weight": np.concatenate([take(f"{n}_proj") for n in "qkv"]),
           f"{native}.attn_out.weight": take("o_proj")}
    if bias:
        out[f"{native}.att_proj.bias"] = np.concatenate([take(f"{n}_proj", "bias") for n in "qkv"])
    if qk_norm:
        out.update({f"{native}.{n}_norm.weight": take(f"{n}_norm") for n in "qk"})
    return out


def _mlp(src: _Source, hf: str, native: str) -> dict[str, np.ndarray]:
    take = lambda n: src.take(f"{hf}.mlp.{n}_proj.weight")
    return {f"{native}.ff_proj.weight": np.concatenate([take("up"), take("gate")]),
            f"{native}.ff_out.weight": take("down")}


def _experts(src: _Source, hf: str, n_experts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gate [E, F, d], up [E, F, d], down [E, d, F]) from either transformers layout."""
    fused = f"{hf}.mlp.experts.gate_up_proj"
    if fused in src:
        gate, up = np.split(src.take(fused), 2, axis=1)
        return gate, up, src.take(f"{hf}.mlp.experts.down_proj")
    per_expert = lambda n: np.stack([src.take(f"{hf}.mlp.experts.{e}.{n}_proj.weight") for e in range(n_experts)])
    return per_expert("gate"), per_expert("up"), per_expert("down")


def _moe(src: _Source, hf: str, native: str, n_experts: int) -> dict[str, np.ndarray]:
    gate, up, down = _experts(src, hf, n_experts)
    d = gate.shape[-1]
    mlp = f"{native}.ffn.experts.mlp"
    return {f"{native}.ffn.router.layer.weight": src.take(f"{hf}.mlp.gate.weight"),
            f"{mlp}.w1": gate.reshape(-1, d), f"{mlp}.v1": up.reshape(-1, d),
            f"{mlp}.w2": down.transpose(0, 2, 1).reshape(-1, d)}


def llm_to_native(state_dict: Mapping[str, Any], hf_config) -> dict[str, np.ndarray]:
    """State dict of a Qwen2/Olmo2/OlmoeForCausalLM -> {native name: array} (no `wte.new_embedding`:
    the 128 image-token rows are new in Molmo and initialised randomly)."""
    d, kind = _as_dict(hf_config), llm_model_type(hf_config)
    src = _Source(state_dict)
    out = {"transformer.wte.embedding": src.take("model.embed_tokens.weight"),
           "transformer.ln_f.weight": src.take("model.norm.weight")}
    tied = d.get("tie_word_embeddings", False) and "lm_head.weight" not in src
    out["transformer.ff_out.weight"] = out["transformer.wte.embedding"] if tied else src.take("lm_head.weight")
    for i in range(d["num_hidden_layers"]):
        hf, native = f"model.layers.{i}", f"transformer.blocks.{i}"
        out.update(_attention(src, hf, native, bias=kind == "qwen2", qk_norm=kind != "qwen2"))
        out.update({f"{native}.{n}.weight": src.take(f"{hf}.{h}.weight") for h, n in _BLOCK_NORMS[kind]})
        out.update(_moe(src, hf, native, d["num_experts"]) if kind == "olmoe" else _mlp(src, hf, native))
    src.finish()
    return out


def _layer_index(name: str) -> int:
    """i of "encoder.layers.{i}.*", else -1."""
    m = re.match(r"encoder\.layers\.(\d+)\.", name)
    return int(m[1]) if m else -1


def clip_to_native(state_dict: Mapping[str, Any], num_layers: int) -> dict[str, np.ndarray]:
    """State dict of a CLIPVisionModel (or CLIPModel.vision_model) -> {native name: array}.

    Keeps the first `num_layers` encoder layers; later layers and post_layernorm are dropped.
    """
    src = _Source(state_dict, prefix="vision_model.")
    patch = src.take("embeddings.patch_embedding.weight")  # [C, 3, p, p]
    out = {f"{_VIT_NATIVE}.class_embedding": src.take("embeddings.class_embedding"),
           f"{_VIT_NATIVE}.positional_embedding": src.take("embeddings.position_embedding.weight"),
           f"{_VIT_NATIVE}.patch_embedding.weight": patch.transpose(0, 2, 3, 1).reshape(patch.shape[0], -1)}
    out.update({f"{_VIT_NATIVE}.pre_ln.{t}": src.take(f"pre_layrnorm.{t}") for t in ("weight", "bias")})
    for i in range(num_layers):
        out.update({f"{_VIT_NATIVE}.transformer.resblocks.{i}.{native}.{t}": src.take(f"encoder.layers.{i}.{hf}.{t}")
                    for hf, native in _CLIP_LAYER for t in ("weight", "bias")})
    src.drop(lambda k: _layer_index(k) >= num_layers or k.startswith("post_layernorm."))
    src.finish()
    return out


# ----------------------------------------------------------------------------- params

def check_llm_config(cfg, hf_config):
    """Raises ConfigError naming each `cfg.llm` field that disagrees with the HF LLM's architecture."""
    fields = llm_fields_from_hf(hf_config, vocab_size=cfg.llm.vocab_size)
    wrong = [f"llm.{k}={cfg.llm[k]!r} (HF: {v!r})" for k, v in fields.items() if cfg.llm[k] != v]
    if wrong:
        raise ConfigError(f"config does not match the HF {llm_model_type(hf_config)} model: {', '.join(wrong)}")


def check_vit_config(cfg, clip_config):
    """Raises ConfigError naming each `cfg.vit` field that disagrees with the HF CLIP vision tower."""
    fields = vit_fields_from_hf(clip_config, cfg.vit.n_layers)
    wrong = [f"vit.{k}={cfg.vit[k]!r} (HF: {v!r})" for k, v in fields.items() if _as_tuple(cfg.vit[k]) != _as_tuple(v)]
    if wrong:
        raise ConfigError(f"config does not match the HF CLIP vision tower: {', '.join(wrong)}")


def _as_tuple(x):
    """Lists as tuples (config.json and ConfigDict spell sizes either way)."""
    return tuple(x) if isinstance(x, (list, tuple)) else x


def _overlay(native: dict[str, np.ndarray], converted: Mapping[str, np.ndarray], tower: str):
    """native.update(converted), after checking that `converted` fills every native tensor under `tower`
    that a base model has."""
    missing = sorted(k for k in native if k.startswith(tower) and k not in converted and k not in _NEW_IN_MOLMO)
    if missing:
        raise CheckpointError(f"the HF checkpoint does not fill these tensors of the model: {missing}")
    native.update(converted)


def init_params_from_hf(cfg, rng: jax.Array, llm: tuple[Mapping[str, Any], Any] | None = None,
                        clip: Mapping[str, Any] | None = None, mesh=None) -> Any:
    """Molmo params as training starts from them (`Molmo.reset_with_pretrained_weights`).

    The LLM comes from `llm` = (state dict, HF config), the ViT from the CLIP state dict `clip`; the
    connector, `wte.new_embedding` and any tower not given are randomly initialised from `rng`.
    Returns the param tree placed on `mesh` (default: one device). Raises ConfigError when `cfg.llm`
    disagrees with the HF config, CheckpointError when the converted tensors do not cover their tower
    of `cfg` or do not fit its shapes.
    """
    converted = {}
    if llm is not None:
        check_llm_config(cfg, llm[1])
        converted["transformer."] = llm_to_native(*llm)
    if clip is not None:
        converted[f"{_VIT_NATIVE}."] = clip_to_native(clip, cfg.vit.n_layers)
    native = checkpoints.params_to_native(init_params(cfg, rng), cfg)
    for tower, tensors in converted.items():
        _overlay(native, tensors, tower)
    params = checkpoints.native_to_params(native.__getitem__, native.keys(), cfg)
    return io.place(params, cfg, mesh)


def load_llm_from_hf(state_dict: Mapping[str, Any], hf_config, cfg, rng: jax.Array | None = None) -> Any:
    """The `llm` subtree of our params from a Qwen2/Olmo2/OlmoeForCausalLM state dict.

    Enough for a text-only forward: `Molmo(cfg).apply({"params": {"llm": p}}, input_ids)`. The 128
    `new_embedding` rows (image special tokens) are not in the base model and come from `rng`.
    """
    rng = jax.random.key(0) if rng is None else rng
    return init_params_from_hf(cfg, rng, llm=(state_dict, hf_config))["llm"]


# ----------------------------------------------------------------------------- directories

CLIP_TYPES = ("clip", "clip_vision_model")


def read_hf_directory(path: epath.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(state dict, config.json dict) of a transformers `save_pretrained` directory with safetensors
    weights (model.safetensors or sharded with model.safetensors.index.json), local or gs://."""
    path = epath.Path(path)
    if not (path / "config.json").exists():
        raise CheckpointError(f"{path}: no config.json, not a Hugging Face model directory")
    hf_config = json.loads((path / "config.json").read_text())
    return io.read_safetensors(io.safetensor_files(path)), hf_config


def read_clip_directory(path: epath.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(vision tower state dict, CLIPVisionConfig dict) of a CLIPModel or CLIPVisionModel directory
    (the text tower and projections of a full CLIPModel are not used by Molmo)."""
    state, hf_config = read_hf_directory(path)
    kind = hf_config.get("model_type")
    if kind not in CLIP_TYPES:
        raise ConfigError(f"{path}: HF model_type {kind!r} is not a CLIP vision tower; supported: {CLIP_TYPES}")
    state = {k: v for k, v in state.items() if kind == "clip_vision_model" or k.startswith("vision_model.")}
    return state, hf_config.get("vision_config", hf_config)


def init_params_from_hf_dirs(cfg, rng: jax.Array, vit: epath.PathLike = "", llm: epath.PathLike = "",
                             mesh=None) -> Any:
    """`init_params_from_hf` with the towers read from transformers directories ("" = random init).

    vit: a CLIP (ViT) directory, e.g. openai/clip-vit-large-patch14-336; llm: a Qwen2 / OLMo-2 / OLMoE
    causal-LM directory, e.g. Qwen/Qwen2-7B. Raises ConfigError when `cfg` does not describe them.
    """
    clip = None
    if vit:
        clip, clip_config = read_clip_directory(vit)
        check_vit_config(cfg, clip_config)
    return init_params_from_hf(cfg, rng, llm=read_hf_directory(llm) if llm else None, clip=clip, mesh=mesh)
