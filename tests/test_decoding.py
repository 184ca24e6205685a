"""KV-cache generation: official greedy tokens, cache == recomputation, batch == rows, sampling filters."""
from __future__ import annotations

import functools

import jax
import ml_collections
import numpy as np
import pytest

from fixture_cases import case_id
from molmo_jax import config
from molmo_jax.decoding import Sampling, generate, generation_params, sample
from molmo_jax.models import layers
from molmo_jax.models.layers import dot_product_attention
from molmo_jax.models.llm import Decoder, unstack_layers
from molmo_jax.models.molmo import Molmo, dummy_inputs, init_cache, init_params
from test_official_parity import BATCH_CASES, SINGLE_CASES, batch_images, load_arrays, load_model, model_inputs

EOS = 0


@pytest.mark.parametrize("pair", SINGLE_CASES + BATCH_CASES, ids=case_id)
def test_greedy_matches_official(pair):
    arrays = load_arrays(*pair)
    cfg, params, _ = load_model(pair[0])
    if "input_ids" in arrays:
        inputs = dict(input_ids=arrays["input_ids"].astype(np.int32), images=batch_images(pair[0], arrays),
                      image_masks=arrays["image_masks"], image_input_idx=arrays["image_input_idx"])
        expected = arrays["generated_ids"]
    else:
        inputs, expected = model_inputs(arrays), arrays["generated_ids"][None]
    tokens = generate(cfg, params, inputs, Sampling(max_new_tokens=expected.shape[1], stop_ids=(EOS,)))
    np.testing.assert_array_equal(tokens, expected)


@functools.lru_cache(maxsize=None)
def tiny_model(family: str):
    cfg = config.tiny(family)
    cfg.vit.n_layers, cfg.vit_layers, cfg.preprocess.max_crops = 3, (-1, -3), 1
    params = init_params(cfg, jax.random.key(1), config_mesh())
    params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(jax.random.key(2), x.shape), params)
    return config.validate(cfg), params


def config_mesh():
    from molmo_jax.sharding import make_mesh
    return make_mesh()


def prompts(cfg, lengths=(11, 7), images=(True, False)) -> dict[str, np.ndarray]:
    """Right-padded prompts of different lengths; some rows with an image, some without."""
    rng = np.random.default_rng(3)
    n, s = len(lengths), max(lengths)
    inputs = dummy_inputs(cfg, batch=n, seq_len=s)
    inputs["input_ids"] = np.full((n, s), -1, np.int32)
    inputs["images"] = rng.normal(size=inputs["images"].shape).astype(np.float32)
    for i, (length, with_image) in enumerate(zip(lengths, images)):
        inputs["input_ids"][i, :length] = rng.integers(1, cfg.llm.vocab_size, length)
        if with_image:
            inputs["image_input_idx"][i, 1, :4] = np.arange(1, 5)
        else:
            inputs["images"][i] = -1
    return inputs


@pytest.mark.parametrize("family,batch,per_layer", [("qwen2", 1, False), ("qwen2", 2, False), ("olmo", 1, False),
                                                    ("olmo", 2, False), ("olmoe", 1, False), ("olmoe", 2, False),
                                                    ("qwen2", 2, True)])
def test_cached_decoding_equals_recomputation(family, batch, per_layer):
    """The KV cache, stacked under the layer scan or per layer on unstacked weights (generation on CPU;
    OLMoE's per-layer path: test_greedy_matches_official)."""
    cfg, params = tiny_model(family)
    inputs = {k: v[:batch] for k, v in prompts(cfg).items()}
    model = Molmo(cfg)
    forward = jax.jit(lambda p, kw: model.apply({"params": p}, **kw))
    layers = {"layer_params": unstack_layers(params["llm"]["blocks"])} if per_layer else {}
    new = np.random.default_rng(4).integers(1, cfg.llm.vocab_size, (batch, 3)).astype(np.int32)
    s = inputs["input_ids"].shape[1]
    cache = init_cache(cfg, batch, s + new.shape[1], per_layer=per_layer)
    logits, cache = forward(params, {**inputs, "cache": cache, **layers})
    positions = np.asarray(np.sum(inputs["input_ids"] != -1, axis=1))[:, None]
    stepped = [logits]
    for t in range(new.shape[1]):
        step_logits, cache = forward(params, {"input_ids": new[:, t:t + 1], "position_ids": positions + t,
                                              "cache": cache, **layers})
        stepped.append(step_logits)
    full = forward(params, {**inputs, "input_ids": np.concatenate([inputs["input_ids"], new], 1)})
    np.testing.assert_allclose(np.concatenate(stepped, axis=1), full, rtol=1e-5, atol=1e-5)


def test_per_layer_path_refuses_a_model_that_draws_dropout():
    """The per-layer loop's blocks draw no dropout: a training-mode decoder is refused, not run without it."""
    cfg, params = tiny_model("qwen2")
    x, positions = np.zeros((1, 4, cfg.llm.d_model), np.float32), np.arange(4)[None]
    with pytest.raises(ValueError, match="needs a deterministic model"):
        Decoder(cfg, deterministic=False).apply({"params": params["llm"]}, x, None, positions,
                                                cache=init_cache(cfg, 1, 5, per_layer=True),
                                                layer_params=unstack_layers(params["llm"]["blocks"]),
                                                rngs={"dropout": jax.random.key(0)})


@pytest.mark.parametrize("per_layer", [True, False])
def test_prefill_on_a_fresh_cache_runs_causal_blocks_with_the_same_logits(monkeypatch, per_layer):
    """A prefill (cache index the Python int 0) longer than CAUSAL_BLOCK runs ours in causal query blocks
    on its own keys, not the whole cache, with the logits of the forward without a cache: on per-layer
    weights (generation on CPU) and under the layer scan (elsewhere)."""
    cfg, params = tiny_model("qwen2")
    inputs = prompts(cfg, lengths=(40, 29))
    monkeypatch.setattr(layers, "CAUSAL_BLOCK", 16)
    calls, keys = [], []
    monkeypatch.setattr(layers, "dot_product_attention", lambda q, k, *a, **kw: calls.append(q.shape[1]) or
                        keys.append(k.shape[1]) or dot_product_attention(q, k, *a, **kw))
    model, s = Molmo(cfg), inputs["input_ids"].shape[1]
    layer_params = unstack_layers(params["llm"]["blocks"]) if per_layer else None
    prefill = jax.jit(lambda kw: model.apply({"params": params}, **kw, layer_params=layer_params,
                                             cache=init_cache(cfg, 2, s + 4, per_layer=per_layer))[0])
    cached = np.asarray(prefill(inputs))
    assert {16, 8} <= set(calls)  # the LLM's 40 queries as blocks of 16, 16 and 8
    assert {16, 32, 40} <= set(keys) and s + 4 not in keys  # each block's keys end at the prompt, not the cache
    np.testing.assert_allclose(cached, jax.jit(lambda kw: model.apply({"params": params}, **kw))(inputs),
                               rtol=1e-5, atol=1e-5)


def test_logits_at_gives_each_rows_logits_at_its_position():
    """Generation's prefill runs the output head on each row's last real token only (`logits_at`)."""
    cfg, params = tiny_model("qwen2")
    inputs, at = prompts(cfg), np.array([10, 6], np.int32)
    forward = jax.jit(lambda kw: Molmo(cfg).apply({"params": params}, **kw))
    full = np.asarray(forward(inputs))
    np.testing.assert_allclose(forward({**inputs, "logits_at": at})[:, 0], full[np.arange(2), at], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("family", ["qwen2", "olmoe"])
def test_batch_gives_the_same_tokens_as_rows(family):
    cfg, params = tiny_model(family)
    inputs = prompts(cfg, lengths=(12, 5, 9), images=(True, False, True))
    sampling = Sampling(max_new_tokens=6)
    together = generate(cfg, params, inputs, sampling, length_multiple=8)
    for i in range(3):
        row = {k: v[i:i + 1] for k, v in inputs.items()}
        np.testing.assert_array_equal(generate(cfg, params, row, sampling, length_multiple=8)[0], together[i])


def test_generation_params_view_the_stacked_weights_and_give_the_same_tokens():
    """`generation_params` (what MolmoBundle generates with) holds the LLM blocks per layer as views of the
    stacked buffers, so no second copy of the weights; they, and a frozen config, give the same tokens."""
    cfg, params = tiny_model("qwen2")
    prepared = generation_params(params)
    layers = prepared["llm"]["blocks"]
    assert isinstance(layers, tuple) and len(layers) == cfg.llm.n_layers
    per_layer = zip(*(jax.tree.leaves(layer) for layer in layers))
    for stacked, rows in zip(jax.tree.leaves(params["llm"]["blocks"]), per_layer, strict=True):
        np.testing.assert_array_equal(np.stack(rows), stacked)
        assert [r.unsafe_buffer_pointer() for r in rows] == \
            [stacked.unsafe_buffer_pointer() + i * rows[0].nbytes for i in range(len(rows))]
    inputs, sampling = prompts(cfg), Sampling(max_new_tokens=5)
    np.testing.assert_array_equal(generate(ml_collections.FrozenConfigDict(cfg), prepared, inputs, sampling),
                                  generate(cfg, params, inputs, sampling))


def test_the_default_seed_follows_the_current_mesh():
    """Generating under one mesh and then under another (as training hooks do, inside the trainer's mesh)
    with the default seed: the key made under the first mesh is not reused on the second's devices."""
    from jax.sharding import NamedSharding, PartitionSpec

    from molmo_jax import sharding
    cfg, params = tiny_model("qwen2")
    inputs, sampling = prompts(cfg), Sampling(max_new_tokens=3)
    with sharding.use_mesh((1, -1, 1)) as every_device:
        on_all = generate(cfg, jax.device_put(params, NamedSharding(every_device, PartitionSpec())), inputs, sampling)
    with sharding.use_mesh((1, 1, 1)) as one:
        on_one = generate(cfg, jax.device_put(params, NamedSharding(one, PartitionSpec())), inputs, sampling)
    np.testing.assert_array_equal(on_one, on_all)


def with_padding_crops(inputs: dict[str, np.ndarray], extra: int) -> dict[str, np.ndarray]:
    """`inputs` with `extra` trailing padding crop slots (all -1), as `collate(..., max_crops=...)` adds."""
    pad = lambda x: np.concatenate([x, np.full((x.shape[0], extra) + x.shape[2:], -1, x.dtype)], axis=1)
    return {k: pad(v) if k in ("images", "image_masks", "image_input_idx") else v for k, v in inputs.items()}


def test_prompt_lengths_and_padding_crops_reuse_the_compiled_program():
    """Batches differing only in prompt length (within a bucket) or in trailing padding crops run one
    compiled program, with the same tokens: the padding crops are cut before the ViT, not run through it."""
    cfg, params = tiny_model("qwen2")
    sampling = Sampling(max_new_tokens=3)
    first = prompts(cfg, lengths=(11, 7))
    expected = generate(cfg, params, first, sampling, length_multiple=16)
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        padded = generate(cfg, params, with_padding_crops(first, 3), sampling, length_multiple=16)
        generate(cfg, params, with_padding_crops(prompts(cfg, lengths=(13, 9)), 2), sampling, length_multiple=16)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    np.testing.assert_array_equal(padded, expected)
    assert not compiles, f"{len(compiles)} programs compiled for batches of an already compiled shape bucket"


def test_stop_token_ends_row_and_pads_with_minus_one():
    cfg, params = tiny_model("qwen2")
    inputs = prompts(cfg)
    free = generate(cfg, params, inputs, Sampling(max_new_tokens=5))
    stop = int(free[0, 1])
    stopped = generate(cfg, params, inputs, Sampling(max_new_tokens=5, stop_ids=(stop,)))
    assert stopped[0, 1] == stop and (stopped[0, 2:] == -1).all()
    np.testing.assert_array_equal(stopped[0, :2], free[0, :2])


def test_sampling_filters():
    logits = jax.numpy.asarray(np.random.default_rng(5).normal(size=(4, 50)).astype(np.float32))
    greedy = np.argmax(np.asarray(logits), axis=-1)
    key = jax.random.key(7)
    np.testing.assert_array_equal(sample(logits, key, Sampling(temperature=1.0, top_k=1)), greedy)
    np.testing.assert_array_equal(sample(logits, key, Sampling(temperature=1.0, top_p=1e-6)), greedy)
    top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
    for seed in range(20):
        picked = np.asarray(sample(logits, jax.random.key(seed), Sampling(temperature=2.0, top_k=5)))
        assert all(p in row for p, row in zip(picked, top5))
    a = sample(logits, key, Sampling(temperature=1.0))
    np.testing.assert_array_equal(a, sample(logits, key, Sampling(temperature=1.0)))


@pytest.mark.parametrize("field,value", [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0)])
def test_bad_sampling_values(field, value):
    with pytest.raises(ValueError, match=f"Sampling.{field}="):
        Sampling(**{field: value})
