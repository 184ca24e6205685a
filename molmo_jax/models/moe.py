"""OLMoE feed-forward: a softmax router picking top-k of E SwiGLU experts, dropless.

Three equal computations, chosen by `cfg.llm.moe_impl` ("auto": by backend, see `moe_kernel`):
"ragged" sorts the token copies by expert and multiplies with `jax.lax.ragged_dot` (grouped matmul), so
no token is dropped and no capacity is padded; "blocked" sorts them the same way, pads each expert's group
to whole blocks of BLOCK rows and runs a `lax.scan` over the blocks, each multiplied by its expert's
weights (the routed FLOPs plus the padding); "dense" runs every expert on every token and combines with the
routing weights (zero outside the top-k). XLA's CPU backend has no grouped kernel and lowers `ragged_dot`
to a dense matmul of every routed copy with every expert (top_k times the dense path's FLOPs, plus the
sort), so "blocked" is the fast one there; GPU and TPU have grouped kernels. "dense" keeps each expert's
work on its expert-parallel shard (a sharding constraint; "blocked" indexes the experts' weights by block).
Router weights are NOT renormalised over the top-k (megablocks and HF OLMoE `norm_topk_prob=False`), as in
the released MolmoE-1B. Expert weights carry the "expert" logical axis (sharded over the `expert` mesh axis
by the rules table).

Auxiliary losses, sown into the "losses" collection when their weights are non-zero (both are 0 in the
released recipe): the Switch/megablocks load-balancing loss `w * E * sum_e f_e * P_e` (f_e: fraction of
the top-k assignments routed to e, P_e: mean router probability of e) and the router z-loss
`w * mean(logsumexp(router_logits)^2)`. `aux_loss(state)` in molmo.py averages them over layers.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from molmo_jax import config as config_lib
from molmo_jax.models.layers import Dense, dtype_of, einsum, normal, param_with_axes


BLOCK = 64  # most rows per block of "blocked" (XLA:CPU, 2 cores: 64 beat 16 / 32 / 128 / 256 at MolmoE-1B's width)


def moe_kernel(impl: str, backend: str | None = None, expert_shards: int | None = None) -> str:
    """"ragged", "blocked" or "dense" for `impl`. "auto" is "ragged" on GPU / TPU; on CPU (no grouped
    kernel) "blocked", or "dense" where the experts are split over `expert_shards` > 1 mesh shards (default:
    the current mesh's `expert` axis), each of which runs its own experts."""
    if impl == "auto":
        if (backend or jax.default_backend()) != "cpu":
            return "ragged"
        if expert_shards is None:
            expert_shards = dict(jax.sharding.get_abstract_mesh().shape).get("expert", 1)
        return "dense" if expert_shards > 1 else "blocked"
    if impl not in config_lib.MOE_IMPLS:
        raise ValueError(f"moe impl {impl!r}: allowed {config_lib.MOE_IMPLS}")
    return impl


def _sort_by_expert(experts, e: int):
    """experts: int[n, k] -> (order: the n * k token copies sorted by expert, stable; their experts;
    group sizes int32[E])."""
    flat = experts.reshape(-1)
    order = jnp.argsort(flat, stable=True)
    return order, flat[order], jnp.bincount(flat, length=e).astype(jnp.int32)


def _combine(out, order, weights, n: int):
    """out: float[n * k, d] of the sorted copies -> float[n, d], each token's copies weighted and summed."""
    k = weights.shape[1]
    out = out * weights.reshape(-1)[order][:, None]
    return jnp.zeros_like(out).at[order].set(out, unique_indices=True).reshape(n, k, -1).sum(axis=1)


def ragged_experts(tokens, weights, experts, gate, up, down) -> jax.Array:
    """Dropless grouped matmul. tokens: [n, d]; weights, experts: [n, k]; gate, up: [E, d, F];
    down: [E, F, d] -> [n, d]."""
    order, _, group_sizes = _sort_by_expert(experts, gate.shape[0])
    routed = tokens[order // experts.shape[1]]
    h = jax.nn.silu(jax.lax.ragged_dot(routed, gate, group_sizes)) * jax.lax.ragged_dot(routed, up, group_sizes)
    return _combine(jax.lax.ragged_dot(h, down, group_sizes), order, weights, tokens.shape[0])


def block_rows(copies: int, experts: int) -> int:
    """Rows per block of "blocked": the power of two at or above twice the mean group (copies / experts), at
    most BLOCK. Every block reads its expert's weights, so a decode step's few copies get blocks of 1 row
    (each copy reads one expert's weights, where "dense" reads all of them)."""
    return min(BLOCK, 1 << max(0, math.ceil(math.log2(2 * copies / experts))))


def blocked_experts(tokens, weights, experts, gate, up, down, block: int | None = None) -> jax.Array:
    """Dropless, in blocks of one expert: the sorted token copies, each expert's group padded to whole
    blocks of `block` rows (default `block_rows`; static capacity n * k + E * (block - 1) rows; the blocks
    past the last group are zeros), a `lax.scan` over the blocks multiplying each by its expert's weights.
    Shapes as `ragged_experts`."""
    (n, d), e, k = tokens.shape, gate.shape[0], experts.shape[1]
    block = block or block_rows(n * k, e)
    order, sorted_experts, group_sizes = _sort_by_expert(experts, e)
    padded = (group_sizes + block - 1) // block * block
    padded_ends = jnp.cumsum(padded)
    rank = jnp.arange(n * k) - (jnp.cumsum(group_sizes) - group_sizes)[sorted_experts]
    slot = padded_ends[sorted_experts] - padded[sorted_experts] + rank  # each sorted copy's padded row
    n_blocks = -(-(n * k + e * (block - 1)) // block)
    rows = jnp.zeros((n_blocks * block, d), tokens.dtype).at[slot].set(tokens[order // k], unique_indices=True)
    block_experts = jnp.minimum(jnp.searchsorted(padded_ends, jnp.arange(n_blocks) * block, side="right"), e - 1)
    out = _expert_blocks(rows.reshape(n_blocks, block, d), block_experts, gate, up, down)
    return _combine(out.reshape(-1, d)[slot], order, weights, n)


@jax.custom_vjp
def _expert_blocks(rows, block_experts, gate, up, down):
    """rows: float[N, block, d], each block one expert's token copies; block_experts: int[N] ->
    float[N, block, d], each block through its expert's SwiGLU (a scan over the blocks). The backward pass
    is a scan of its own adding each block's weight gradients into its expert's slice of float32
    accumulators: JAX's transpose of the forward scan took 1.4x its time (XLA:CPU, bench_moe's small size)."""
    return _expert_blocks_fwd(rows, block_experts, gate, up, down)[0]


def _expert_blocks_fwd(rows, block_experts, gate, up, down):
    def one_block(_, rows_and_expert):
        x, i = rows_and_expert  # [block, d], the block's expert
        g, u = einsum("bd,df->bf", x, gate[i]), einsum("bd,df->bf", x, up[i])
        return None, (einsum("bf,fd->bd", jax.nn.silu(g) * u, down[i]), g, u)

    _, (out, g, u) = jax.lax.scan(one_block, None, (rows, block_experts))
    return out, (rows, block_experts, gate, up, down, g, u)


def _expert_blocks_bwd(residuals, d_out):
    rows, block_experts, gate, up, down, g, u = residuals

    def one_block(grads, xs):
        x, i, g, u, d_out = xs
        sig = jax.nn.sigmoid(g)
        silu = g * sig
        d_h = einsum("bd,fd->bf", d_out, down[i])
        d_g, d_u = d_h * u * sig * (1 + g * (1 - sig)), d_h * silu  # silu'(g) = sig (1 + g (1 - sig))
        d_x = einsum("bf,df->bd", d_g, gate[i]) + einsum("bf,df->bd", d_u, up[i])
        d_gate, d_up, d_down = grads
        grads = (d_gate.at[i].add(einsum("bd,bf->df", x, d_g)), d_up.at[i].add(einsum("bd,bf->df", x, d_u)),
                 d_down.at[i].add(einsum("bf,bd->fd", silu * u, d_out)))
        return grads, d_x

    zeros = tuple(jnp.zeros(w.shape, jnp.float32) for w in (gate, up, down))
    grads, d_rows = jax.lax.scan(one_block, zeros, (rows, block_experts, g, u, d_out))
    return (d_rows, None, *(dw.astype(w.dtype) for dw, w in zip(grads, (gate, up, down))))


_expert_blocks.defvjp(_expert_blocks_fwd, _expert_blocks_bwd)


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
        kernel = {"ragged": ragged_experts, "blocked": blocked_experts, "dense": dense_experts}
        combined = kernel[moe_kernel(llm.moe_impl)](tokens, weights, experts, gate, up, down)
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
