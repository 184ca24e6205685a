"""The image encoder: a pre-LN ViT (OpenAI CLIP, SigLIP or DINOv2 flavour, chosen by `cfg.vit.kind`).

Input: crops already cut into patches, float[N, P, p*p*3] (pixel order within a patch (dy, dx, c)).
Output: the hidden states of the layers named by `cfg.vit_layers`, float[len(vit_layers), N, P', C]
with P' = P + prefix tokens. The layers run under one `nn.scan`; the wanted outputs are collected in
the scan carry, so only those are kept in memory.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from molmo_jax.config import num_prefix_tokens, patch_grid
from molmo_jax.models.layers import (Attention, Dense, LayerNorm, Mlp, dtype_of, normal, param_with_axes,
                                     scanned)

class VitBlock(nn.Module):
    """x += attn(LN(x)); x += mlp(LN(x)), with DINOv2 layer scales. Carry: (x, selected, layer).

    Training drops the attention output at rate `vit.dropout` (the official vision `residual_dropout`;
    the MLP branch has none)."""
    cfg: object
    deterministic: bool = True

    @nn.compact
    def __call__(self, carry, selected_layers: jax.Array):
        x, selected, layer = carry
        v = self.cfg.vit
        dtype, pdtype = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        h = Attention(v.n_heads, v.n_kv_heads, v.head_dim, v.d_model, qkv_bias=True, out_bias=True,
                      dtype=dtype, param_dtype=pdtype, init_scheme=v.init, out_dropout=v.dropout,
                      deterministic=self.deterministic, impl=self.cfg.llm.attention_impl, name="attention")(
            LayerNorm(v.norm_eps, name="attention_norm")(x))
        if v.kind == "dino":
            h = h * param_with_axes(self, "lambda1", nn.initializers.ones, (v.d_model,), ("embed",), pdtype)
        x = x + h
        h = Mlp(v.mlp_hidden, gated=False, act=v.activation, use_bias=True, dtype=dtype, param_dtype=pdtype,
                init_scheme=v.init, name="feed_forward")(LayerNorm(v.norm_eps, name="ffn_norm")(x))
        if v.kind == "dino":
            h = h * param_with_axes(self, "lambda2", nn.initializers.ones, (v.d_model,), ("embed",), pdtype)
        x = nn.with_logical_constraint(x + h, ("batch", "length", "embed"))
        selected = jnp.where((selected_layers == layer)[:, None, None, None], x[None], selected)
        return (x, selected, layer + 1), None


def resize_positions(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Bicubic (antialiased, half-pixel) resize of a square positional grid float[g*g, C] to grid."""
    g = int(np.sqrt(pos.shape[0]))
    if (g, g) == tuple(grid):
        return pos
    out = jax.image.resize(pos.reshape(g, g, -1), (*grid, pos.shape[-1]), "cubic", antialias=True)
    return out.reshape(grid[0] * grid[1], -1)


class VisionTransformer(nn.Module):
    cfg: object
    deterministic: bool = True

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        """patches: float[N, P, p*p*3] -> float[len(vit_layers), N, P + prefix, C]."""
        v = self.cfg.vit
        dtype, pdtype = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        prefix = num_prefix_tokens(self.cfg)
        x = Dense((v.d_model,), ("pixels",), ("embed",), v.kind != "openai", dtype, pdtype,
                  v.init, name="patch_embedding")(patches)
        # fan_in: unit-variance positions, on the scale of the fan-in patch embedding (the official
        # d**-0.5 leaves them ~10x below it and the image tokens of a narrow ViT without their positions)
        std = 1.0 if v.init == "fan_in" else v.d_model ** -0.5
        pos = param_with_axes(self, "positional_embedding", normal(std * v.pos_init_scale), (v.num_pos, v.d_model),
                              ("pos", "embed"), pdtype)
        pos = jnp.concatenate([pos[:prefix], resize_positions(pos[prefix:], patch_grid(self.cfg))])
        if prefix:
            cls = param_with_axes(self, "class_embedding", normal(std), (v.d_model,), ("embed",), pdtype)
            x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (x.shape[0], 1, v.d_model)), x], 1)
        x = x + pos.astype(x.dtype)
        if v.kind == "openai":
            x = LayerNorm(v.norm_eps, name="pre_ln")(x)
        layers = jnp.asarray([i % v.n_layers for i in self.cfg.vit_layers], jnp.int32)
        selected = jnp.zeros((len(self.cfg.vit_layers),) + x.shape, x.dtype)
        blocks = scanned(VitBlock, v.n_layers, v.remat_policy, n_broadcast=1,
                         unroll=v.scan_unroll)(self.cfg, self.deterministic, name="blocks")
        (_, selected, _), _ = blocks((x, selected, jnp.int32(0)), layers)
        return selected
