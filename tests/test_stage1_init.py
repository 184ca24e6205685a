"""Stage 1 from pretrained towers: `init.vit` / `init.llm` name transformers directories.

Tiny random CLIP and Qwen2 models (test_hf_parity's) are written with `save_pretrained`; a stage-1 run
through `experiments/train.py` (zero steps: the state training starts from, exported with a small tokenizer
written here) must give ViT
features and LLM logits equal to transformers' to 1e-5, with the connector randomly initialised as
officially.
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers

from experiments import train
from molmo_jax import config, convert_base, io
from molmo_jax.config import ConfigError
from molmo_jax.models.molmo import Molmo, init_params
from molmo_jax.models.vit import VisionTransformer
from molmo_jax.recipes import stage1
from test_hf_parity import hf_clip, hf_llm, patchify, token_batch

TOL = dict(rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def towers(tmp_path_factory):
    """(CLIP directory, Qwen2 directory) written by transformers."""
    root = tmp_path_factory.mktemp("towers")
    hf_clip().save_pretrained(root / "clip")
    hf_llm("qwen2").save_pretrained(root / "qwen2")
    return root / "clip", root / "qwen2"


def write_tokenizer(path):
    """A word-level tokenizer.json small enough for the tiny vocabulary (an export holds a tokenizer)."""
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel({"<|endoftext|>": 0, "a": 1}, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def stage1_config(vit, llm):
    cfg = stage1.get_config("tiny")
    cfg.model = convert_base.config_from_hf(hf_llm("qwen2").config, hf_clip().config, base=config.tiny("qwen2"),
                                           vit_layers=(-1, -3))
    cfg.init.update(vit=str(vit), llm=str(llm))
    cfg.optim.steps = 0
    return cfg


def test_stage1_starts_from_the_pretrained_towers(towers, tmp_path):
    cfg = stage1_config(*towers)
    stage1.check_init(cfg)
    cfg.mesh = (-1, 1, 1)  # data parallel over the test devices: the params stay whole
    cfg.data.tokenizer = str(write_tokenizer(tmp_path / "tokenizer.json"))
    params = train.run(cfg, str(tmp_path / "run"), ["native"])["params"]

    pixels = np.random.default_rng(1).normal(size=(2, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        hidden = hf_clip()(pixel_values=torch.tensor(pixels), output_hidden_states=True).hidden_states
    features = np.asarray(jax.jit(VisionTransformer(cfg.model).apply)({"params": params["vit"]},
                                                                      patchify(pixels, 14)))
    for i, layer in enumerate(cfg.model.vit_layers):
        np.testing.assert_allclose(features[i], hidden[layer % cfg.model.vit.n_layers + 1].numpy(), **TOL)

    ids, valid = token_batch()
    with torch.no_grad():
        expected = hf_llm("qwen2")(input_ids=torch.tensor(np.maximum(ids, 0)),
                                   attention_mask=torch.tensor(valid.astype(np.int64))).logits.numpy()
    logits = np.asarray(jax.jit(Molmo(cfg.model).apply)({"params": {"llm": params["llm"]}}, ids))
    np.testing.assert_allclose(logits[valid], expected[valid], **TOL)

    exported = io.load_params(tmp_path / "run" / "export" / "native", cfg.model)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(exported), jax.device_get(params))

    params_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))[0]  # trainer.initial_state's init key
    fresh = init_params(cfg.model, params_rng)["connector"]
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(params["connector"]), jax.device_get(fresh))


def test_released_stage1_configs_name_their_towers():
    for name, llm in stage1.BASE_MODELS.items():
        cfg = stage1.get_config(name)
        assert (cfg.init.vit, cfg.init.llm) == (stage1.placeholder(stage1.VIT_BASE), stage1.placeholder(llm))
        with pytest.raises(ValueError, match=r"^init\.vit is not set: pass --config\.init\.vit=DIR, a local or "
                                             r"gs:// copy of openai/clip-vit-large-patch14-336"):
            stage1.check_init(cfg)
        cfg.init.vit = "/models/clip"
        with pytest.raises(ValueError, match=f"init.llm is not set: .* copy of {llm} "):
            stage1.check_init(cfg)
    assert stage1.get_config("tiny").init.to_dict() == dict(vit="", llm="")
    cfg.init.llm, cfg.init_from = "/models/Qwen2-7B", "/runs/s1/checkpoints"
    with pytest.raises(ValueError, match=r"^init_from='/runs/s1/checkpoints' and init.vit / init.llm are both set"):
        stage1.check_init(cfg)


def test_towers_that_do_not_fit_the_config(towers, tmp_path):
    clip, qwen2 = towers
    cfg = stage1_config(clip, qwen2)
    cfg.model.vit.n_heads = cfg.model.vit.n_kv_heads = 2
    cfg.model.vit.head_dim = 32
    with pytest.raises(ConfigError, match=r"does not match the HF CLIP vision tower: vit\.n_heads=2 \(HF: 4\)"):
        convert_base.init_params_from_hf_dirs(cfg.model, jax.random.key(0), vit=clip)
    with pytest.raises(ConfigError, match=r"model_type 'qwen2' is not a CLIP vision tower"):
        convert_base.init_params_from_hf_dirs(cfg.model, jax.random.key(0), vit=qwen2)
    with pytest.raises(ValueError, match=f"{tmp_path}: no config.json, not a Hugging Face model directory"):
        convert_base.init_params_from_hf_dirs(cfg.model, jax.random.key(0), llm=tmp_path)


# The released base models' architectures: the config.json values of their hub repos (Qwen/Qwen2-7B, ...).
RELEASED_TOWERS = {
    "Molmo-7B-D-0924": (transformers.Qwen2Config, dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, rms_norm_eps=1e-6, rope_theta=1e6, vocab_size=152064)),
    "Molmo-72B-0924": (transformers.Qwen2Config, dict(
        hidden_size=8192, intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=1e6, vocab_size=152064)),
    "Molmo-7B-O-0924": (transformers.Olmo2Config, dict(
        hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=32, rms_norm_eps=1e-6, rope_theta=5e5, vocab_size=100352)),
    "MolmoE-1B-0924": (transformers.OlmoeConfig, dict(
        hidden_size=2048, intermediate_size=1024, num_hidden_layers=16, num_attention_heads=16,
        num_key_value_heads=16, rms_norm_eps=1e-5, rope_theta=1e4, vocab_size=50304, num_experts=64,
        num_experts_per_tok=8, norm_topk_prob=False)),
}
CLIP_L_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5)


@pytest.mark.parametrize("name", list(RELEASED_TOWERS))
def test_released_configs_fit_their_base_towers(name):
    """`init_params_from_hf_dirs` would accept the real towers: every released model's config agrees with
    CLIP ViT-L/14-336 and its base LLM's architecture (configs only, no weights)."""
    cls, fields = RELEASED_TOWERS[name]
    model = stage1.get_config(name).model
    convert_base.check_llm_config(model, cls(**fields, tie_word_embeddings=False))
    convert_base.check_vit_config(model, transformers.CLIPVisionConfig(**CLIP_L_336))
