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

import dataclasses
import re
from typing import Any, Callable, Iterable, Mapping

import flax.linen as nn
import jax
import numpy as np

from molmo_jax import config as config_lib
from molmo_jax.models.molmo import abstract_params

Arrays = list[np.ndarray]


class CheckpointError(ValueError):
    """A checkpoint does not fit the model: missing, unexpected or mis-shaped tensors."""


@dataclasses.dataclass(frozen=True)
class Rule:
    native: tuple[str, ...]  # native key templates; "{i}" = layer index when layered
    ours: tuple[str, ...]  # "/"-joined param paths
    to_ours: Callable[[Arrays], Arrays]
    to_native: Callable[[Arrays], Arrays]
    layered: bool = False


# ----------------------------------------------------------------------------- reversible transforms

def _identity() -> tuple[Callable, Callable]:
    return (lambda xs: xs), (lambda xs: xs)


def _linear(out_shape: tuple[int, ...] = ()) -> tuple[Callable, Callable]:
    """torch (out, in) weight <-> kernel (in, *out_shape); out_shape () keeps out flat."""
    def fwd(xs):
        w = xs[0]
        return [w.T.reshape((w.shape[1],) + (out_shape or (w.shape[0],)))]
    return fwd, lambda ks: [ks[0].reshape(ks[0].shape[0], -1).T]


def _linear_from_heads(heads: int) -> tuple[Callable, Callable]:
    """torch (out, H*D) weight <-> kernel (H, D, out)."""
    return ((lambda xs: [xs[0].T.reshape(heads, -1, xs[0].shape[0])]),
            (lambda ks: [ks[0].reshape(-1, ks[0].shape[-1]).T]))


def _reshape(shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    return (lambda xs: [xs[0].reshape(shape)]), (lambda ks: [ks[0].reshape(-1)])


def _split_rows(sizes: Iterable[int], parts: Iterable[Callable]) -> tuple[Callable, Callable]:
    """One fused native tensor, rows split into `sizes`, each part transformed by a (fwd, inv) pair."""
    sizes, parts = list(sizes), list(parts)
    def fwd(xs):
        chunks = np.split(xs[0], np.cumsum(sizes)[:-1], axis=0)
        return [f([c])[0] for (f, _), c in zip(parts, chunks)]
    def inv(ks):
        return [np.concatenate([i([k])[0] for (_, i), k in zip(parts, ks)], axis=0)]
    return fwd, inv


def _experts(n_experts: int, transpose: bool) -> tuple[Callable, Callable]:
    """native (E*F, d) <-> (E, d, F) if transpose (w1, v1) else (E, F, d) (w2)."""
    def fwd(xs):
        w = xs[0].reshape(n_experts, -1, xs[0].shape[-1])
        return [w.transpose(0, 2, 1) if transpose else w]
    def inv(ks):
        w = ks[0].transpose(0, 2, 1) if transpose else ks[0]
        return [w.reshape(-1, w.shape[-1])]
    return fwd, inv


def _rule(native, ours, pair, layered=False) -> Rule:
    native = (native,) if isinstance(native, str) else tuple(native)
    ours = (ours,) if isinstance(ours, str) else tuple(ours)
    return Rule(native, ours, pair[0], pair[1], layered)


# ----------------------------------------------------------------------------- the table

def _attention_rules(native_prefix: str, ours_prefix: str, heads: int, kv_heads: int, head_dim: int,
                     separate: bool, bias: bool, out_bias: bool, layered: bool) -> list[Rule]:
    """q/k/v/out projections: separate wq/wk/wv/wo (ViT, pooling) or a fused att_proj/attn_out (LLM)."""
    names = ("query", "key", "value")
    counts = (heads, kv_heads, kv_heads)
    rules = []
    if separate:
        for n, native, h in zip(names, ("wq", "wk", "wv"), counts):
            rules.append(_rule(f"{native_prefix}.{native}.weight", f"{ours_prefix}/{n}/kernel",
                               _linear((h, head_dim)), layered))
            if bias:
                rules.append(_rule(f"{native_prefix}.{native}.bias", f"{ours_prefix}/{n}/bias",
                                   _reshape((h, head_dim)), layered))
        out_native = f"{native_prefix}.wo"
    else:
        sizes = [h * head_dim for h in counts]
        rules.append(_rule(f"{native_prefix}.att_proj.weight", [f"{ours_prefix}/{n}/kernel" for n in names],
                           _split_rows(sizes, [_linear((h, head_dim)) for h in counts]), layered))
        if bias:
            rules.append(_rule(f"{native_prefix}.att_proj.bias", [f"{ours_prefix}/{n}/bias" for n in names],
                               _split_rows(sizes, [_reshape((h, head_dim)) for h in counts]), layered))
        out_native = f"{native_prefix}.attn_out"
    rules.append(_rule(f"{out_native}.weight", f"{ours_prefix}/out/kernel", _linear_from_heads(heads), layered))
    if out_bias:
        rules.append(_rule(f"{out_native}.bias", f"{ours_prefix}/out/bias", _identity(), layered))
    return rules


def native_rules(cfg) -> list[Rule]:
    """The conversion table between official native names and our param paths for `cfg`."""
    v, llm, con = cfg.vit, cfg.llm, cfg.connector
    vit_n, vit_o = "vision_backbone.image_vit", "vit"
    rules = [_rule(f"{vit_n}.positional_embedding", f"{vit_o}/positional_embedding", _identity()),
             _rule(f"{vit_n}.patch_embedding.weight", f"{vit_o}/patch_embedding/kernel", _linear())]
    if config_lib.num_prefix_tokens(cfg):
        rules.append(_rule(f"{vit_n}.class_embedding", f"{vit_o}/class_embedding", _identity()))
    if v.kind != "openai":
        rules.append(_rule(f"{vit_n}.patch_embedding.bias", f"{vit_o}/patch_embedding/bias", _identity()))
    else:
        rules += [_rule(f"{vit_n}.pre_ln.{t}", f"{vit_o}/pre_ln/{o}", _identity())
                  for t, o in (("weight", "scale"), ("bias", "bias"))]
    blk_n, blk_o = f"{vit_n}.transformer.resblocks.{{i}}", f"{vit_o}/blocks"
    rules += _attention_rules(f"{blk_n}.attention", f"{blk_o}/attention", v.num_heads, v.num_kv_heads,
                              v.head_dim, separate=True, bias=True, out_bias=True, layered=True)
    for n, o in (("w1", "wi"), ("w2", "wo")):
        rules.append(_rule(f"{blk_n}.feed_forward.{n}.weight", f"{blk_o}/feed_forward/{o}/kernel", _linear(),
                           True))
        rules.append(_rule(f"{blk_n}.feed_forward.{n}.bias", f"{blk_o}/feed_forward/{o}/bias", _identity(), True))
    for n in ("attention_norm", "ffn_norm"):
        rules += [_rule(f"{blk_n}.{n}.{t}", f"{blk_o}/{n}/{o}", _identity(), True)
                  for t, o in (("weight", "scale"), ("bias", "bias"))]
    if v.kind == "dino":
        rules += [_rule(f"{blk_n}.{n}", f"{blk_o}/{n}", _identity(), True) for n in ("lambda1", "lambda2")]

    if con.padding_embed:
        rules.append(_rule("vision_backbone.pad_embed", "connector/pad_embed", _identity()))
    if con.pooling.startswith("attention"):
        wide = 2 if con.pooling == "attention_2wide" else 1
        rules += _attention_rules("vision_backbone.image_pooling_2d", "connector/pooling/attention",
                                  v.num_heads, v.num_kv_heads, wide * v.head_dim, separate=True, bias=True,
                                  out_bias=True, layered=False)
    proj_n, proj_o = "vision_backbone.image_projector", "connector/projector"
    if con.projector == "linear":
        rules.append(_rule(f"{proj_n}.weight", f"{proj_o}/linear/kernel", _linear()))
    else:
        mlps = [(proj_n, "mlp")] if con.projector == "mlp" else [(f"{proj_n}.0", "mlp"),
                                                               (f"{proj_n}.1.submodule", "residual_mlp")]
        for n, o in mlps:
            rules += [_rule(f"{n}.{w}.weight", f"{proj_o}/{o}/{k}/kernel", _linear())
                      for w, k in (("w1", "gate"), ("w3", "up"), ("w2", "down"))]

    rules += [_rule("transformer.wte.embedding", "llm/embedder/embedding", _identity()),
              _rule("transformer.ln_f.weight", "llm/final_norm/scale", _identity()),
              _rule("transformer.ff_out.weight", "llm/lm_head/kernel", _linear())]
    if llm.additional_vocab_size:
        rules.append(_rule("transformer.wte.new_embedding", "llm/embedder/new_embedding", _identity()))
    blk_n, blk_o = "transformer.blocks.{i}", "llm/blocks"
    rules += _attention_rules(blk_n, f"{blk_o}/attention", llm.n_heads, llm.n_kv_heads, llm.head_dim,
                              separate=False, bias=llm.qkv_bias, out_bias=False, layered=True)
    rules += [_rule(f"{blk_n}.{n}.weight", f"{blk_o}/{n}/scale", _identity(), True)
              for n in ("attn_norm", "ff_norm")]
    if llm.qk_norm:
        rules += [_rule(f"{blk_n}.{n}_norm.weight", f"{blk_o}/attention/{n}_norm/scale", _reshape((h, llm.head_dim)),
                        True) for n, h in (("q", llm.n_heads), ("k", llm.n_kv_heads))]
    if llm.block_type == "moe":
        e = llm.moe_num_experts
        rules += [_rule(f"{blk_n}.ffn.router.layer.weight", f"{blk_o}/moe/router/kernel", _linear(), True),
                  _rule(f"{blk_n}.ffn.experts.mlp.w1", f"{blk_o}/moe/gate", _experts(e, True), True),
                  _rule(f"{blk_n}.ffn.experts.mlp.v1", f"{blk_o}/moe/up", _experts(e, True), True),
                  _rule(f"{blk_n}.ffn.experts.mlp.w2", f"{blk_o}/moe/down", _experts(e, False), True)]
    else:
        f = llm.mlp_hidden
        rules += [_rule(f"{blk_n}.ff_proj.weight", [f"{blk_o}/mlp/up/kernel", f"{blk_o}/mlp/gate/kernel"],
                        _split_rows([f, f], [_linear(), _linear()]), True),
                  _rule(f"{blk_n}.ff_out.weight", f"{blk_o}/mlp/down/kernel", _linear(), True)]
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
    return cfg.vit.num_layers if path.startswith("vit/") else cfg.llm.n_layers


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
    """Our param tree (boxed or not, any device layout) -> {official native name: numpy array}."""
    flat = {p: np.asarray(jax.device_get(x)) for p, x in _flatten(nn.meta.unbox(params)).items()}
    out = {}
    for r in native_rules(cfg):
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
