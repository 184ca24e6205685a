"""Every official pooling type and projector type, and the three padding-embedding modes, against numpy."""
from __future__ import annotations

import itertools

import flax.linen as nn
import jax
import numpy as np
import pytest

from molmo_jax import config
from molmo_jax.models import connector
from molmo_jax.models.connector import POOLINGS, Connector, StackPool, register_pooling

B, T = 2, 3


def connector_cfg(pooling="attention_meanq", projector="mlp", padding="pad_and_partial_pad", pool=2):
    cfg = config.tiny("qwen2")
    cfg.connector.update(pooling=pooling, projector=projector, padding_embed=padding, pooling_h=pool,
                         pooling_w=pool)
    if projector == "2mlp":  # the residual MLP needs pooled width == LLM width
        cfg.llm.update(d_model=cfg.vit.d_model * (2 if pooling == "attention_2wide" else 1))
        cfg.llm.update(head_dim=cfg.llm.d_model // cfg.llm.n_heads)
    return config.validate(cfg)


def features(cfg, seed=0):
    rng = np.random.default_rng(seed)
    p = int(np.prod(config.patch_grid(cfg)))
    c = cfg.vit.d_model * len(cfg.vit_layers)
    masks = rng.choice([0.0, 0.25, 1.0, -1.0], (B, T, p)).astype(np.float32)
    return rng.normal(size=(B, T, p, c)).astype(np.float32), masks


def run(cfg, x, masks, scale=1.0):
    model = Connector(cfg)
    params = nn.meta.unbox(model.init(jax.random.key(0), x, masks)["params"])
    params = jax.tree.map(lambda a: a + scale * np.random.default_rng(1).normal(size=a.shape), params)
    out, state = model.apply({"params": params}, x, masks, mutable=["intermediates"])
    return params, np.asarray(out), np.asarray(state["intermediates"]["pooled_features"][0])


VALID = [(pool, proj) for pool, proj in itertools.product(
    ["attention_meanq", "attention", "attention_2wide", "stack"], ["mlp", "linear", "2mlp"])
    if not (proj == "2mlp" and pool == "stack")] + [("none", "mlp"), ("none", "linear")]


@pytest.mark.parametrize("pooling,projector", VALID)
def test_every_pooling_and_projector_runs(pooling, projector):
    cfg = connector_cfg(pooling, projector, pool=1 if pooling == "none" else 2)
    x, masks = features(cfg)
    _, out, pooled = run(cfg, x, masks)
    n = int(np.prod(config.pooled_grid(cfg)))
    assert out.shape == (B, T, n, cfg.llm.d_model) and np.isfinite(out).all()
    assert pooled.shape == (B, T, n, config.pooled_dim(cfg))


def windows(cfg, x):
    gh, gw = config.patch_grid(cfg)
    g = x.reshape(B, T, gh // 2, 2, gw // 2, 2, -1).transpose(0, 1, 2, 4, 3, 5, 6)
    return g.reshape(B, T, (gh // 2) * (gw // 2), 4, -1)  # members in (dh, dw) order


def attention_pool_reference(p, query, keys, heads):
    """Multi-head attention of one query over the window members, with biases, softmax in float64."""
    def proj(name, x):
        return np.einsum("...c,chd->...hd", x, p[name]["kernel"]) + p[name]["bias"]
    q, k, v = proj("query", query), proj("key", keys), proj("value", keys)
    d = q.shape[-1]
    w = np.einsum("...hd,...khd->...hk", q, k) / np.sqrt(d)
    w = np.exp(w - w.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("...hk,...khd->...hd", w, v)
    return np.einsum("...hd,hdc->...c", out, p["out"]["kernel"]) + p["out"]["bias"]


@pytest.mark.parametrize("pooling", ["attention_meanq", "attention"])
def test_attention_pooling_against_numpy(pooling):
    cfg = connector_cfg(pooling, padding=None)
    x, masks = features(cfg)
    params, _, pooled = run(cfg, x, masks, scale=0.1)
    win = windows(cfg, x.astype(np.float64))
    query = win.mean(axis=3) if pooling == "attention_meanq" else win[:, :, :, 0]
    p = jax.tree.map(np.asarray, params["pooling"]["attention"])
    expected = attention_pool_reference(p, query, win, cfg.vit.n_heads)
    np.testing.assert_allclose(pooled, expected, rtol=1e-4, atol=1e-4)


def test_stack_pooling_concatenates_in_window_order():
    cfg = connector_cfg("stack", "linear", padding=None)
    x, masks = features(cfg)
    _, _, pooled = run(cfg, x, masks)
    np.testing.assert_array_equal(pooled, windows(cfg, x).reshape(B, T, -1, 4 * x.shape[-1]))


@pytest.mark.parametrize("padding", ["pad_and_partial_pad", "pad_embed", "regress"])
def test_padding_embeddings(padding):
    cfg = connector_cfg("stack", "linear", padding=padding)
    x, masks = features(cfg)
    params, _, pooled = run(cfg, x, masks)
    pad = np.asarray(params["pad_embed"])
    m = masks[..., None]
    if padding == "pad_and_partial_pad":  # -1 (the official off-by-one row) counts as partial padding
        expected = x + pad[0] * (m == 0) + pad[1] * ((m < 1) & (m != 0))
    elif padding == "pad_embed":
        expected = x + pad * (m == 0)
    else:
        expected = x + pad * np.maximum(m, 0)
    np.testing.assert_allclose(pooled, windows(cfg, expected).reshape(B, T, -1, 4 * x.shape[-1]), rtol=1e-6)


def test_projector_mlp_is_swiglu():
    cfg = connector_cfg("stack", "mlp", padding=None)
    x, masks = features(cfg)
    params, out, pooled = run(cfg, x, masks, scale=0.05)
    p = jax.tree.map(np.asarray, params["projector"]["mlp"])
    gate = pooled @ p["gate"]["kernel"]
    expected = (gate / (1 + np.exp(-gate)) * (pooled @ p["up"]["kernel"])) @ p["down"]["kernel"]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


class FirstMember(StackPool):
    """An ablation pooling: keep the top-left member of each window."""

    def __call__(self, windows):
        return windows[:, 0]


def test_registered_pooling_is_usable_from_config(monkeypatch):
    monkeypatch.setattr(connector, "POOLINGS", dict(POOLINGS))
    register_pooling("first_member", lambda cfg, name: FirstMember(cfg, name=name))
    cfg = connector_cfg("first_member", "linear", padding=None)
    x, masks = features(cfg)
    _, _, pooled = run(cfg, x, masks)
    np.testing.assert_array_equal(pooled, windows(cfg, x)[:, :, :, 0])


def test_registered_width_is_what_validation_and_the_planner_use(monkeypatch):
    """`config.pooled_dim`, the 2mlp check and `plan.connector_bytes` read the registered width."""
    from molmo_jax import plan
    monkeypatch.setattr(connector, "POOLINGS", dict(POOLINGS))
    register_pooling("first_member", lambda cfg, name: FirstMember(cfg, name=name))
    cfg = connector_cfg("first_member", "linear", padding=None)
    c_in = connector.input_width(cfg)
    assert config.pooled_dim(cfg) == c_in  # the default width
    narrow = plan.connector_bytes(cfg, 1, 4, 1)
    register_pooling("first_member", lambda cfg, name: FirstMember(cfg, name=name), width=lambda cfg: 3 * c_in)
    assert config.pooled_dim(cfg) == 3 * c_in
    assert plan.connector_bytes(cfg, 1, 4, 1) - narrow == 4 * int(np.prod(config.pooled_grid(cfg))) * 2 * c_in
    cfg.connector.projector = "2mlp"
    with pytest.raises(config.ConfigError, match=f"the pooled width {3 * c_in} must equal"):
        config.validate(cfg)


def test_fan_in_init_keeps_image_features_at_unit_scale():
    """The narrow-model failure `kernel_init` documents: through the official N(0, 0.02^2) pooling and gated
    projector, unit-scale patch features come out ~1e-5; fan-in init keeps them O(1)."""
    def image_feature_std(init):
        cfg = connector_cfg(padding=None)
        cfg.connector.init = init
        x, masks = features(cfg)
        model = Connector(cfg)
        return float(np.std(model.apply(model.init(jax.random.key(0), x, masks), x, masks)))

    assert image_feature_std("normal") < 1e-3
    assert 0.1 < image_feature_std("fan_in") < 10


def test_fan_in_kernel_std_counts_every_contracted_dim():
    from molmo_jax.models.layers import kernel_init
    kernel = kernel_init("fan_in", 2, 1)(jax.random.key(0), (16, 32, 64))  # e.g. an attention output [H, D, C]
    assert abs(float(np.std(kernel)) * np.sqrt(16 * 32) - 1) < 0.05
    with pytest.raises(ValueError, match="init scheme 'he'"):
        kernel_init("he", 1, 1)


@pytest.mark.parametrize("pooling,projector", [("attention_meanq", "mlp"), ("attention_2wide", "2mlp"),
                                               ("stack", "linear")])
def test_param_axis_names_are_distinct(pooling, projector):
    """A kernel naming one logical axis twice cannot be sharded (flax refuses it under the rules)."""
    cfg = connector_cfg(pooling, projector, padding=None)
    x, masks = features(cfg)
    boxed = Connector(cfg).init(jax.random.key(0), x, masks)["params"]
    names = [leaf.names for leaf in jax.tree.leaves(boxed, is_leaf=lambda l: isinstance(l, nn.Partitioned))]
    assert names and all(len(set(n) - {None}) == len([a for a in n if a is not None]) for n in names), names


def test_fan_in_vit_image_tokens_carry_their_position():
    """A blank image's tokens differ only by their position. With the official N(0, 1/d) positional
    embeddings under a fan-in patch embedding they were nearly equal (spread 0.05 of their norm at PixMo-lite's
    width 64), so the LLM could hardly tell where anything is; fan-in positions are unit-variance (0.45)."""
    from molmo_jax.models.molmo import Molmo, init_params
    from molmo_jax.recipes import lite

    cfg = lite.model_config()
    patches = int(np.prod(config.patch_grid(cfg)))
    blank = np.ones((1, 1, patches, cfg.vit.patch_size ** 2 * 3), np.float32)  # every patch the same
    tokens = np.asarray(Molmo(cfg).apply({"params": init_params(cfg, jax.random.key(0))}, blank, blank[..., 0],
                                         method=Molmo.encode_images))[0, 0]  # [N, d]
    spread = np.linalg.norm(tokens - tokens.mean(0), axis=-1).mean() / np.linalg.norm(tokens, axis=-1).mean()
    assert spread > 0.1, spread
