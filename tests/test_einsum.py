"""`layers.einsum`, the one matmul of every tower: half-precision dots accumulate in float32 forward and
backward, its custom VJP gives the right gradients, and the remat policies still save its outputs."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.ad_checkpoint import print_saved_residuals

from molmo_jax.models import layers
from molmo_jax.models.molmo import Molmo, dummy_inputs
from molmo_jax.recipes import stage1

# the einsums of Dense, the attention's probabilities x values, and the dense MoE dispatch
SPECS = {"abc,cde->abde": ((2, 3, 8), (8, 4, 5)), "bhts,bshd->bthd": ((2, 4, 3, 6), (2, 6, 4, 5)),
         "nd,edf->enf": ((6, 8), (3, 8, 5)), "enf,efd->nd": ((3, 6, 5), (3, 5, 8))}


def test_bfloat16_model_dots_are_half_in_float32_out():
    """Every dot of the tiny model's bf16 loss gradient takes bf16 x bf16 and emits float32 (the
    attention scores take float32 q, k by design: the official numerics), the layout XLA:CPU has a fast
    kernel for; JAX's own transpose would emit float32 x float32 dots for the backward pass."""
    cfg = stage1.get_config("tiny").model
    cfg.dtype = "bfloat16"
    model = Molmo(cfg)
    inputs = dummy_inputs(cfg, batch=1, seq_len=16)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), **inputs))["params"]
    loss = lambda p: model.apply({"params": p}, **inputs).sum()
    text = jax.jit(jax.grad(loss)).lower(params).as_text()
    dots = re.findall(r"stablehlo\.dot_general .*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", text)
    kinds = {(a.split("x")[-1], b.split("x")[-1], out.split("x")[-1]) for a, b, out in dots}
    assert kinds == {("bf16>", "bf16>", "f32>"), ("f32>", "f32>", "f32>")}, kinds
    half = [d for d in dots if "bf16" in d[0]]
    assert len(half) >= 3 * (len(dots) - len(half))  # float32 only for the attention scores, fwd and bwd


@pytest.mark.parametrize("spec", SPECS)
def test_half_einsum_value_and_gradient(spec):
    """float32: the value is jnp.einsum's bit for bit, the gradients JAX's up to summation order. bf16: value
    and gradients agree with the float32 einsum of the same bf16 inputs within bf16 output rounding."""
    rng = np.random.default_rng(0)
    a, b = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in SPECS[spec])
    ct = jnp.asarray(rng.standard_normal(jnp.einsum(spec, a, b).shape), jnp.float32)
    out, pullback = jax.vjp(lambda x, y: layers.einsum(spec, x, y), a, b)
    want, want_pullback = jax.vjp(lambda x, y: jnp.einsum(spec, x, y), a, b)
    assert np.array_equal(out, want)
    for got, ref in zip(pullback(ct), want_pullback(ct)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)

    a16, b16, ct16 = (x.astype(jnp.bfloat16) for x in (a, b, ct))
    out, pullback = jax.vjp(lambda x, y: layers.einsum(spec, x, y), a16, b16)
    want, want_pullback = jax.vjp(lambda x, y: jnp.einsum(spec, x, y), *(x.astype(jnp.float32) for x in (a16, b16)))
    assert out.dtype == jnp.bfloat16
    for got, ref in zip((out, *pullback(ct16)), (want, *want_pullback(ct16.astype(jnp.float32)))):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=1e-2, atol=1e-2 * np.abs(ref).max())


@pytest.mark.parametrize("policy, saved", [("dots", 2), ("dots_no_batch", 1), ("full", 0)])
def test_remat_policies_save_half_dots(policy, saved, capsys):
    """A custom VJP hides its dot from `dots_saveable`: the named outputs keep "dots" saving both the
    Dense and the attention einsum and "dots_no_batch" only the Dense one."""
    a, w = jnp.ones((2, 8, 8), jnp.bfloat16), jnp.ones((8, 8), jnp.bfloat16)

    def block(x, kernel):
        h = jnp.tanh(layers.einsum("btc,cd->btd", x, kernel))
        return jnp.tanh(layers.einsum("bts,bsd->btd", h, h))

    print_saved_residuals(jax.checkpoint(block, policy=layers.REMAT_POLICIES[policy]), a, w)
    residuals = capsys.readouterr().out
    assert len(re.findall(r"named '(batched_)?dot'", residuals)) == saved, residuals
