"""OLMoE feed-forward: a softmax router picking top-k of E SwiGLU experts, dropless.

Tokens are sorted by expert and multiplied with `jax.lax.ragged_dot` (grouped matmul), so no token is
dropped and no capacity is padded. Router weights are NOT renormalised over the top-k (megablocks and
HF OLMoE `norm_topk_prob=False`), as in the released MolmoE-1B. Expert parallelism lives in the MoE issue;
the expert weights already carry the "expert" logical axis.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from molmo_jax.models.layers import Dense, dtype_of, normal, param_with_axes


class MoeMlp(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float[B, T, d] -> float[B, T, d]."""
        llm = self.cfg.llm
        dtype, pdtype = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        e, k, f, d = llm.moe_num_experts, llm.moe_top_k, llm.mlp_hidden, llm.d_model
        logits = Dense((e,), ("embed",), (None,), False, jnp.float32, pdtype, name="router")(x)
        weights, experts = jax.lax.top_k(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), k)

        expert_param = lambda name, shape, axes: param_with_axes(self, name, normal(), shape, axes, pdtype)
        gate = expert_param("gate", (e, d, f), ("expert", "embed", "mlp")).astype(dtype)
        up = expert_param("up", (e, d, f), ("expert", "embed", "mlp")).astype(dtype)
        down = expert_param("down", (e, f, d), ("expert", "mlp", "embed")).astype(dtype)

        tokens = x.reshape(-1, d).astype(dtype)
        flat_experts = experts.reshape(-1)
        order = jnp.argsort(flat_experts, stable=True)
        routed = tokens[order // k]
        group_sizes = jnp.bincount(flat_experts, length=e).astype(jnp.int32)
        h = jax.nn.silu(jax.lax.ragged_dot(routed, gate, group_sizes)) * \
            jax.lax.ragged_dot(routed, up, group_sizes)
        out = jax.lax.ragged_dot(h, down, group_sizes)
        out = out * weights.reshape(-1)[order][:, None].astype(dtype)
        combined = jnp.zeros_like(out).at[order].set(out).reshape(-1, k, d).sum(axis=1)
        return combined.reshape(x.shape).astype(x.dtype)
