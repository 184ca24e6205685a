"""Training dropout where the official model applies it: LLM attention probabilities, the vision
attention outputs (ViT blocks and attention pooling), the padded image features. Deterministic mode is
the model without dropout; train mode is checked against numpy references of each site."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from molmo_jax import config
from molmo_jax.models.connector import Connector
from molmo_jax.models.layers import Attention
from molmo_jax.models.molmo import Molmo, dummy_inputs, init_params

RATE = 0.5


def _dropped(train: np.ndarray, full: np.ndarray, rate: float = RATE, rtol: float = 1e-5) -> np.ndarray:
    """Asserts `train` is inverted dropout of `full` (each entry 0 or full / keep, both seen) -> kept mask."""
    kept = train != 0
    np.testing.assert_allclose(train[kept], full[kept] / (1 - rate), rtol=rtol, atol=1e-6)
    assert 0.3 < kept.mean() < 0.7, kept.mean()
    return kept


def _attention(**kw) -> Attention:
    return Attention(num_heads=2, num_kv_heads=2, head_dim=8, out_dim=16, qkv_bias=True, init_scheme="fan_in",
                     **kw)


def _attention_params():
    x = np.random.default_rng(0).normal(size=(3, 6, 16)).astype(np.float32)
    params = _attention().init(jax.random.key(0), x)["params"]
    return nn.meta.unbox(params), x


def test_attention_dropout_drops_the_probabilities():
    """Recovers the probabilities the output was computed with (inverse output projection, least squares
    over the values) and compares them with numpy softmax(q k^T / sqrt(D))."""
    params, x = _attention_params()
    y = np.asarray(_attention(probs_dropout=RATE, deterministic=False).apply({"params": params}, x, rngs={"dropout": jax.random.key(3)}), np.float64)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    proj = lambda name: np.einsum("btc,chd->bthd", x, p[name]["kernel"]) + p[name]["bias"]
    q, k, v = proj("query"), proj("key"), proj("value")
    scores = np.einsum("bthd,bshd->bhts", q, k) / np.sqrt(8)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = np.linalg.solve(p["out"]["kernel"].reshape(16, 16).T, y.reshape(-1, 16).T).T.reshape(3, 6, 2, 8)
    dropped = np.stack([np.linalg.lstsq(v[b, :, h].T, context[b, :, h].T, rcond=None)[0].T
                        for b in range(3) for h in range(2)]).reshape(3, 2, 6, 6)
    dropped = np.where(np.abs(dropped) < 1e-4, 0.0, dropped)
    # recovered from float32 outputs through two solves: 3e-5 relative error seen on an AVX2 CPU
    _dropped(dropped, probs, rtol=1e-4)


def test_attention_output_dropout_and_deterministic_mode():
    params, x = _attention_params()
    full = np.asarray(_attention().apply({"params": params}, x))
    deterministic = _attention(out_dropout=RATE, probs_dropout=RATE)  # the default mode
    np.testing.assert_array_equal(np.asarray(deterministic.apply({"params": params}, x)), full)
    train = _attention(out_dropout=RATE, deterministic=False)
    _dropped(np.asarray(train.apply({"params": params}, x, rngs={"dropout": jax.random.key(1)})), full)


def _connector_cfg(pooling: str, pool: int, feature_dropout=0.0, vit_dropout=0.0):
    cfg = config.tiny("qwen2")
    cfg.connector.update(pooling=pooling, pooling_h=pool, pooling_w=pool, padding_embed=None,
                         feature_dropout=feature_dropout)
    cfg.vit.dropout = vit_dropout
    return config.validate(cfg)


def _pooled(cfg, deterministic: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 2, int(np.prod(config.patch_grid(cfg))), 2 * cfg.vit.d_model)).astype(np.float32)
    params = Connector(cfg).init(jax.random.key(0), x, None)["params"]
    _, state = Connector(cfg, deterministic).apply({"params": params}, x, None, mutable=["intermediates"],
                                                   rngs={"dropout": jax.random.key(2)})
    return np.asarray(state["intermediates"]["pooled_features"][0]), x


def test_image_feature_dropout_before_pooling():
    """With 1x1 "none" pooling the pooled features are the (dropped) padded ViT features themselves."""
    train, x = _pooled(_connector_cfg("none", 1, feature_dropout=RATE), deterministic=False)
    _dropped(train, x.reshape(train.shape))
    det, _ = _pooled(_connector_cfg("none", 1, feature_dropout=RATE), deterministic=True)
    np.testing.assert_array_equal(det, x.reshape(det.shape))


def test_attention_pooling_output_gets_the_vision_dropout():
    full, _ = _pooled(_connector_cfg("attention_meanq", 2), deterministic=False)
    train, _ = _pooled(_connector_cfg("attention_meanq", 2, vit_dropout=RATE), deterministic=False)
    _dropped(train, full)


@functools.lru_cache(maxsize=None)
def _tiny():
    cfg = config.tiny("qwen2")
    cfg.vit.n_layers, cfg.vit_layers, cfg.preprocess.max_crops = 3, (-1, -3), 1
    cfg.vit.image_size = (56, 56)  # 4x4 patches: 4 pooled tokens per crop
    cfg = config.validate(cfg)
    params = init_params(cfg, jax.random.key(0))
    inputs = dummy_inputs(cfg, batch=2, seq_len=24)
    rng = np.random.default_rng(0)
    inputs["input_ids"] = rng.integers(0, cfg.llm.vocab_size, (2, 24)).astype(np.int32)
    inputs["images"] = rng.uniform(-1, 1, inputs["images"].shape).astype(np.float32)
    inputs["image_input_idx"][:, 0, :] = np.arange(1, 5)
    return cfg, params, inputs


_FORWARDS = {}


def _logits(cfg, params, inputs, deterministic=True, key=0):
    """Jitted once per (config, mode); the dropout key is an argument."""
    fn = _FORWARDS.setdefault((cfg.to_json(), deterministic), jax.jit(
        lambda p, x, k: Molmo(cfg, deterministic).apply({"params": p}, **x, rngs={"dropout": k})))
    return np.asarray(fn(params, inputs, jax.random.key(key)))


def _with(cfg, **rates):
    out = cfg.copy_and_resolve_references()
    for site, rate in rates.items():
        section, field = site.split("__")
        out[section][field] = rate
    return out


def test_model_dropout_is_training_only_and_seeded():
    cfg, params, inputs = _tiny()
    base = _logits(cfg, params, inputs)
    np.testing.assert_array_equal(_logits(cfg, params, inputs, deterministic=False), base)  # all rates 0
    every = _with(cfg, llm__attention_dropout=0.3, vit__dropout=0.3, connector__feature_dropout=0.3)
    np.testing.assert_array_equal(_logits(every, params, inputs), base)
    for site in ("llm__attention_dropout", "vit__dropout", "connector__feature_dropout"):
        dropped = _with(cfg, **{site: 0.3})
        train = _logits(dropped, params, inputs, deterministic=False)
        assert not np.allclose(train, base), site
        np.testing.assert_array_equal(_logits(dropped, params, inputs, deterministic=False), train, err_msg=site)
        assert not np.allclose(_logits(dropped, params, inputs, deterministic=False, key=1), train), site
    image_side = _with(cfg, vit__dropout=0.3, connector__feature_dropout=0.3)
    text = {"input_ids": inputs["input_ids"]}  # image-side dropout leaves a text-only forward untouched
    np.testing.assert_array_equal(_logits(image_side, params, text, deterministic=False), _logits(cfg, params, text))


def test_released_molmoe_trains_with_attention_dropout():
    assert config.molmoe_1b().llm.attention_dropout == 0.1
