"""OLMoE feed-forward: a softmax router picking top-k of E SwiGLU experts, dropless.

Two equal computations, chosen by `cfg.llm.moe_impl` ("auto": by backend, see `moe_kernel`):
"ragged" sorts the token copies by expert and multiplies with `jax.lax.ragged_dot` (grouped matmul), so
no token is dropped and no capacity is padded; "dense" runs every expert on every token and combines with
the routing weights (zero outside the top-k). XLA's CPU backend has no grouped kernel and lowers
`ragged_dot` to a dense matmul of every routed copy with every expert (top_k times the dense path's
FLOPs, plus the sort), so "dense" is the faster one there; GPU and TPU have grouped kernels. Router weights are NOT renormalised over the top-k (megablocks and
HF OLMoE `norm_topk_prob=False`), as in the released MolmoE-1B. Expert weights carry the "expert"
logical axis (sharded over the `expert` mesh axis by the rules table).

Auxiliary losses, sown into the "losses" collection when their weights are non-zero (both are 0 in the
released recipe): the Switch/megablocks load-balancing loss `w * E * sum_e f_e * P_e` (f_e: fraction of
the top-k assignments routed to e, P_e: mean router probability of e) and the router z-loss
`w * mean(logsumexp(router_logits)^2)`. `aux_loss(state)` in molmo.py averages them over layers.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from molmo_jax import config as config_lib
from molmo_jax.models.layers import Dense, dtype_of, einsum, normal, param_with_axes


def moe_kernel(impl: str, backend: str | None = None) -> str:
    """"ragged" or "dense" for `impl`; "auto" is "dense" on CPU (no grouped kernel), "ragged" elsewhere."""
    if impl == "auto":
        return "dense" if (backend or jax.default_backend()) == "cpu" else "ragged"
    if impl not in config_lib.MOE_IMPLS:
        raise ValueError(f"moe impl {impl!r}: allowed {config_lib.MOE_IMPLS}")
    return impl


def ragged_experts(tokens, weights, experts, gate, up, down) -> jax.Array:
    """Dropless grouped matmul. tokens: [n, d]; weights, experts: [n, k]; gate, up: [E, d, F];
    down: [E, F, d] -> [n, d]."""
    e, k = gate.shape[0], experts.shape[1]
    flat_experts = experts.reshape(-1)
    order = jnp.argsort(flat_experts, stable=True)
    routed = tokens[order // k]
    group_sizes = jnp.bincount(flat_experts, length=e).astype(jnp.int32)
    h = jax.nn.silu(jax.lax.ragged_dot(routed, gate, group_sizes)) * jax.lax.ragged_dot(routed, up, group_sizes)
    out = jax.lax.ragged_dot(h, down, group_sizes) * weights.reshape(-1)[order][:, None]
    return jnp.zeros_like(out).at[order].set(out).reshape(-1, k, tokens.shape[1]).sum(axis=1)


def dense_experts(tokens, weights, experts, gate, up, down) -> jax.Array:
    """Every expert on every token, weighted by the routing weight (0 outside the top-k); shapes as
    `ragged_experts`. On an expert-parallel mesh the tokens are gathered and each shard runs its experts."""
    combine = jnp.sum(jax.nn.one_hot(experts, gate.shape[0], dtype=weights.dtype) * weights[..., None], axis=1)
    h = jax.nn.silu(einsum("nd,edf->enf", tokens, gate)) * einsum("nd,edf->enf", tokens, up)
    h = nn.with_logical_constraint(h, ("expert", None, "mlp"))  # each expert shard runs its own experts
    return einsum("enf,efd->nd", h * combine.T[:, :, None], down)


class MoeMlp(nn.Module):
    cfg: object

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """x: float[B, T, d] -> float[B, T, d]."""
        llm = self.cfg.llm
        dtype, pdtype = dtype_of(self.cfg.dtype), dtype_of(self.cfg.param_dtype)
        e, k, f, d = llm.moe_num_experts, llm.moe_top_k, llm.mlp_hidden, llm.d_model
        logits = Dense((e,), ("embed",), (None,), False, jnp.float32, pdtype, name="router")(x)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        weights, experts = jax.lax.top_k(probs, k)
        self._sow_aux_losses(logits.astype(jnp.float32), probs, experts)

        expert_param = lambda name, shape, axes: param_with_axes(self, name, normal(), shape, axes, pdtype)
        gate = expert_param("gate", (e, d, f), ("expert", "embed", "mlp")).astype(dtype)
        up = expert_param("up", (e, d, f), ("expert", "embed", "mlp")).astype(dtype)
        down = expert_param("down", (e, f, d), ("expert", "mlp", "embed")).astype(dtype)

        tokens = x.reshape(-1, d).astype(dtype)
        weights, experts = weights.reshape(-1, k).astype(dtype), experts.reshape(-1, k)
        if moe_kernel(llm.moe_impl) == "dense":
            combined = dense_experts(tokens, weights, experts, gate, up, down)
        else:
            combined = ragged_experts(tokens, weights, experts, gate, up, down)
        return combined.reshape(x.shape).astype(x.dtype)

    def _sow_aux_losses(self, logits: jax.Array, probs: jax.Array, experts: jax.Array):
        """logits, probs: float32[B, T, E]; experts: int[B, T, k]."""
        llm = self.cfg.llm
        e = llm.moe_num_experts
        if llm.moe_loss_weight:
            assigned = jnp.mean(jax.nn.one_hot(experts, e, dtype=jnp.float32), axis=(0, 1, 2))
            balance = e * jnp.sum(assigned * jnp.mean(probs, axis=(0, 1)))
            self.sow("losses", "moe_load_balancing", llm.moe_loss_weight * balance)
        if llm.moe_zloss_weight:
            z = jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))
            self.sow("losses", "moe_router_z", llm.moe_zloss_weight * z)
