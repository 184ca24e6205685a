"""The OLMoE feed-forward: routing against a direct computation, auxiliary losses, expert-parallel meshes."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from molmo_jax import config, sharding
from molmo_jax.models.molmo import Molmo, abstract_params, aux_loss, init_params
from molmo_jax.models.moe import MoeMlp, blocked_experts, dense_experts, moe_kernel
from test_sharding import batch, small


def moe_cfg(**llm):
    cfg = config.tiny("olmoe")
    cfg.llm.update(llm)
    return config.validate(cfg)


def dense_reference(params, x, top_k):
    """Every expert on every token, combined with the un-renormalised top-k softmax weights."""
    p = jax.tree.map(np.asarray, params)
    logits = x @ p["router"]["kernel"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    out = np.zeros_like(x)
    for b, t in np.ndindex(x.shape[:2]):
        for e in np.argsort(-probs[b, t])[:top_k]:
            g = x[b, t] @ p["gate"][e]
            h = (g / (1 + np.exp(-g))) * (x[b, t] @ p["up"][e])
            out[b, t] += probs[b, t, e] * (h @ p["down"][e])
    return out, logits, probs


@pytest.mark.parametrize("impl", ["ragged", "blocked", "dense"])
def test_routing_matches_direct_computation(impl):
    cfg = moe_cfg(moe_impl=impl)
    x = np.random.default_rng(0).normal(size=(2, 5, cfg.llm.d_model)).astype(np.float32)
    params = MoeMlp(cfg).init(jax.random.key(0), x)["params"]
    params = jax.tree.map(lambda a: a * 10, nn.meta.unbox(params))
    expected, _, _ = dense_reference(params, x, cfg.llm.moe_top_k)
    np.testing.assert_allclose(MoeMlp(cfg).apply({"params": params}, x), expected, rtol=1e-5, atol=1e-5)


def test_paths_agree_with_gradients():
    """The grouped-matmul, blocked and dense-dispatch paths: same outputs, same gradients (params, input)."""
    x = np.random.default_rng(2).normal(size=(2, 7, moe_cfg().llm.d_model)).astype(np.float32)
    ct = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)
    params = nn.meta.unbox(MoeMlp(moe_cfg()).init(jax.random.key(1), x)["params"])
    results = {}
    for impl in ("ragged", "blocked", "dense"):
        module = MoeMlp(moe_cfg(moe_impl=impl))
        results[impl] = jax.value_and_grad(lambda p, v: jnp.sum(module.apply({"params": p}, v) * ct),
                                           argnums=(0, 1))(params, x)
    for impl in ("blocked", "dense"):
        for a, b in zip(jax.tree.leaves(results["ragged"]), jax.tree.leaves(results[impl])):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6, err_msg=impl)
    assert moe_kernel("auto", "cpu") == moe_kernel("auto", "cpu", expert_shards=1) == "blocked"
    assert moe_kernel("auto", "cpu", expert_shards=2) == "dense"
    assert moe_kernel("auto", "gpu", expert_shards=2) == moe_kernel("auto", "tpu") == "ragged"
    with sharding.use_mesh((1, 2, 1, 4)):
        assert moe_kernel("auto", "cpu") == "dense"


def test_blocked_path_with_groups_over_several_blocks_and_empty_experts():
    """Blocks of 3 rows: experts 0 and 1 take 7 and 8 of the 16 token copies (3 blocks each, the last part
    padding), expert 3 one, expert 2 none (one zero block left over); outputs and gradients (tokens, expert
    weights) equal the dense path's."""
    rng = np.random.default_rng(4)
    n, d, f, e = 8, 6, 5, 4
    experts = np.array([[1, 0]] * 3 + [[3, 1]] + [[0, 1]] * 4, np.int32)
    assert np.bincount(experts.ravel(), minlength=e).tolist() == [7, 8, 0, 1]
    tokens, weights = rng.normal(size=(n, d)).astype(np.float32), rng.uniform(size=(n, 2)).astype(np.float32)
    gate, up = jnp.asarray(rng.normal(size=(2, e, d, f)), jnp.float32)
    down = jnp.asarray(rng.normal(size=(e, f, d)), jnp.float32)
    ct = rng.normal(size=(n, d)).astype(np.float32)
    results = [jax.value_and_grad(lambda t, *w: jnp.sum(fn(t, weights, experts, *w) * ct), argnums=(0, 1, 2, 3))(
        tokens, gate, up, down) for fn in (lambda *a: blocked_experts(*a, block=3), dense_experts)]
    for a, b in zip(*map(jax.tree.leaves, results)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_auxiliary_losses():
    cfg = moe_cfg(moe_loss_weight=0.1, moe_zloss_weight=0.001)
    x = np.random.default_rng(1).normal(size=(2, 6, cfg.llm.d_model)).astype(np.float32)
    params = nn.meta.unbox(MoeMlp(cfg).init(jax.random.key(0), x)["params"])
    params = jax.tree.map(lambda a: a * 10, params)
    _, state = MoeMlp(cfg).apply({"params": params}, x, mutable=["losses"])
    _, logits, probs = dense_reference(params, x, cfg.llm.moe_top_k)
    e, k = cfg.llm.moe_num_experts, cfg.llm.moe_top_k
    top = np.argsort(-probs, axis=-1)[..., :k]
    fraction = np.bincount(top.ravel(), minlength=e) / top.size
    balance = 0.1 * e * np.sum(fraction * probs.mean(axis=(0, 1)))
    lse = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(state["losses"]["moe_load_balancing"][0], balance, rtol=1e-5)
    np.testing.assert_allclose(state["losses"]["moe_router_z"][0], 0.001 * np.mean(lse ** 2), rtol=1e-5)


def test_released_recipe_has_no_auxiliary_losses():
    cfg = config.get_config("MolmoE-1B-0924")
    assert cfg.llm.moe_loss_weight == cfg.llm.moe_zloss_weight == 0.0
    tiny = moe_cfg()
    x = np.ones((1, 3, tiny.llm.d_model), np.float32)
    params = MoeMlp(tiny).init(jax.random.key(0), x)["params"]
    _, state = MoeMlp(tiny).apply({"params": params}, x, mutable=["losses"])
    assert aux_loss(state) == 0.0


def loss_and_grads(cfg, params, inputs, mesh):
    def loss(p, kw):
        logits, state = Molmo(cfg).apply({"params": p}, **kw, mutable=["losses"])
        return jnp.mean(jnp.square(logits)) + aux_loss(state)
    shardings = sharding.param_shardings(abstract_params(cfg), mesh)
    params = jax.tree.map(jax.device_put, params, shardings)
    with sharding.use_mesh(mesh):
        value, grads = jax.jit(jax.value_and_grad(loss))(params, sharding.shard_batch(inputs, mesh))
    return float(value), grads


def test_expert_parallel_meshes_agree():
    """expert = 1, 2, 4 (experts split over the expert axis) give the same loss and gradients (text only:
    the image path has no experts)."""
    cfg = small("olmoe")
    cfg.llm.update(moe_loss_weight=0.01, moe_zloss_weight=0.001)
    params = jax.device_get(init_params(cfg, jax.random.key(0), sharding.make_mesh()))
    inputs = {"input_ids": batch(cfg)["input_ids"]}
    ref_loss, ref_grads = loss_and_grads(cfg, params, inputs, sharding.make_mesh((8, 1, 1, 1)))
    for shape in [(4, 1, 1, 2), (1, 2, 1, 4)]:
        value, grads = loss_and_grads(cfg, params, inputs, sharding.make_mesh(shape))
        assert grads["llm"]["blocks"]["moe"]["gate"].sharding.spec[1] == "expert"
        np.testing.assert_allclose(value, ref_loss, rtol=1e-5)
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
