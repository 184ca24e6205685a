"""The conversion tables between the official checkpoint formats and our params (reading and writing
the files is `molmo_jax.io`).

Native (allenai/molmo): `config.json` (an `olmo.config.ModelConfig` dict) + `weights.safetensors` with
the official parameter names, torch Linear weights as (out, in).
HF release (allenai/Molmo-*-0924): `config.json` + sharded `model-*.safetensors` + index json. Dense
models use the native names prefixed with `model.`; MolmoE renames its blocks and splits its experts.

All conversion goes through one table of `Rule`s built from the config: a rule maps one or more native
tensors to one or more of our leaves (stacked over layers when `layered`) and back, so import and
export cannot drift apart. Loading names every missing, unexpected or mis-shaped tensor.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np

from molmo_jax import config as config_lib
from molmo_jax.conversion import (Arrays, Rule, attention_rules, experts, identity, linear, reshape, rule,
                                  split_rows)
from molmo_jax.models import connector
from molmo_jax.models.molmo import abstract_params


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, unexpected or mis-shaped tensors."""


# ----------------------------------------------------------------------------- the table

def native_rules(cfg) -> list[Rule]:
    """The conversion table between official native names and our param paths for `cfg`."""
    v, llm, con = cfg.vit, cfg.llm, cfg.connector
    vit_n, vit_o = "vision_backbone.image_vit", "vit"
    rules = [rule(f"{vit_n}.positional_embedding", f"{vit_o}/positional_embedding", identity()),
             rule(f"{vit_n}.patch_embedding.weight", f"{vit_o}/patch_embedding/kernel", linear())]
    if config_lib.num_prefix_tokens(cfg):
        rules.append(rule(f"{vit_n}.class_embedding", f"{vit_o}/class_embedding", identity()))
    if v.kind != "openai":
        rules.append(rule(f"{vit_n}.patch_embedding.bias", f"{vit_o}/patch_embedding/bias", identity()))
    else:
        rules += [rule(f"{vit_n}.pre_ln.{t}", f"{vit_o}/pre_ln/{o}", identity())
                  for t, o in (("weight", "scale"), ("bias", "bias"))]
    blk_n, blk_o = f"{vit_n}.transformer.resblocks.{{i}}", f"{vit_o}/blocks"
    rules += attention_rules(f"{blk_n}.attention", f"{blk_o}/attention", v.n_heads, v.n_kv_heads,
                             v.head_dim, separate=True, bias=True, out_bias=True, layered=True)
    for n, o in (("w1", "wi"), ("w2", "wo")):
        rules.append(rule(f"{blk_n}.feed_forward.{n}.weight", f"{blk_o}/feed_forward/{o}/kernel", linear(),
                          True))
        rules.append(rule(f"{blk_n}.feed_forward.{n}.bias", f"{blk_o}/feed_forward/{o}/bias", identity(), True))
    for n in ("attention_norm", "ffn_norm"):
        rules += [rule(f"{blk_n}.{n}.{t}", f"{blk_o}/{n}/{o}", identity(), True)
                  for t, o in (("weight", "scale"), ("bias", "bias"))]
    if v.kind == "dino":
        rules += [rule(f"{blk_n}.{n}", f"{blk_o}/{n}", identity(), True) for n in ("lambda1", "lambda2")]

    if con.padding_embed:
        rules.append(rule("vision_backbone.pad_embed", "connector/pad_embed", identity()))
    rules += connector.pooling_spec(con.pooling).export_rules(cfg)
    proj_n, proj_o = "vision_backbone.image_projector", "connector/projector"
    if con.projector == "linear":
        rules.append(rule(f"{proj_n}.weight", f"{proj_o}/linear/kernel", linear()))
    else:
        mlps = [(proj_n, "mlp")] if con.projector == "mlp" else [(f"{proj_n}.0", "mlp"),
                                                               (f"{proj_n}.1.submodule", "residual_mlp")]
        for n, o in mlps:
            rules += [rule(f"{n}.{w}.weight", f"{proj_o}/{o}/{k}/kernel", linear())
                      for w, k in (("w1", "gate"), ("w3", "up"), ("w2", "down"))]

    rules += [rule("transformer.wte.embedding", "llm/embedder/embedding", identity()),
              rule("transformer.ln_f.weight", "llm/final_norm/scale", identity()),
              rule("transformer.ff_out.weight", "llm/lm_head/kernel", linear())]
    if llm.additional_vocab_size:
        rules.append(rule("transformer.wte.new_embedding", "llm/embedder/new_embedding", identity()))
    blk_n, blk_o = "transformer.blocks.{i}", "llm/blocks"
    rules += attention_rules(blk_n, f"{blk_o}/attention", llm.n_heads, llm.n_kv_heads, llm.head_dim,
                             separate=False, bias=llm.qkv_bias, out_bias=False, layered=True)
    rules += [rule(f"{blk_n}.{n}.weight", f"{blk_o}/{n}/scale", identity(), True)
              for n in ("attn_norm", "ff_norm")]
    if llm.qk_norm:
        rules += [rule(f"{blk_n}.{n}_norm.weight", f"{blk_o}/attention/{n}_norm/scale", reshape((h, llm.head_dim)),
                       True) for n, h in (("q", llm.n_heads), ("k", llm.n_kv_heads))]
    if llm.block_type == "moe":
        e = llm.moe_num_experts
        rules += [rule(f"{blk_n}.ffn.router.layer.weight", f"{blk_o}/moe/router/kernel", linear(), True),
                  rule(f"{blk_n}.ffn.experts.mlp.w1", f"{blk_o}/moe/gate", experts(e, True), True),
                  rule(f"{blk_n}.ffn.experts.mlp.v1", f"{blk_o}/moe/up", experts(e, True), True),
                  rule(f"{blk_n}.ffn.experts.mlp.w2", f"{blk_o}/moe/down", experts(e, False), True)]
    else:
        f = llm.mlp_hidden
        rules += [rule(f"{blk_n}.ff_proj.weight", [f"{blk_o}/mlp/up/kernel", f"{blk_o}/mlp/gate/kernel"],
                       split_rows([f, f], [linear(), linear()]), True),
                  rule(f"{blk_n}.ff_out.weight", f"{blk_o}/mlp/down/kernel", linear(), True)]
    return rules


# ----------------------------------------------------------------------------- tree helpers

def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else k
        out.update(_flatten(v, path) if isinstance(v, Mapping) else {path: v})
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, v in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _layer_count(path: str, cfg) -> int:
    return cfg.vit.n_layers if path.startswith("vit/") else cfg.llm.n_layers


# ----------------------------------------------------------------------------- conversion

def native_to_params(get: Callable[[str], np.ndarray], keys: Iterable[str], cfg) -> dict[str, Any]:
    """Converts native tensors (read lazily with `get(name)`) to our unboxed param tree of numpy arrays.

    Raises CheckpointError listing missing and unexpected tensors, or naming a tensor whose shape does
    not fit the model (checkpoint shape and model shape).
    """
    keys = set(keys)
    rules = native_rules(cfg)
    expected = {p: tuple(x.shape) for p, x in _flatten(nn.meta.unbox(abstract_params(cfg))).items()}
    wanted = {}
    for r in rules:
        for layer in range(_layer_count(r.ours[0], cfg) if r.layered else 1):
            for n in r.native:
                wanted[n.format(i=layer)] = r
    missing, unexpected = sorted(set(wanted) - keys), sorted(keys - set(wanted))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not match the model config: missing tensors {missing}; "
                              f"unexpected tensors {unexpected}")
    flat = {}
    for r in rules:
        layers = range(_layer_count(r.ours[0], cfg)) if r.layered else [None]
        per_layer = [_convert(r, [n.format(i=i) for n in r.native], get, expected, i is not None)
                     for i in layers]
        for j, path in enumerate(r.ours):
            flat[path] = np.stack([p[j] for p in per_layer]) if r.layered else per_layer[0][j]
    missing_ours = sorted(set(expected) - set(flat))
    if missing_ours:
        raise CheckpointError(f"no checkpoint tensor fills model params {missing_ours}")
    return _unflatten(flat)


def _convert(rule: Rule, names: list[str], get: Callable[[str], np.ndarray], expected: Mapping[str, tuple],
             layered: bool) -> Arrays:
    native = [get(n) for n in names]
    model_shapes = [expected[p][1:] if layered else expected[p] for p in rule.ours]
    try:
        ours = rule.to_ours(native)
        ok = all(tuple(x.shape) == tuple(want) for x, want in zip(ours, model_shapes))
    except ValueError:
        ok = False
    if not ok:
        want = [tuple(x.shape) for x in rule.to_native([np.zeros(s, np.float32) for s in model_shapes])]
        raise CheckpointError(f"tensor {', '.join(names)}: checkpoint shape {[tuple(x.shape) for x in native]} "
                              f"does not match the model's {want}")
    return ours


def params_to_native(params: Mapping[str, Any], cfg) -> dict[str, np.ndarray]:
    """Our param tree (boxed or not, any device layout) -> {official native name: numpy array}.

    Raises CheckpointError naming every param that no rule exports (e.g. of a registered pooling given
    no export rules), rather than writing a model without it.
    """
    leaves = _flatten(nn.meta.unbox(params))
    rules = native_rules(cfg)
    uncovered = sorted(set(leaves) - {p for r in rules for p in r.ours})
    if uncovered:
        hint = (f" (pooling {cfg.connector.pooling!r} needs export_rules in connector.register_pooling)"
                if any(p.startswith("connector/pooling/") for p in uncovered) else "")
        raise CheckpointError(f"no export rule maps params {uncovered} to official names{hint}")
    flat = {p: np.asarray(jax.device_get(x)) for p, x in leaves.items()}
    out = {}
    for r in rules:
        layers = range(_layer_count(r.ours[0], cfg)) if r.layered else [None]
        for i in layers:
            ours = [flat[p][i] if i is not None else flat[p] for p in r.ours]
            for n, x in zip(r.native, r.to_native(ours)):
                out[n.format(i=i)] = np.ascontiguousarray(x)
    return out


# ----------------------------------------------------------------------------- HF release names

_MOE_RELEASE = [  # (release regex, native template) for MolmoE's renamed blocks
    (r"model\.transformer\.blocks\.(\d+)\.attn\.(att_proj|attn_out|attn_norm|q_norm|k_norm)\.weight",
     "transformer.blocks.{0}.{1}.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.mlp\.ff_norm\.weight", "transformer.blocks.{0}.ff_norm.weight"),
    (r"model\.transformer\.blocks\.(\d+)\.mlp\.gate\.weight", "transformer.blocks.{0}.ffn.router.layer.weight"),
    (r"lm_head\.weight", "transformer.ff_out.weight"),
]
_EXPERT = re.compile(r"model\.transformer\.blocks\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight")
_EXPERT_NATIVE = {"gate": "w1", "up": "v1", "down": "w2"}


def release_to_native(tensors: Mapping[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    """HF release tensors -> native names (dense: strip `model.`; MolmoE: also rename and fuse experts)."""
    out, experts = {}, {}
    for key, x in tensors.items():
        m = _EXPERT.fullmatch(key)
        if m:
            experts.setdefault((int(m[1]), m[3]), {})[int(m[2])] = x
            continue
        for pattern, template in _MOE_RELEASE:
            mm = re.fullmatch(pattern, key)
            if mm:
                out[template.format(*mm.groups())] = x
                break
        else:
            out[key[len("model."):] if key.startswith("model.") else key] = x
    for (layer, kind), per_expert in experts.items():
        ordered = [per_expert[e] for e in sorted(per_expert)]
        if kind == "down":
            ordered = [w.T for w in ordered]
        out[f"transformer.blocks.{layer}.ffn.experts.mlp.{_EXPERT_NATIVE[kind]}"] = np.concatenate(ordered)
    return out


def native_to_release(tensors: Mapping[str, np.ndarray], cfg) -> dict[str, np.ndarray]:
    """Inverse of `release_to_native`."""
    if cfg.llm.block_type != "moe":
        return {f"model.{k}": x for k, x in tensors.items()}
    out = {}
    e = cfg.llm.moe_num_experts
    for key, x in tensors.items():
        m = re.fullmatch(r"transformer\.blocks\.(\d+)\.(att_proj|attn_out|attn_norm|q_norm|k_norm)\.weight", key)
        mf = re.fullmatch(r"transformer\.blocks\.(\d+)\.ffn\.experts\.mlp\.(w1|v1|w2)", key)
        if m:
            out[f"model.transformer.blocks.{m[1]}.attn.{m[2]}.weight"] = x
        elif re.fullmatch(r"transformer\.blocks\.(\d+)\.ff_norm\.weight", key):
            out[f"model.{key.replace('.ff_norm', '.mlp.ff_norm')}"] = x
        elif key.endswith(".ffn.router.layer.weight"):
            out["model." + key.replace(".ffn.router.layer.weight", ".mlp.gate.weight")] = x
        elif mf:
            kind = {v: k for k, v in _EXPERT_NATIVE.items()}[mf[2]]
            for i, w in enumerate(np.split(x, e)):
                out[f"model.transformer.blocks.{mf[1]}.mlp.experts.{i}.{kind}_proj.weight"] = \
                    np.ascontiguousarray(w.T if kind == "down" else w)
        elif key == "transformer.ff_out.weight":
            out["lm_head.weight"] = x
        else:
            out[f"model.{key}"] = x
    return out
