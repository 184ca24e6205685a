"""Autoregressive generation with a KV cache: one prefill, then a `lax.while_loop` of decode steps.

The whole loop is one jitted function per shape bucket (batch, padded prompt length, crop slots,
max_new_tokens), so no token triggers a recompile. Prompts are right-padded with -1 (the collator's
layout); rows may have different lengths, crop counts or no image. As in the official `Molmo.generate`,
the first token comes from the logits at each row's last real token, new tokens are written after the
padding, and their positions continue from each row's last real position.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from molmo_jax import sharding
from molmo_jax.models.llm import unstack_layers
from molmo_jax.models.molmo import Molmo, default_positions, init_cache, real_crops


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to pick tokens. temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""
    max_new_tokens: int = 12
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    stop_ids: tuple[int, ...] = ()

    def __post_init__(self):
        for name, ok, allowed in (("max_new_tokens", self.max_new_tokens > 0, "> 0"),
                                  ("temperature", self.temperature >= 0, ">= 0"),
                                  ("top_k", self.top_k >= 0, ">= 0"),
                                  ("top_p", 0 < self.top_p <= 1, "in (0, 1]")):
            if not ok:
                raise ValueError(f"Sampling.{name}={getattr(self, name)!r} must be {allowed}")


def sample(logits: jax.Array, rng: jax.Array, sampling: Sampling) -> jax.Array:
    """logits: float[B, V] -> int32[B]."""
    if sampling.temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits.astype(jnp.float32) / sampling.temperature
    if sampling.top_k:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1:
        order = jnp.argsort(-logits, axis=-1)
        sorted_probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
        outside = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs > sampling.top_p
        drop = jnp.zeros_like(outside).at[jnp.arange(logits.shape[0])[:, None], order].set(outside)
        logits = jnp.where(drop, -jnp.inf, logits)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _generate(params, inputs: Mapping[str, jax.Array], rng: jax.Array, *, cfg, sampling: Sampling):
    """Jitted body. Returns int32[B, max_new_tokens]; positions after a row's stop token hold -1."""
    model = Molmo(cfg)
    ids = inputs["input_ids"]
    b, s = ids.shape
    n = sampling.max_new_tokens
    valid = ids != -1
    positions = default_positions(valid)
    last = jnp.sum(valid, axis=-1) - 1  # index of each row's last real token
    # On CPU the LLM layers run unrolled on per-layer weights: under the layer scan every decode step
    # copied every weight (see `Decoder`). Stacked weights are sliced once here (a copy of the layers'
    # params per call); `generation_params` gives them per layer without a copy.
    params, layers = _split_layers(params)
    cache = init_cache(cfg, b, s + n, per_layer=layers is not None)
    logits, cache = model.apply({"params": params}, ids, images=inputs.get("images"),
                                image_masks=inputs.get("image_masks"),
                                image_input_idx=inputs.get("image_input_idx"), position_ids=positions,
                                cache=cache, layer_params=layers, logits_at=last)
    rng, step_rng = jax.random.split(rng)
    token = sample(logits[:, 0], step_rng, sampling)
    next_position = jnp.take_along_axis(positions, last[:, None], axis=1) + 1
    stop_ids = jnp.asarray(sampling.stop_ids or (-2,), jnp.int32)
    tokens = jnp.full((b, n), -1, jnp.int32).at[:, 0].set(token)
    done = jnp.isin(token, stop_ids)

    def cond(state):
        t, _, _, _, done, _ = state
        return (t < n) & ~jnp.all(done)

    def step(state):
        t, tokens, token, cache, done, rng = state
        rng, step_rng = jax.random.split(rng)
        logits, cache = model.apply({"params": params}, token[:, None], position_ids=next_position + t - 1,
                                    cache=cache, layer_params=layers)
        new = sample(logits[:, -1], step_rng, sampling)
        new = jnp.where(done, -1, new)
        tokens = tokens.at[:, t].set(new)
        return t + 1, tokens, new, cache, done | jnp.isin(new, stop_ids), rng

    state = (jnp.int32(1), tokens, token, cache, done, rng)
    return jax.lax.while_loop(cond, step, state)[1]


_generate_jit = jax.jit(_generate, static_argnames=("cfg", "sampling"))


def _split_layers(params) -> tuple[dict, list | None]:
    """(params without the LLM blocks, their per-layer trees) where generation runs the layers unrolled
    (CPU, or blocks already per layer); (params, None) elsewhere (the layer scan on stacked blocks)."""
    blocks = params["llm"]["blocks"]
    if not isinstance(blocks, (list, tuple)):
        if jax.default_backend() != "cpu":
            return params, None
        blocks = unstack_layers(blocks)
    rest = {k: v for k, v in params["llm"].items() if k != "blocks"}
    return {**params, "llm": rest}, list(blocks)


def generation_params(params):
    """`params` as `generate` runs fastest on them when called repeatedly: on one CPU device the LLM
    blocks' stacked weights become one tree per layer (a tuple) that views the stacked buffers (no copy,
    no extra memory), so no call slices the weights again; elsewhere (other backends, sharded params)
    `params` unchanged. Only `generate` reads the result; keep `params` for anything else."""
    blocks = params["llm"]["blocks"]
    leaves, tree = jax.tree.flatten(blocks)
    if jax.default_backend() != "cpu" or any(len(x.sharding.device_set) != 1 for x in leaves):
        return params
    # np.asarray of a CPU array views its buffer; device_put of a view of it makes no copy either
    per_leaf = [[jax.device_put(row, *x.sharding.device_set) for row in np.asarray(x)] for x in leaves]
    layers = tuple(jax.tree.unflatten(tree, rows) for rows in zip(*per_leaf))
    return {**params, "llm": {**params["llm"], "blocks": layers}}


def bucket(length: int, multiple: int = 64) -> int:
    return -(-length // multiple) * multiple


def crop_bucket(crops: int, capacity: int) -> int:
    """The crop slots a batch whose rows hold at most `crops` real crops runs: the next power of two,
    at most `capacity` (the collated slots), so a model compiles at most log2(capacity) + 2 crop shapes."""
    return min(capacity, 1 << max(crops - 1, 0).bit_length())


MODEL_INPUTS = ("input_ids", "images", "image_masks", "image_input_idx")


def bucketed_inputs(inputs: Mapping[str, np.ndarray], multiple: int = 64) -> dict[str, np.ndarray]:
    """The model inputs of a collated batch in a few static shapes: input_ids right-padded with -1 to a
    multiple of `multiple`; the crop axis of images / image_masks / image_input_idx cut to
    `crop_bucket` of the slots holding real crops (the cut ones are padding crops, all -1, that no
    token reads: they would only cost ViT time). Other keys, e.g. labels, are dropped: they
    would add compiled shapes."""
    out = {k: inputs[k] for k in MODEL_INPUTS if k in inputs}
    ids = np.asarray(inputs["input_ids"])
    out["input_ids"] = np.pad(ids, ((0, 0), (0, bucket(ids.shape[1], multiple) - ids.shape[1])),
                              constant_values=-1).astype(np.int32)
    if "images" in out:
        images = np.asarray(out["images"])
        real = real_crops(images)  # bool[B, C]
        used = int(np.max(np.where(real, np.arange(1, real.shape[1] + 1), 0)))  # last real slot + 1
        slots = crop_bucket(used, images.shape[1])
        for k in MODEL_INPUTS[1:]:
            if k in out:
                out[k] = np.asarray(out[k])[:, :slots]
    return out


def seed_key(seed: int) -> jax.Array:
    """`jax.random.key(seed)`, made once per seed and current mesh (making one costs a dispatch, 0.1-0.3 ms
    on CPU; a key made under a mesh lives on that mesh's devices)."""
    return _seed_key(seed, jax.sharding.get_mesh())


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int, mesh) -> jax.Array:
    del mesh  # part of the cache key only
    return jax.random.key(seed)


def generate(cfg, params, inputs: Mapping[str, np.ndarray], sampling: Sampling = Sampling(),
             rng: jax.Array | int | None = None, mesh=None, length_multiple: int = 64) -> np.ndarray:
    """Generates up to `sampling.max_new_tokens` tokens for a batch of preprocessed, collated inputs.

    For repeated calls pass `cfg` as an `ml_collections.FrozenConfigDict` and `generation_params(params)`:
    both are otherwise prepared again on every call.
    inputs: {"input_ids": int[B, S] (-1 padded), optional "images", "image_masks", "image_input_idx"}.
    rng: a key, or a seed (default 0).
    Returns int32[B, max_new_tokens]: generated ids, the stop token included, -1 after it.
    With `mesh`, params must already be sharded on it; the batch is sharded over data x fsdp x expert,
    padded to a multiple of their size (any B works; the padding rows are dropped).
    """
    inputs = bucketed_inputs(inputs, length_multiple)
    rng = seed_key(rng or 0) if rng is None or isinstance(rng, int) else rng
    frozen = cfg if isinstance(cfg, ml_collections.FrozenConfigDict) else ml_collections.FrozenConfigDict(cfg)
    fn = functools.partial(_generate_jit, cfg=frozen, sampling=sampling)
    if mesh is None:
        return np.asarray(fn(params, inputs, rng))
    with sharding.use_mesh(mesh):
        return np.asarray(fn(params, sharding.shard_batch(inputs, mesh), rng))[:len(inputs["input_ids"])]


def trim(tokens: np.ndarray, stop_ids: tuple[int, ...] = ()) -> list[list[int]]:
    """Per row: the generated ids up to (excluding) the first stop token and without -1 padding."""
    rows = []
    for row in np.asarray(tokens):
        out = []
        for t in row:
            if t == -1 or t in stop_ids:
                break
            out.append(int(t))
        rows.append(out)
    return rows
