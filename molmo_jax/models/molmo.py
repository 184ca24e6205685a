"""The whole Molmo model: encode image crops, add them to the <im_patch> token embeddings, decode.

`Molmo(cfg)` is a linen module whose params are a plain pytree with three top-level parts:
`vit`, `connector` and `llm`. Named intermediates (ViT features, pooled and projected image features,
input embeddings, per-layer hidden states) are sown under "intermediates" for parity tests and probes:
`model.apply(params, ..., mutable=["intermediates"])`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from molmo_jax import config as config_lib
from molmo_jax import sharding
from molmo_jax.models.connector import Connector
from molmo_jax.models.llm import Decoder
from molmo_jax.models.llm import init_cache as llm_init_cache
from molmo_jax.models.vit import VisionTransformer


def attention_mask(key_valid: jax.Array, num_queries: int, query_start: jax.Array | int = 0,
                   subsegment_ids: jax.Array | None = None) -> jax.Array:
    """bool[B, T, S]: query t (at column query_start + t) sees key column s <= its own where key_valid[b, s].

    key_valid: bool[B, S]. For packed conversations (subsegment ids; no cache, so T == S) query i also
    needs sub[j] >= sub[i]: every conversation sees BOS + image + itself, never another conversation.
    """
    s = key_valid.shape[1]
    query_cols = query_start + jnp.arange(num_queries)
    mask = (jnp.arange(s)[None, :] <= query_cols[:, None])[None] & key_valid[:, None, :]
    if subsegment_ids is not None:
        mask &= (subsegment_ids[:, :, None] <= subsegment_ids[:, None, :]) & key_valid[:, :, None]
    return mask


def real_crops(images):
    """bool[...]: which crops of images float[..., P, p*p*3] (numpy or jax) are real, not padding (all -1)."""
    return ~(images == -1).all(axis=(-2, -1))


def default_positions(valid: jax.Array) -> jax.Array:
    """int[B, T] positions counting valid tokens only (left- and right-padding safe)."""
    return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def add_image_features(x: jax.Array, features: jax.Array, image_input_idx: jax.Array) -> jax.Array:
    """Adds image token features at their sequence positions.

    x: float[B, T, d]; features: float[B, C, N, d]; image_input_idx: int[B, C, N] (negative = unused).
    """
    b, t, d = x.shape
    idx = image_input_idx.reshape(b, -1)
    idx = jnp.where(idx >= 0, idx, t)  # out of range: dropped
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], idx.shape)
    return x.at[rows, idx].add(features.reshape(b, -1, d).astype(x.dtype), mode="drop")


class Molmo(nn.Module):
    cfg: Any
    deterministic: bool = True

    def setup(self):
        self.vit = VisionTransformer(self.cfg, self.deterministic)
        self.connector = Connector(self.cfg, self.deterministic)
        self.llm = Decoder(self.cfg, self.deterministic)

    def encode_images(self, images: jax.Array, image_masks: jax.Array | None) -> jax.Array:
        """images: float[B, C, P, p*p*3] crops (all -1 = padding crop); image_masks: float[B, C, P].

        Returns float[B, C, N, d]: N pooled tokens per crop in the LLM width. With `vit.crop_budget` =
        K < B * C the real crops are gathered into K slots (as a batch of one row of K crops) and only
        those run through the ViT and the connector (padding crops get zeros: no token reads them); a
        batch with more than K real crops runs every slot instead (`lax.cond`: one branch executes), so
        the logits never depend on the budget.
        """
        b, c = images.shape[:2]
        budget = self.cfg.vit.crop_budget
        if not budget or budget >= b * c:
            return self._encode_crops(images, image_masks)
        flat = images.reshape(b * c, *images.shape[2:])
        flat_masks = None if image_masks is None else image_masks.reshape(b * c, -1)
        real = real_crops(flat)
        (slots,) = jnp.nonzero(real, size=budget, fill_value=b * c)  # unused slots: out of range

        def gathered(module):
            take = lambda x: None if x is None else jnp.take(x, slots, axis=0, mode="fill", fill_value=-1)[None]
            features = module._encode_crops(take(flat), take(flat_masks))[0]
            out = jnp.zeros((b * c,) + features.shape[1:], features.dtype).at[slots].set(features, mode="drop")
            return out.reshape(b, c, *features.shape[1:])

        every_slot = lambda module: module._encode_crops(images, image_masks)
        return nn.cond(jnp.sum(real) <= budget, gathered, every_slot, self)

    def _encode_crops(self, images: jax.Array, image_masks: jax.Array | None) -> jax.Array:
        """images: float[B, C, P, p*p*3]; image_masks: float[B, C, P] -> float[B, C, N, d]."""
        b, c, p, _ = images.shape
        flat = images.reshape(b * c, p, -1)
        layers = self.vit(flat)  # [L, B*C, prefix + P, width]
        self.sow("intermediates", "vit_features", layers)
        features = jnp.concatenate(list(layers), axis=-1)[:, config_lib.num_prefix_tokens(self.cfg):]
        features = features * real_crops(flat)[:, None, None].astype(features.dtype)
        features = self.connector(features.reshape(b, c, p, -1), image_masks)
        self.sow("intermediates", "image_features", features)
        return features

    def __call__(self, input_ids: jax.Array, images: jax.Array | None = None,
                 image_masks: jax.Array | None = None, image_input_idx: jax.Array | None = None,
                 position_ids: jax.Array | None = None, subsegment_ids: jax.Array | None = None,
                 response_mask: jax.Array | None = None, cache: dict | None = None, layer_params=None,
                 logits_at: jax.Array | None = None):
        """input_ids: int[B, T] (-1 = padding) -> float32[B, T, embedding_size] logits.

        The optional arrays are the preprocessor's: images float[B, C, P, 588], image_masks
        float[B, C, P], image_input_idx int[B, C, N], position_ids / subsegment_ids int[B, T],
        response_mask float[B, T] (only read by response-token residual dropout in training).
        With `cache` (from `init_cache`) the tokens are written at the cache's index and
        (logits, updated cache) is returned; position_ids are then required after the first call.
        `layer_params`: the LLM layers' params unstacked, for a per-layer cache (see `Decoder`).
        `logits_at` int[B]: the logits at that position of each row only, float32[B, 1, embedding_size].
        """
        valid = input_ids != -1
        t = input_ids.shape[1]
        if cache is None:
            key_valid, start = valid, 0
        else:
            key_valid = jax.lax.dynamic_update_slice(cache["valid"], valid, (0, cache["index"]))
            start = cache["index"]
        if position_ids is None:
            if subsegment_ids is not None:
                raise ValueError("position_ids must be given together with subsegment_ids")
            position_ids = default_positions(valid)
        x = self.llm.embed(input_ids)
        if images is not None:
            x = add_image_features(x, self.encode_images(images, image_masks), image_input_idx)
        self.sow("intermediates", "input_embeddings", x)
        if not self.deterministic and self.cfg.llm.embedding_dropout > 0:
            x = nn.Dropout(self.cfg.llm.embedding_dropout)(x, deterministic=False)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        mask = attention_mask(key_valid, t, start, subsegment_ids)
        if cache is None:
            return self.llm(x, mask, position_ids, response_mask, logits_at=logits_at)
        logits, llm_cache = self.llm(x, mask, position_ids, response_mask, cache=cache, layer_params=layer_params,
                                     logits_at=logits_at)
        return logits, {**llm_cache, "valid": key_valid}


def init_cache(cfg, batch: int, max_len: int, per_layer: bool = False) -> dict:
    """An empty cache for `Molmo(...)(..., cache=...)`: per-layer k/v float[L, B, max_len, K, D] (or
    tuples of L float[B, max_len, K, D]: see `llm.init_cache`), valid bool[B, max_len] (which columns
    hold real tokens) and the write index."""
    return {**llm_init_cache(cfg, batch, max_len, per_layer), "valid": jnp.zeros((batch, max_len), bool)}


def aux_loss(state: dict) -> jax.Array:
    """Sum of the auxiliary losses sown by `model.apply(..., mutable=["losses"])`, each averaged over layers."""
    leaves = jax.tree.leaves(state.get("losses", {}))
    return sum((jnp.mean(x) for x in leaves), jnp.float32(0))


def dummy_inputs(cfg, batch: int = 1, seq_len: int = 16, with_images: bool = True,
                 crops: int | None = None) -> dict[str, np.ndarray]:
    """Shape-correct model inputs (for init / eval_shape); `crops` defaults to every crop of the config."""
    inputs = {"input_ids": np.zeros((batch, seq_len), np.int32)}
    if with_images:
        crops = crops or config_lib.max_total_crops(cfg)
        patches = int(np.prod(config_lib.patch_grid(cfg)))
        n_tokens = int(np.prod(config_lib.pooled_grid(cfg)))
        inputs["images"] = np.zeros((batch, crops, patches, cfg.vit.patch_size ** 2 * 3), np.float32)
        if cfg.connector.padding_embed:
            inputs["image_masks"] = np.ones((batch, crops, patches), np.float32)
        inputs["image_input_idx"] = np.full((batch, crops, n_tokens), -1, np.int32)
    return inputs


_ABSTRACT: dict[str, Any] = {}
_INIT: dict[tuple[str, Mesh], Any] = {}


def _key(cfg) -> str:
    return cfg.to_json_best_effort(sort_keys=True)


def abstract_params(cfg) -> Any:
    """Boxed (logically partitioned) ShapeDtypeStructs of the params; allocates nothing. Memoised per config."""
    key = _key(cfg)
    if key not in _ABSTRACT:
        model = Molmo(cfg)
        _ABSTRACT[key] = jax.eval_shape(lambda rng: model.init(rng, **dummy_inputs(cfg, seq_len=1, crops=1)),
                                        jax.random.key(0))["params"]
    return _ABSTRACT[key]


def param_count(cfg) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nn.meta.unbox(abstract_params(cfg))))


def init_params(cfg, rng: jax.Array, mesh: Mesh | None = None) -> Any:
    """Randomly initialised params, created directly in their shardings on `mesh` (default: 1 device).

    The jitted initialiser is compiled once per (config, mesh).
    """
    mesh = mesh or sharding.make_mesh()
    key = (_key(cfg), mesh)
    if key not in _INIT:
        shardings = sharding.param_shardings(abstract_params(cfg), mesh)
        model = Molmo(cfg)
        init = lambda r: nn.meta.unbox(model.init(r, **dummy_inputs(cfg, seq_len=1, crops=1))["params"])
        _INIT[key] = jax.jit(init, out_shardings=shardings)
    with sharding.use_mesh(mesh):
        return _INIT[key](rng)
