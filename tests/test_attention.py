"""`llm.attention_impl`: the fused path (`jax.nn.dot_product_attention`, its XLA implementation on CPU)
computes what our float32-score path computes, for causal, packed (subsegment ids) and KV-cached calls
of one attention layer and through the whole model (ViT, pooling, LLM); bf16 compute stays within a
stated tolerance of float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from molmo_jax import config
from molmo_jax.models import layers
from molmo_jax.models.layers import Attention, attention_kernel
from molmo_jax.models.molmo import Molmo, attention_mask, default_positions, dummy_inputs, init_params

F32_TOL = 1e-5  # both compute float32 scores; only the order of the scaling differs (measured: 2.4e-7)
# bf16 compute (inputs, q/k/v and probabilities rounded to 8 mantissa bits) vs float32: at most 1% of the
# largest float32 output (measured: 0.39%, both paths; bf16's unit roundoff is 0.39%).
BF16_REL_TOL = 1e-2


@pytest.mark.parametrize("impl, dtype, backend, head_dim, kernel", [
    ("auto", "float32", "cpu", 64, "ours"), ("auto", "bfloat16", "cpu", 64, "ours"),
    ("auto", "float32", "gpu", 64, "ours"), ("auto", "bfloat16", "gpu", 64, "cudnn"),
    ("auto", "bfloat16", "tpu", 64, "jax_xla"), ("fused", "float32", "gpu", 64, "jax_xla"),
    ("fused", "bfloat16", "gpu", 36, "jax_xla"), ("fused", "bfloat16", "cpu", 64, "jax_xla"),
    ("xla", "bfloat16", "gpu", 128, "ours")])
def test_kernel_choice(impl, dtype, backend, head_dim, kernel):
    assert attention_kernel(impl, jnp.dtype(dtype), head_dim, backend) == kernel


def _cfg(impl: str, dtype: str = "float32"):
    cfg = config.tiny("qwen2")
    cfg.llm.attention_impl = impl
    cfg.dtype = dtype
    return config.validate(cfg)


B, T, H, K, D = 2, 16, 4, 2, 16
PACKED = np.array([9] * 4 + [0] * 6 + [1] * 6, np.int32)  # a prefix seen by both, then two conversations


def _attention_cases(impl: str, dtype: str, params=None):
    """(params, {case: float32 outputs}) of one GQA + RoPE attention layer, for a causal call with right
    padding, a packed call and a prefill + one decode step through the KV cache."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(B, T, 32)).astype(np.float32)
    valid = np.ones((B, T), bool)
    valid[1, -3:] = False
    positions = default_positions(valid)
    layer = Attention(H, K, D, 32, rope_theta=10_000.0, dtype=jnp.dtype(dtype), init_scheme="fan_in", impl=impl)
    params = params or layer.init(jax.random.key(0), x, mask=attention_mask(valid, T), positions=positions)
    call = jax.jit(lambda x, mask, pos, cache=None: layer.apply(params, x, mask=mask, positions=pos, cache=cache,
                                                                is_causal=cache is None))
    out = {"causal": call(x, attention_mask(valid, T), positions),
           "packed": call(x, attention_mask(valid, T, 0, np.stack([PACKED] * B)),
                          np.stack([np.r_[np.arange(10), np.arange(4, 10)]] * B))}
    cache = {"k": jnp.zeros((B, T + 1, K, D), dtype), "v": jnp.zeros((B, T + 1, K, D), dtype), "index": 0}
    key_valid = np.zeros((B, T + 1), bool)
    key_valid[:, :T] = valid
    out["prefill"], cache = call(x, attention_mask(key_valid, T, 0), positions, cache)
    key_valid[:, T] = True
    step = {**cache, "index": T}
    out["decode"], _ = call(x[:, :1], attention_mask(key_valid, 1, T), positions[:, -1:] + 1, step)
    return params, {k: np.asarray(v, np.float32)[valid if v.shape[1] == T else slice(None)] for k, v in out.items()}


@pytest.fixture(scope="module")
def reference():
    return _attention_cases("xla", "float32")


def test_fused_layer_equals_ours_float32(reference):
    params, ours = reference
    _, fused = _attention_cases("fused", "float32", params)
    for case in ours:
        np.testing.assert_allclose(fused[case], ours[case], atol=F32_TOL, rtol=0, err_msg=case)
    assert np.abs(ours["packed"] - ours["causal"]).max() > 1e-2  # packing does change the result


@pytest.mark.parametrize("impl", ["xla", "fused"])
def test_layer_bfloat16_within_tolerance(reference, impl):
    params, ours = reference
    _, low = _attention_cases(impl, "bfloat16", params)
    for case in ours:
        diff = np.abs(low[case] - ours[case]).max()
        assert diff < BF16_REL_TOL * np.abs(ours[case]).max(), (case, diff)


def test_fused_model_equals_ours():
    """The whole model (ViT, attention pooling, packed LLM) with either implementation."""
    params = init_params(_cfg("xla"), jax.random.key(0))
    rng = np.random.default_rng(1)
    inputs = dummy_inputs(_cfg("xla"), batch=1, seq_len=T, crops=1)
    inputs["images"] = rng.normal(size=inputs["images"].shape).astype(np.float32)
    inputs["image_input_idx"][0, 0, :2] = [1, 2]
    inputs.update(input_ids=rng.integers(0, 100, (1, T)).astype(np.int32), subsegment_ids=PACKED[None],
                  position_ids=np.r_[np.arange(10), np.arange(4, 10)][None].astype(np.int32))
    logits = {impl: np.asarray(jax.jit(Molmo(_cfg(impl)).apply)({"params": params}, **inputs))
              for impl in ("xla", "fused")}
    np.testing.assert_allclose(logits["fused"], logits["xla"], atol=F32_TOL, rtol=0)


def test_causal_blocks_equal_one_causal_softmax():
    """Ours with a causal mask runs query blocks on the keys up to each block's end: the same outputs as
    one softmax over every key, for right-padded rows and a length that is no multiple of the block."""
    t = layers.CAUSAL_BLOCK + 37
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, t, h, D)).astype(np.float32)) for h in (H, K, K))
    valid = np.arange(t)[None] < np.array([[t], [t - 50]])
    mask = attention_mask(jnp.asarray(valid), t)
    blocked = layers.attend(q, k, v, mask, "ours", is_causal=True)
    np.testing.assert_allclose(blocked, layers.dot_product_attention(q, k, v, mask), rtol=0, atol=F32_TOL)


@pytest.mark.parametrize("masked", [False, True])
def test_head_loop_equals_batched_heads(monkeypatch, masked):
    """Ours on CPU runs large score matrices one head at a time (`HEAD_LOOP_MIN_SCORES`), recomputing them
    in the backward pass: the same jitted outputs bit for bit and the same gradients as all heads at once,
    with and without a (padded, causal) mask and with grouped kv heads."""
    t = 40
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(2, t, h, D)).astype(np.float32)) for h in (H, K, K))
    mask = attention_mask(jnp.asarray(np.arange(t)[None] < np.array([[t], [t - 9]])), t) if masked else None
    results = {}
    for name, min_scores in (("batched", t * t + 1), ("per_head", t * t)):
        monkeypatch.setattr(layers, "HEAD_LOOP_MIN_SCORES", min_scores)
        loss = lambda q, k, v: jnp.sum(jnp.sin(layers.dot_product_attention(q, k, v, mask)))  # new: no trace cache
        results[name] = (jax.jit(layers.dot_product_attention)(q, k, v, mask),
                         jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v))
        assert ("scan[" in str(jax.make_jaxpr(loss)(q, k, v))) == (name == "per_head")  # the path taken
    np.testing.assert_array_equal(results["per_head"][0], results["batched"][0])
    for got, want in zip(results["per_head"][1], results["batched"][1], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6 * float(jnp.abs(want).max()))
