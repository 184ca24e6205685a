"""The building blocks every Molmo tower shares: norms, the one attention, the one MLP, RoPE.

Every parameter carries logical axis names (see `molmo_jax.sharding.LOGICAL_RULES`). Shapes in
docstrings: B batch, T query length, S key length, H query heads, K kv heads, D head dim.
"""
from __future__ import annotations

import functools
import string
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from molmo_jax import config as config_lib

Dtype = jnp.dtype
INIT_STD = 0.02


def dtype_of(name: str) -> Dtype:
    return jnp.dtype(name)


def normal(std: float = INIT_STD):
    return nn.initializers.normal(stddev=std)


def kernel_init(scheme: str | Callable, n_in: int, n_out: int) -> Callable:
    """The initializer of a Dense kernel with `n_in` contracted and `n_out` produced dims.

    "normal": N(0, 0.02^2), the official code's; "fan_in": N(0, 1 / fan_in) (LeCun), which keeps
    activations O(1) at any width. Narrow models trained from scratch need it: at width 64 the official
    init shrinks the image features ~1e4-fold through the pooling and the gated projector, and the LLM
    learns to ignore them. A callable is used as it is.
    """
    if callable(scheme):
        return scheme
    if scheme == "normal":
        return normal()
    if scheme == "fan_in":
        return nn.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=tuple(range(n_in)),
                                                out_axis=tuple(range(n_in, n_in + n_out)))
    raise ValueError(f"init scheme {scheme!r}: allowed {config_lib.INIT_SCHEMES} or an initializer")


# checkpoint names of the `einsum` outputs (the "dots" remat policies save them)
DOT, BATCHED_DOT = "dot", "batched_dot"
HALF_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """Two-operand `jnp.einsum` accumulating in float32, returned in the operands' dtype: every matmul of
    the model goes through it. Every label of an operand must appear in the other operand or the output.

    A custom VJP writes the backward dots as einsums of the same kind: bf16 / fp16 dots are half x half
    -> float32 forward and backward (JAX's own transpose would upcast the saved operand and run float32
    x float32 dots; XLA:CPU has a fast bf16 kernel only for half x half -> float32 and runs a bf16-output
    dot as a float32 one, converts included; cuBLAS and the TPU MXU accumulate in float32 anyway), and
    the weight gradient is x^T g rather than JAX's (g^T x)^T, which spares XLA:CPU a transposed copy of
    g. float32: the forward is `jnp.einsum` bit for bit; gradients are the same sums, up to summation
    order. The custom VJP hides the dot from `dots_saveable`, so the output is named `DOT` or
    `BATCHED_DOT` (a label in both operands and the output) for the remat policies.
    """
    inputs, out = spec.split("->")
    batched = set(inputs.split(",")[0]) & set(inputs.split(",")[1]) & set(out)
    return checkpoint_name(_einsum(spec, a, b), BATCHED_DOT if batched else DOT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(jnp.result_type(a, b))


def _einsum_fwd(spec: str, a: jax.Array, b: jax.Array):
    return _einsum(spec, a, b), (a, b)


def _einsum_bwd(spec: str, residuals, g: jax.Array):
    a, b = residuals
    (in_a, in_b), out = spec.split("->")[0].split(","), spec.split("->")[1]
    return (_einsum(f"{out},{in_b}->{in_a}", g, b).astype(a.dtype),
            _einsum(f"{in_a},{out}->{in_b}", a, g).astype(b.dtype))


_einsum.defvjp(_einsum_fwd, _einsum_bwd)


def param_with_axes(module: nn.Module, name: str, init: Callable, shape: Sequence[int],
                    axes: Sequence[str | None], dtype: Dtype):
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape), dtype)


class Dense(nn.Module):
    """y = x @ W (+ b), contracting the last `len(in_axes)` dims of x into `features`.

    `in_axes` / `out_axes` are the logical names of the contracted and produced dimensions, e.g. a
    query projection is Dense((H, D), in_axes=("embed",), out_axes=("heads", "head_dim")).
    """
    features: Sequence[int]
    in_axes: Sequence[str | None]
    out_axes: Sequence[str | None]
    use_bias: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_scheme: str | Callable = "normal"  # a `kernel_init` scheme or an initializer

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n_in = len(self.in_axes)
        features = tuple(self.features)
        kernel = param_with_axes(self, "kernel", kernel_init(self.init_scheme, n_in, len(features)),
                                 x.shape[-n_in:] + features, tuple(self.in_axes) + tuple(self.out_axes),
                                 self.param_dtype)
        batch, contract, out = (string.ascii_letters[:x.ndim - n_in], string.ascii_letters[x.ndim - n_in:x.ndim],
                                string.ascii_letters[x.ndim:x.ndim + len(features)])
        y = einsum(f"{batch}{contract},{contract}{out}->{batch}{out}", x.astype(self.dtype),
                   kernel.astype(self.dtype))
        if self.use_bias:
            bias = param_with_axes(self, "bias", nn.initializers.zeros, features, self.out_axes,
                                   self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * scale over the trailing `len(axes)` dims, normalised in float32."""
    eps: float
    axes: Sequence[str | None] = ("norm",)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n = len(self.axes)
        scale = param_with_axes(self, "scale", nn.initializers.ones, x.shape[-n:], self.axes, jnp.float32)
        reduce = tuple(range(x.ndim - n, x.ndim))
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=reduce, keepdims=True) + self.eps)
        return y.astype(x.dtype) * scale.astype(x.dtype)


class LayerNorm(nn.Module):
    """Standard LayerNorm over the last dim, statistics in float32."""
    eps: float
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = param_with_axes(self, "scale", nn.initializers.ones, x.shape[-1:], ("norm",), jnp.float32)
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=-1, keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.eps) * scale
        if self.use_bias:
            y = y + param_with_axes(self, "bias", nn.initializers.zeros, x.shape[-1:], ("norm",),
                                    jnp.float32)
        return y.astype(x.dtype)


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activations of the official ActivationType enum (single-input ones)."""
    return {
        "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
        "gelu": lambda x: jax.nn.gelu(x, approximate=False),
        "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
        "relu": jax.nn.relu,
        "silu": jax.nn.silu,
    }[name]


class Mlp(nn.Module):
    """Gated (SwiGLU: down(silu(gate x) * up x)) or plain (down(act(up x))) feed-forward.

    Shapes: x float[..., C] -> float[..., out_dim or C].
    """
    hidden: int
    gated: bool = True
    act: str = "silu"
    use_bias: bool = False
    out_dim: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_scheme: str = "normal"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda f, i, o, name: Dense((f,), (i,), (o,), self.use_bias, self.dtype, self.param_dtype,
                                            self.init_scheme, name=name)
        act = activation(self.act)
        if self.gated:
            h = act(dense(self.hidden, "embed", "mlp", "gate")(x)) * dense(self.hidden, "embed", "mlp", "up")(x)
        else:
            h = act(dense(self.hidden, "embed", "mlp", "wi")(x))
        return dense(self.out_dim or x.shape[-1], "mlp", "embed", "down" if self.gated else "wo")(h)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotate-half (GPT-NeoX layout) rotary embedding, computed in float32.

    x: float[B, T, N, D]; positions: int[B, T]. Returns x's dtype.
    """
    d = x.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, D/2]
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    xf = x.astype(jnp.float32)
    x1, x2 = jnp.split(xf, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return (xf * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class Attention(nn.Module):
    """Multi-head attention with GQA, optional q/k/v bias, QK-norm and RoPE.

    Serves the ViT (bidirectional, biases), the 2x2 pooling (queries differ from keys) and the LLM
    (causal mask, RoPE, optional QK-norm over the full projections, no output bias).
    kv head j serves query heads j*G .. j*G+G-1 (G = H // K), as torch's repeat_interleave does.
    """
    num_heads: int
    num_kv_heads: int
    head_dim: int
    out_dim: int
    qkv_bias: bool = False
    out_bias: bool = False
    qk_norm_eps: float | None = None  # set: RMSNorm over the whole q (H*D) and k (K*D) vectors
    rope_theta: float | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    init_scheme: str = "normal"
    # Training-only inverted dropout, as the official modules apply it: on the attention probabilities
    # (the LLM's `attention_dropout`, torch SDPA's dropout_p) and on the output after the projection
    # (the vision `residual_dropout` of `ViTMultiHeadDotProductAttention`).
    probs_dropout: float = 0.0
    out_dropout: float = 0.0
    deterministic: bool = True
    impl: str = "xla"  # a `config.ATTENTION_IMPLS` name, resolved per backend by `attention_kernel`

    def _proj(self, heads: int, heads_axis: str, name: str, bias: bool) -> Dense:
        return Dense((heads, self.head_dim), ("embed",), (heads_axis, "head_dim"), bias, self.dtype,
                     self.param_dtype, self.init_scheme, name=name)

    @nn.compact
    def __call__(self, x_q: jax.Array, x_kv: jax.Array | None = None, *, mask: jax.Array | None = None,
                 positions: jax.Array | None = None, cache: dict | None = None, is_causal: bool = False):
        """x_q: float[B, T, C]; x_kv: float[B, S, C] (default x_q); mask: bool[B, T, S] (True = attend);
        positions: int[B, T] (needed with RoPE, self-attention only). `is_causal` says that `mask`
        already hides every key after its query, which lets a kernel skip those blocks (with a cache only
        where its index is the Python int 0, a prefill: query t then sees columns <= t).

        With `cache` = {"k", "v": float[B, S_max, K, D], "index": int} (self-attention only) the new keys
        and values are written at columns index..index+T-1 and attention runs over all S_max columns
        (`mask` is then bool[B, T, S_max]), or, in a causal prefill (index the Python int 0), over the T new
        ones only; returns (float[B, T, out_dim], updated cache). Without a cache returns float[B, T, out_dim].
        """
        x_kv = x_q if x_kv is None else x_kv
        q = self._proj(self.num_heads, "heads", "query", self.qkv_bias)(x_q)
        k = self._proj(self.num_kv_heads, "kv_heads", "key", self.qkv_bias)(x_kv)
        v = self._proj(self.num_kv_heads, "kv_heads", "value", self.qkv_bias)(x_kv)
        if self.qk_norm_eps is not None:
            q = RMSNorm(self.qk_norm_eps, ("heads", "head_dim"), name="q_norm")(q)
            k = RMSNorm(self.qk_norm_eps, ("kv_heads", "head_dim"), name="k_norm")(k)
        if self.rope_theta is not None:
            q, k = rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta)
        kernel = attention_kernel(self.impl, q.dtype, self.head_dim)
        if cache is not None:
            index = cache["index"]
            k, v = k.astype(cache["k"].dtype), v.astype(cache["v"].dtype)
            cache = {"k": jax.lax.dynamic_update_slice(cache["k"], k, (0, index, 0, 0)),
                     "v": jax.lax.dynamic_update_slice(cache["v"], v, (0, index, 0, 0)), "index": index}
            if is_causal and isinstance(index, int) and index == 0:
                # a prefill: query t sees columns <= t < T, so it attends to the new keys, not the whole cache
                mask = None if mask is None else mask[..., :k.shape[1]]
            else:
                k, v, is_causal = cache["k"], cache["v"], False
        if self.probs_dropout and not self.deterministic:  # only our XLA path drops probabilities
            drop_probs = lambda p: nn.Dropout(self.probs_dropout, name="probs_dropout")(p, deterministic=False)
            out = dot_product_attention(q, k, v, mask, drop_probs)
        else:
            out = attend(q, k, v, mask, kernel, is_causal)
        out = Dense((self.out_dim,), ("heads", "head_dim"), ("embed",), self.out_bias, self.dtype,
                    self.param_dtype, self.init_scheme, name="out")(out)
        out = nn.Dropout(self.out_dropout, name="out_dropout")(out, deterministic=self.deterministic)
        return out if cache is None else (out, cache)


# On CPU, per-head score matrices of at least this many entries (512 KiB in float32, half a core's L2
# here) are computed one head at a time (see `dot_product_attention`).
HEAD_LOOP_MIN_SCORES = 2 ** 17


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                          drop_probs: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """softmax(q k^T / sqrt(D) + bias) v with float32 scores; masked keys get a finfo.min bias as in the
    official model. q: [B,T,H,D], k/v: [B,S,K,D] -> [B,T,H,D]. Heads-major layout: kv heads are repeated
    to H (XLA's CPU backend runs the grouped 5-D einsum 1.3-3x slower) and q, k, v are transposed to
    [B,H,*,D] before both matmuls (XLA:CPU runs them 1.3-2x slower on the [B,*,H,D] layout). `drop_probs`
    (training) is applied to the probabilities float32[B,H,T,S].

    On CPU without `drop_probs`, once a head's scores reach HEAD_LOOP_MIN_SCORES entries (the ViT's 577
    tokens at 336 px), the heads run one at a time (`lax.map` over rows, then heads): a head's
    float32[T,S] scores stay in a core's cache through the softmax and probs @ v, where all heads at once
    stream float32[B,H,T,S] through memory several times; the backward pass recomputes a head's scores
    (`jax.checkpoint`) instead of storing [B,H,T,S] probabilities. The same ops per head: forwards are
    equal bit for bit. Accelerators keep the batched form (one kernel per head would serialise them).
    """
    h, d = q.shape[2], q.shape[3]
    if k.shape[2] != h:
        k = jnp.repeat(k, h // k.shape[2], axis=2)
        v = jnp.repeat(v, h // v.shape[2], axis=2)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    q = q.astype(jnp.float32) / jnp.sqrt(jnp.float32(d))
    k = k.astype(jnp.float32)
    bias = None if mask is None else jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None]  # [B,1,T,S]
    per_head = q.shape[2] * k.shape[2] >= HEAD_LOOP_MIN_SCORES
    if drop_probs is not None or jax.default_backend() != "cpu" or not per_head:
        out = _softmax_attention(q, k, v, bias, drop_probs)
    else:
        # leading 1s keep every dot batched; the backward pass recomputes a head's scores
        @jax.checkpoint
        def one_head(q_h, k_h, v_h, bias_row):  # [T,D], [S,D], [S,D], [1,T,S] or None
            return _softmax_attention(q_h[None, None], k_h[None, None], v_h[None, None], bias_row)[0, 0]

        def one_row(row):  # [H,T,D], [H,S,D], [H,S,D], [1,T,S] or None
            q_row, k_row, v_row, bias_row = row
            return jax.lax.map(lambda qkv: one_head(*qkv, bias_row), (q_row, k_row, v_row))

        out = jax.lax.map(one_row, (q, k, v, bias))
    return out.transpose(0, 2, 1, 3)


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
                       drop_probs: Callable[[jax.Array], jax.Array] | None = None) -> jax.Array:
    """softmax(q k^T + bias) v over float[N,H,T,D] scaled float32 q, float32 k, v; bias broadcasts to
    [N,H,T,S]. Returns [N,H,T,D] in v's dtype.

    Without `drop_probs` the normalisation comes after probs @ v (exp(s - max) @ v / sum exp(s - max),
    flash attention's order): one division per output float32[T,D] instead of per score [T,S] (XLA:CPU,
    tiny 768-token text prefill: 1.1x on one thread, about 2x on two); outputs differ from
    softmax-then-matmul by float32 rounding only."""
    scores = einsum("bhtd,bhsd->bhts", q, k)
    if bias is not None:
        scores = scores + bias
    unnormalized = jnp.exp(scores - jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True)))
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    if drop_probs is None:
        out = einsum("bhts,bhsd->bhtd", unnormalized.astype(v.dtype), v)
        return (out.astype(jnp.float32) / total).astype(v.dtype)
    probs = drop_probs(unnormalized / total)
    return einsum("bhts,bhsd->bhtd", probs.astype(v.dtype), v)


def attention_kernel(impl: str, dtype: Dtype, head_dim: int, backend: str | None = None) -> str:
    """The kernel `impl` ("auto", "xla" or "fused") runs as for this backend, dtype and head dim:
    "ours" (`dot_product_attention`: float32 scores, the official model's numerics), "cudnn" (cuDNN flash
    attention through `jax.nn.dot_product_attention`) or "jax_xla" (`jax.nn.dot_product_attention`'s XLA
    implementation: scores in float32 from the inputs' dtype, so bf16 inputs use bf16 matmuls).

    "auto" keeps ours on CPU (XLA:CPU runs it as fast, and float32 parity needs it) and for float32
    compute anywhere; on accelerators in bf16 / fp16 it takes "fused". "fused" is cuDNN on a GPU when it
    supports the dtype (bf16 / fp16) and head dim (a multiple of 8, at most 128), else "jax_xla" (also on
    TPU: no Pallas kernel is wired in).
    """
    backend = backend or jax.default_backend()
    half = jnp.dtype(dtype) in HALF_DTYPES
    if impl == "auto":
        impl = "fused" if backend in ("gpu", "tpu") and half else "xla"
    if impl == "xla":
        return "ours"
    if impl != "fused":
        raise ValueError(f"attention impl {impl!r}: allowed {config_lib.ATTENTION_IMPLS}")
    return "cudnn" if backend == "gpu" and half and head_dim % 8 == 0 and head_dim <= 128 else "jax_xla"


CAUSAL_BLOCK = 128  # query block of ours with a causal mask


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, kernel: str,
           is_causal: bool = False) -> jax.Array:
    """Attention by `kernel` (see `attention_kernel`). q: [B,T,H,D], k/v: [B,S,K,D], mask: bool[B,T,S]
    (True = attend) -> [B,T,H,D] in q's dtype. `is_causal`: `mask` is already causal (query t sees keys
    <= t, T <= S; a fused kernel needs T == S); ours then
    runs blocks of CAUSAL_BLOCK queries on the keys up to the block's end only (the keys after it are
    masked for every query of the block: 2-3x faster at 768 tokens on XLA:CPU)."""
    if kernel == "ours":
        t = q.shape[1]
        if not is_causal or mask is None or t <= CAUSAL_BLOCK:
            return dot_product_attention(q, k, v, mask)
        return jnp.concatenate([dot_product_attention(q[:, i:i + CAUSAL_BLOCK], k[:, :i + CAUSAL_BLOCK],
                                                      v[:, :i + CAUSAL_BLOCK],
                                                      mask[:, i:i + CAUSAL_BLOCK, :i + CAUSAL_BLOCK])
                                for i in range(0, t, CAUSAL_BLOCK)], axis=1)
    mask = None if mask is None else mask[:, None]
    out = jax.nn.dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask, is_causal=is_causal,
                                       implementation="cudnn" if kernel == "cudnn" else "xla")
    return out.astype(q.dtype)


_policies = jax.checkpoint_policies
REMAT_POLICIES = {  # our dots are `einsum`s, saved by name; the fused attention's are plain dots
    "full": _policies.nothing_saveable,
    "dots": _policies.save_from_both_policies(_policies.dots_saveable,
                                              _policies.save_only_these_names(DOT, BATCHED_DOT)),
    "dots_no_batch": _policies.save_from_both_policies(_policies.dots_with_no_batch_dims_saveable,
                                                       _policies.save_only_these_names(DOT)),
}


def scanned(block_cls, n_layers: int, remat_policy: str, n_broadcast: int = 0, n_scanned: int = 0,
            unroll: int = 1):
    """`block_cls` stacked `n_layers` times under nn.scan (params get a leading "layers" axis).

    The block is called as block(carry, *broadcast_args, *scanned_args) -> (carry, per_layer_output).
    """
    if remat_policy != "none":
        block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[remat_policy], prevent_cse=False)
    in_axes = (nn.broadcast,) * n_broadcast + (0,) * n_scanned
    return nn.scan(block_cls, variable_axes={"params": 0, "intermediates": 0, "losses": 0},
                   split_rngs={"params": True, "dropout": True}, in_axes=in_axes, length=n_layers,
                   unroll=min(unroll, n_layers), metadata_params={nn.PARTITION_NAME: "layers"})
