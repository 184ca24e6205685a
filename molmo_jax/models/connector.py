"""The connector: padding embeddings, 2D pooling of ViT patches, projection into the LLM width.

Pooling is pluggable: `POOLINGS` maps a `cfg.connector.pooling` name to its `PoolingSpec` (how to build
it, its output width, its export rules); every official type is registered, and `register_pooling` adds
one for an ablation. Config validation, the memory planner and checkpoint conversion ask this registry.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from molmo_jax import config as config_lib
from molmo_jax import conversion
from molmo_jax.models.layers import Attention, Dense, Mlp, dtype_of, param_with_axes


class AttentionPool(nn.Module):
    """Pools each window with one attention query: the window mean ("meanq") or its first member.

    windows: float[N, k, C] -> float[N, out]; `wide` doubles the head dim and output width.
    """
    cfg: object
    mean_query: bool
    wide: bool = False

    @nn.compact
    def __call__(self, windows: jax.Array) -> jax.Array:
        v = self.cfg.vit
        scale = 2 if self.wide else 1
        query = windows.mean(axis=1, keepdims=True) if self.mean_query else windows[:, :1]
        out = Attention(v.n_heads, v.n_kv_heads, scale * v.head_dim, scale * v.d_model, qkv_bias=True,
                        out_bias=True, dtype=dtype_of(self.cfg.dtype),
                        param_dtype=dtype_of(self.cfg.param_dtype), init_scheme=self.cfg.connector.init,
                        impl=self.cfg.llm.attention_impl, name="attention")(query, windows)
        return out[:, 0]


class StackPool(nn.Module):
    """Concatenates the window members in (dh, dw) order: float[N, k, C] -> float[N, k*C]."""
    cfg: object

    def __call__(self, windows: jax.Array) -> jax.Array:
        return windows.reshape(windows.shape[0], -1)


def input_width(cfg) -> int:
    """Width C_in of a window member: the concatenated features of the selected ViT layers."""
    return cfg.vit.d_model * len(cfg.vit_layers)


def no_params(cfg) -> list[conversion.Rule]:
    """The export rules of a pooling without parameters."""
    return []


@dataclasses.dataclass(frozen=True)
class PoolingSpec:
    """A pooling as the model, the config validation, the planner and checkpoint conversion see it.

    build(cfg, name) -> nn.Module mapping windows float[N, k, C_in] -> float[N, width(cfg)].
    width(cfg): the pooled token width (the projector's input); default C_in (`input_width`).
    export_rules(cfg): `conversion.Rule`s mapping its params (paths under "connector/pooling/") to official
      native names, both ways; export raises on a param no rule covers. Default: none (no params).
    window: the (pooling_h, pooling_w) it needs, or None for any.
    output_dropout: the pooled features get `vit.dropout` in training (the official attention pooling is a
      `ViTMultiHeadDotProductAttention` with the vision residual dropout).
    """
    build: Callable[..., nn.Module]
    width: Callable[..., int] = input_width
    export_rules: Callable[..., list[conversion.Rule]] = no_params
    window: tuple[int, int] | None = None
    output_dropout: bool = False


def _attention_spec(mean_query: bool, wide: bool) -> PoolingSpec:
    """The official attention pooling: its params are `vision_backbone.image_pooling_2d.w{q,k,v,o}`
    (allenai/molmo `olmo/model.py: MolmoVisionBackbone.image_pooling_2d`)."""
    scale = 2 if wide else 1
    return PoolingSpec(
        build=lambda cfg, name: AttentionPool(cfg, mean_query=mean_query, wide=wide, name=name),
        width=lambda cfg: scale * cfg.vit.d_model,
        export_rules=lambda cfg: conversion.attention_rules(
            "vision_backbone.image_pooling_2d", "connector/pooling/attention", cfg.vit.n_heads,
            cfg.vit.n_kv_heads, scale * cfg.vit.head_dim, separate=True, bias=True, out_bias=True,
            layered=False),
        output_dropout=True)


POOLINGS: dict[str, PoolingSpec] = {
    "attention_meanq": _attention_spec(mean_query=True, wide=False),
    "attention": _attention_spec(mean_query=False, wide=False),
    "attention_2wide": _attention_spec(mean_query=False, wide=True),
    "stack": PoolingSpec(lambda cfg, name: StackPool(cfg, name=name),
                         width=lambda cfg: input_width(cfg) * cfg.connector.pooling_h * cfg.connector.pooling_w),
    "none": PoolingSpec(lambda cfg, name: StackPool(cfg, name=name), window=(1, 1)),  # the patch itself
}


def register_pooling(name: str, build: Callable[..., nn.Module], **spec) -> PoolingSpec:
    """Makes `cfg.connector.pooling = name` build `build(cfg, name=...)` (windows float[N, k, C_in] ->
    float[N, width]); `spec` holds the other `PoolingSpec` fields (width, export_rules, window,
    output_dropout). Registering a name again replaces it."""
    POOLINGS[name] = PoolingSpec(build, **spec)
    return POOLINGS[name]


def pooling_spec(name: str) -> PoolingSpec:
    """The registered pooling `name` (KeyError naming the registered ones if there is none)."""
    if name not in POOLINGS:
        raise KeyError(f"pooling {name!r} is not registered; registered: {tuple(POOLINGS)}")
    return POOLINGS[name]


class Projector(nn.Module):
    """Pooled features float[..., C_pool] -> float[..., d_model]: "mlp", "2mlp" or "linear"."""
    cfg: object

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg, kind = self.cfg, self.cfg.connector.projector
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        if kind == "linear":
            return Dense((cfg.llm.d_model,), ("mlp",), ("embed",), False, dtype, pdtype,
                         nn.initializers.xavier_uniform(), name="linear")(x)
        mlp = lambda name: Mlp(cfg.connector.projector_hidden, gated=True, act="silu",
                               out_dim=cfg.llm.d_model, dtype=dtype, param_dtype=pdtype, init_scheme=cfg.connector.init,
                               name=name)
        y = mlp("mlp")(x)
        if kind == "2mlp":
            y = y + mlp("residual_mlp")(y)
        return y


def add_padding_embedding(module: nn.Module, cfg, features: jax.Array, masks: jax.Array) -> jax.Array:
    """Adds the learned padding embedding(s) selected by the per-patch real-pixel fraction `masks`.

    features: float[B, T, P, C]; masks: float[B, T, P] in [0, 1], or -1 (counted as partial padding).
    """
    kind = cfg.connector.padding_embed
    c = features.shape[-1]
    shape, axes = ((2, c), (None, "embed")) if kind == "pad_and_partial_pad" else ((c,), ("embed",))
    pad = param_with_axes(module, "pad_embed", nn.initializers.zeros, shape, axes,
                          dtype_of(cfg.param_dtype)).astype(features.dtype)
    m = masks[..., None]
    if kind == "pad_embed":
        return features + pad * (m == 0)
    if kind == "regress":
        return features + pad * jnp.maximum(m, 0)
    all_pad = m == 0
    partial = (m < 1) & ~all_pad
    return features + pad[0] * all_pad + pad[1] * partial


class Connector(nn.Module):
    """Training drops (official `MolmoVisionBackbone`): the padded ViT features at rate
    `connector.feature_dropout` (`image_feature_dropout`), and an attention pooling's output at rate
    `vit.dropout` (`PoolingSpec.output_dropout`)."""
    cfg: object
    deterministic: bool = True

    @nn.compact
    def __call__(self, features: jax.Array, image_masks: jax.Array | None) -> jax.Array:
        """features: float[B, T, P, C_in] ViT patches; image_masks: float[B, T, P] -> float[B, T, N, d]."""
        cfg = self.cfg
        b, t = features.shape[:2]
        if cfg.connector.padding_embed:
            features = add_padding_embedding(self, cfg, features, image_masks)
        features = nn.Dropout(cfg.connector.feature_dropout, name="feature_dropout")(
            features, deterministic=self.deterministic)
        gh, gw = config_lib.patch_grid(cfg)
        ph, pw = cfg.connector.pooling_h, cfg.connector.pooling_w
        grid = features.reshape(b, t, gh, gw, -1)
        grid = jnp.pad(grid, ((0, 0), (0, 0), (0, -gh % ph), (0, -gw % pw), (0, 0)))
        windows = einops.rearrange(grid, "b t (h dh) (w dw) c -> (b t h w) (dh dw) c", dh=ph, dw=pw)
        pooling = pooling_spec(cfg.connector.pooling)
        pooled = pooling.build(cfg, name="pooling")(windows)
        if pooling.output_dropout:
            pooled = nn.Dropout(cfg.vit.dropout, name="pooling_dropout")(pooled, deterministic=self.deterministic)
        pooled = pooled.reshape(b, t, -1, pooled.shape[-1])
        self.sow("intermediates", "pooled_features", pooled)
        return Projector(cfg, name="projector")(pooled)
