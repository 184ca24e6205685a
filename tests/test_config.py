"""Released configs, validation errors and exact parameter counts (abstract shapes only)."""
from __future__ import annotations

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from fixture_cases import ROOT
from molmo_jax import config
from molmo_jax.models.molmo import abstract_params, param_count

def vit_l_23() -> int:
    """CLIP ViT-L/14-336 without its last layer and post-LN (launch_scripts/utils.py:DEFAULT_VISION_BACKBONE)."""
    w, mlp = 1024, 4096
    layer = 4 * (w * w + w) + (w * mlp + mlp + mlp * w + w) + 4 * w
    return 14 * 14 * 3 * w + w + 577 * w + 2 * w + 23 * layer


def expected_count(d, n_layers, n_heads, n_kv, hidden, embedding_size, qkv_bias, qk_norm, experts=0):
    """Closed form from the official module shapes (olmo/model.py), independent of our module tree."""
    kv = n_kv * (d // n_heads)
    attn = d * (d + 2 * kv) + (d + 2 * kv if qkv_bias else 0) + d * d
    norms = 2 * d + (d + kv if qk_norm else 0)
    ffn = experts * (3 * d * hidden + d) if experts else 3 * d * hidden
    llm = n_layers * (attn + norms + ffn) + (embedding_size + 128) * d + d + embedding_size * d
    pooling = 3 * (2048 * 1024 + 1024) + 1024 * 1024 + 1024
    connector = 2 * 2048 + pooling + 2 * 1024 * hidden + hidden * d
    return vit_l_23() + connector + llm


@pytest.mark.parametrize("name,expected", [
    ("MolmoE-1B-0924", expected_count(2048, 16, 16, 16, 1024, 50304, False, True, experts=64)),
    ("Molmo-7B-O-0924", expected_count(4096, 32, 32, 32, 11008, 100352, False, True)),
    ("Molmo-7B-D-0924", expected_count(3584, 28, 28, 4, 18944, 152064, True, False)),
    ("Molmo-72B-0924", expected_count(8192, 80, 64, 8, 29568, 152064, True, False)),
])
def test_released_param_counts(name, expected):
    assert param_count(config.get_config(name)) == expected


def test_7b_d_count_equals_released_index():
    """allenai/Molmo-7B-D-0924 model.safetensors.index.json: total_size 32,084,101,120 bytes of float32."""
    assert param_count(config.get_config("Molmo-7B-D-0924")) * 4 == 32_084_101_120


def test_vit_count():
    vit = nn.meta.unbox(abstract_params(config.get_config("Molmo-7B-D-0924")))["vit"]
    assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(vit)) == vit_l_23()


@pytest.mark.parametrize("field,value,match", [
    ("llm.d_model", -8, "llm.d_model=-8 is invalid: must be a positive integer"),
    ("llm.n_kv_heads", 3, r"llm.n_kv_heads=3 is invalid: must divide llm.n_heads=4"),
    ("llm.head_dim", 8, r"llm.head_dim=8 is invalid: llm.n_heads \* llm.head_dim must equal"),
    ("connector.pooling", "max", r"connector.pooling='max' is invalid: allowed: \("),
    ("connector.projector", "mlp3", "connector.projector='mlp3' is invalid: allowed"),
    ("vit.kind", "convnext", "vit.kind='convnext' is invalid: allowed"),
    ("llm.block_type", "llama", "llm.block_type='llama' is invalid: allowed"),
    ("preprocess.crop_mode", "patchify-v2-and-resize-c2", "preprocess.crop_mode=.* is invalid: allowed"),
    ("llm.embedding_size", 100, "llm.embedding_size=100 is invalid: must be >= llm.vocab_size=512"),
    ("llm.residual_dropout", 1.5, r"llm.residual_dropout=1.5 is invalid: must be in \[0, 1\)"),
    ("vit_layers", (-2, 40), r"vit_layers=\(-2, 40\) is invalid"),
    ("llm.remat_policy", "some", "llm.remat_policy='some' is invalid: allowed"),
    ("dtype", "int8", "dtype='int8' is invalid: allowed"),
    ("vit.init", "xavier", "vit.init='xavier' is invalid: allowed"),
    ("connector.init", "zeros", "connector.init='zeros' is invalid: allowed"),
    ("vit.pos_init_scale", 0.0, "vit.pos_init_scale=0.0 is invalid: must be > 0"),
])
def test_validation_names_field_and_allowed_values(field, value, match):
    cfg = config.tiny("qwen2")
    section, _, name = field.rpartition(".")
    target = cfg[section] if section else cfg
    with target.ignore_type():
        target[name] = value
    with pytest.raises(config.ConfigError, match=match):
        config.validate(cfg)


def test_pos_init_scale_scales_the_positional_embedding_only():
    from molmo_jax.models.molmo import init_params

    base, scaled = config.tiny("qwen2"), config.tiny("qwen2")
    scaled.vit.pos_init_scale = 4.0
    a, b = (jax.tree.map(np.asarray, nn.meta.unbox(init_params(c, jax.random.key(0)))) for c in (base, scaled))
    np.testing.assert_array_equal(b["vit"].pop("positional_embedding"), 4 * a["vit"].pop("positional_embedding"))
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_tiny_configs_validate():
    for family in ("qwen2", "olmo", "olmoe"):
        config.validate(config.tiny(family))


def test_unknown_model_name():
    with pytest.raises(config.ConfigError, match="unknown model 'Molmo-8B'"):
        config.get_config("Molmo-8B")


def test_official_unsupported_value_is_an_error():
    d = json.loads((ROOT / "qwen2_7b_d" / "config.json").read_text())
    d["clip_qkv"] = 8.0
    with pytest.raises(config.ConfigError, match="clip_qkv=8.0 is not supported"):
        config.from_official(d)
