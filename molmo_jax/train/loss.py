"""Token losses of the official trainer (`olmo/train.py`): weighted cross entropy plus z-loss."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                  z_loss: float = 0.0) -> tuple[jax.Array, jax.Array]:
    """Per-token weighted CE (+ z_loss * logsumexp^2) on positions with weight > 0.

    logits: float[B, T, V] (computed in float32); targets: int[B, T] (already shifted, as the
    preprocessor emits them); weights: float[B, T] loss-mask values. Returns (per_token float[B, T],
    total_weight) so callers can normalise by a global sum of weights.
    """
    logits = logits.astype(jnp.float32)
    w = jnp.where(weights > 0, weights, 0.0).astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(
        logits, jnp.clip(targets, 0, logits.shape[-1] - 1)[..., None], axis=-1)[..., 0]
    per_token = (lse - target_logit + z_loss * jnp.square(lse)) * w
    return per_token, jnp.sum(w)
