"""The decoder LLM for the OLMo, Qwen2 and OLMoE families, chosen by config.

One block serves all: pre-norm (Qwen2, OLMoE) or post-norm on the branch outputs (`norm_after`,
OLMo-7B-1024), a dense SwiGLU MLP or the MoE feed-forward (`block_type="moe"`). The layers run under
`nn.scan` with the remat policy of `cfg.llm.remat_policy`.
Shapes: B batch, T length, d width.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from molmo_jax.models.layers import (Attention, Dense, LayerNorm, Mlp, RMSNorm, dtype_of, normal,
                                     param_with_axes, scanned)
from molmo_jax.models.moe import MoeMlp


def norm(cfg, name: str | None = None) -> nn.Module:
    if cfg.llm.norm_type == "rms":
        return RMSNorm(cfg.llm.norm_eps, name=name)
    return LayerNorm(cfg.llm.norm_eps, use_bias=False, name=name)


class ResidualDropout(nn.Module):
    """Inverted dropout with keep probability 1-p on prompt tokens and 1-p_response on response tokens.

    The latter is the paper's "text-only dropout" of stage 1 (`response_residual_dropout`).
    """
    rate: float
    response_rate: float

    @nn.compact
    def __call__(self, x: jax.Array, response_mask: jax.Array | None, deterministic: bool) -> jax.Array:
        if deterministic or (self.rate == 0.0 and self.response_rate == 0.0):
            return x
        keep = jnp.full(x.shape[:2], 1.0 - self.rate, jnp.float32)
        if response_mask is not None:
            keep = jnp.where(response_mask > 0, 1.0 - self.response_rate, keep)
        keep = keep[..., None]
        kept = jax.random.bernoulli(self.make_rng("dropout"), jnp.broadcast_to(keep, x.shape))
        return jnp.where(kept, x / keep.astype(x.dtype), 0).astype(x.dtype)


class DecoderBlock(nn.Module):
    """One transformer layer. Carry: x float[B, T, d]. Broadcast: mask bool[B, T, S], positions int[B, T],
    response_mask float[B, T] or None, cache index (None: a prefill's 0). Scanned: this layer's KV cache
    {"k", "v"} or None."""
    cfg: object
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, mask, positions, response_mask, cache_index, cache):
        cfg, llm = self.cfg, self.cfg.llm
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        self.sow("intermediates", "block_input", x)
        attention = Attention(llm.n_heads, llm.n_kv_heads, llm.head_dim, llm.d_model, qkv_bias=llm.qkv_bias,
                              qk_norm_eps=llm.norm_eps if llm.qk_norm else None, rope_theta=llm.rope_theta,
                              dtype=dtype, param_dtype=pdtype, probs_dropout=llm.attention_dropout,
                              deterministic=self.deterministic, impl=llm.attention_impl, name="attention")
        if llm.block_type == "moe":
            ffn = MoeMlp(cfg, name="moe")
        else:
            ffn = Mlp(llm.mlp_hidden, gated=True, act="silu", dtype=dtype, param_dtype=pdtype, name="mlp")
        dropout = ResidualDropout(llm.residual_dropout, llm.response_residual_dropout)
        drop = lambda y: dropout(y, response_mask, self.deterministic)
        new_cache = []

        def attn(y):
            if cache is None:
                return attention(y, mask=mask, positions=positions, is_causal=True)
            index = 0 if cache_index is None else cache_index  # None: a prefill's 0 (see `Decoder`)
            out, updated = attention(y, mask=mask, positions=positions, cache={**cache, "index": index},
                                     is_causal=True)
            new_cache.append({"k": updated["k"], "v": updated["v"]})
            return out

        if llm.norm_after:
            x = x + drop(norm(cfg, "attn_norm")(attn(x)))
            x = x + drop(norm(cfg, "ff_norm")(ffn(x)))
        else:
            x = x + drop(attn(norm(cfg, "attn_norm")(x)))
            x = x + drop(ffn(norm(cfg, "ff_norm")(x)))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return x, (new_cache[0] if new_cache else None)


class Embedding(nn.Module):
    """Base vocabulary rows plus `additional_vocab_size` new rows (ids >= embedding_size)."""
    cfg: object

    @nn.compact
    def __call__(self, ids: jax.Array) -> jax.Array:
        """ids: int[B, T] (negative ids, i.e. padding, embed as id 0) -> float[B, T, d]."""
        llm = self.cfg.llm
        pdtype = dtype_of(self.cfg.param_dtype)
        base = param_with_axes(self, "embedding", normal(), (llm.embedding_size, llm.d_model),
                               ("vocab", "embed"), pdtype)
        ids = jnp.maximum(ids, 0)
        x = jnp.take(base, jnp.minimum(ids, llm.embedding_size - 1), axis=0)
        if llm.additional_vocab_size:
            new = param_with_axes(self, "new_embedding", normal(), (llm.additional_vocab_size, llm.d_model),
                                  ("vocab", "embed"), pdtype)
            extra = jnp.take(new, jnp.clip(ids - llm.embedding_size, 0, llm.additional_vocab_size - 1), axis=0)
            x = jnp.where((ids >= llm.embedding_size)[..., None], extra, x)
        return x.astype(dtype_of(self.cfg.dtype))


class Decoder(nn.Module):
    """Token embedding, the layer stack, final norm and output head (over the `embedding_size` rows)."""
    cfg: object
    deterministic: bool = True

    def setup(self):
        llm = self.cfg.llm
        self.embedder = Embedding(self.cfg)
        self.blocks = scanned(DecoderBlock, llm.n_layers, llm.remat_policy, n_broadcast=4, n_scanned=1,
                             unroll=llm.scan_unroll)(
            self.cfg, self.deterministic)
        self.final_norm = norm(self.cfg, "final_norm")
        self.lm_head = Dense((llm.embedding_size,), ("embed",), ("vocab",), False, dtype_of(self.cfg.dtype),
                             dtype_of(self.cfg.param_dtype))

    def embed(self, ids: jax.Array) -> jax.Array:
        """ids: int[B, T] -> float[B, T, d]."""
        return self.embedder(ids)

    def __call__(self, x, mask, positions, response_mask=None, cache=None, layer_params=None, logits_at=None):
        """x: float[B, T, d] input embeddings -> float32[B, T, embedding_size] logits.

        `logits_at` int[B]: only the logits at that position of each row, float32[B, 1, embedding_size]
        (generation's prefill samples from one position: the output head runs on one token per row).
        With `cache` (see `init_cache`) also returns the updated cache: (logits, cache).
        With `layer_params` (generation: `unstack_layers` of the blocks' params, one tree per layer) and a
        per-layer cache (`init_cache(..., per_layer=True)`) the layers run as a Python loop on those
        instead of under nn.scan, whose per-layer dynamic slices copy every weight and the layer's cache
        on every call (XLA:CPU's matmuls do not read a dynamic slice in place). That loop applies a
        `DecoderBlock` of its own to each layer's params: it draws no dropout and sows nothing (no
        intermediates, no MoE losses), so it serves deterministic inference only.
        """
        index = None if cache is None else cache["index"]
        if layer_params is not None and not self.deterministic:
            raise ValueError("layer_params (per-layer generation) needs a deterministic model: its blocks draw no "
                             "dropout")
        # nn.scan / nn.remat would trace a prefill's index, the Python int 0: the blocks get None for it
        block_index = None if isinstance(index, int) and index == 0 else index
        if layer_params is None:
            layer_cache = None if cache is None else {"k": cache["k"], "v": cache["v"]}
            x, new_cache = self.blocks(x, mask, positions, response_mask, block_index, layer_cache)
        else:
            block = DecoderBlock(self.cfg, self.deterministic, parent=None)
            updated = []
            for p, k, v in zip(layer_params, cache["k"], cache["v"], strict=True):
                x, kv = block.apply({"params": p}, x, mask, positions, response_mask, block_index,
                                    {"k": k, "v": v})
                updated.append(kv)
            new_cache = {"k": tuple(kv["k"] for kv in updated), "v": tuple(kv["v"] for kv in updated)}
        x = self.final_norm(x)
        self.sow("intermediates", "final_hidden", x)
        length = x.shape[1]
        if logits_at is not None:
            x = jnp.take_along_axis(x, logits_at[:, None, None], axis=1)
        logits = self.lm_head(x).astype(jnp.float32)
        if cache is None:
            return logits
        return logits, {**new_cache, "index": index + length}


def init_cache(cfg, batch: int, max_len: int, per_layer: bool = False) -> dict:
    """An empty KV cache: k/v float[L, B, max_len, K, D] in the compute dtype (`per_layer`: tuples of L
    float[B, max_len, K, D], for `Decoder(..., layer_params=...)`), write index 0 (a Python int: a call on
    it is a prefill, whose attention runs in causal blocks)."""
    llm = cfg.llm
    shape = (batch, max_len, llm.n_kv_heads, llm.head_dim)
    if per_layer:
        zeros = tuple(jnp.zeros(shape, dtype_of(cfg.dtype)) for _ in range(llm.n_layers))
    else:
        zeros = jnp.zeros((llm.n_layers, *shape), dtype_of(cfg.dtype))
    return {"k": zeros, "v": zeros, "index": 0}


def unstack_layers(block_params) -> list:
    """The scanned blocks' params (leading layer axis) as one param tree per layer."""
    n = jax.tree.leaves(block_params)[0].shape[0]
    return [jax.tree.map(lambda x, i=i: x[i], block_params) for i in range(n)]
