"""The official Molmo optimizer (`olmo/optim.py`) in optax: three components, each with its own LR
schedule and its own gradient clipping, AdamW with the official no-decay set.

Components (`Molmo.get_{connector,vit,llm}_parameters`): connector = `connector/*` plus the LLM's new
token rows `llm/embedder/new_embedding`; vit = `vit/*`; llm = the rest of `llm/*`.
No weight decay (`Molmo.get_weight_decay_exclusions`, substring match on the official names) on:
embeddings (`wte` = our `embedder`), every norm (`attn_norm`, `ff_norm`, `ln_f` = `final_norm`,
`pre_ln`, `attention_norm`, `ffn_norm`), `positional_embedding`, `class_embedding`. Biases decay.

Optimizer step k (the official `global_step`, 1-based, incremented BEFORE the update) uses lr(k), so the
first update already moves the params by lr(1) = peak / warmup.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from molmo_jax.config import COMPONENTS

# Official exclusions with our names for `wte` (embedder) and `ln_f` (final_norm).
NO_DECAY = ("embedder", "attn_norm", "ff_norm", "final_norm", "pre_ln", "attention_norm", "ffn_norm",
            "lambda1", "lambda2", "positional_embedding", "class_embedding")
CLIP_EPS = 1e-6


def path_str(path) -> str:
    """'llm/blocks/mlp/up/kernel' for a tree_util key path."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def component_of(path: str) -> str:
    """The optimizer component of one param path."""
    if path.startswith("connector/") or path == "llm/embedder/new_embedding":
        return "connector"
    top = path.split("/", 1)[0]
    if top not in COMPONENTS:
        raise ValueError(f"param {path!r} belongs to no optimizer component {COMPONENTS}")
    return top


def component_labels(params) -> Any:
    """Same tree as params with "connector" / "vit" / "llm" leaves."""
    return jax.tree_util.tree_map_with_path(lambda p, _: component_of(path_str(p)), params)


def decay_mask(params) -> Any:
    """Same tree as params: True where weight decay applies."""
    return jax.tree_util.tree_map_with_path(
        lambda p, _: not any(name in path_str(p) for name in NO_DECAY), params)


def cosine_with_warmup(peak: float, warmup: int, total: int, alpha_f: float = 0.1) -> optax.Schedule:
    """Official `CosWithWarmup(warmup_min_lr=0)` as an optax schedule of the update count (0-based).

    lr(s) = peak * s / W for s < W; eta + (peak - eta) * (1 + cos(pi (s - W) / (T - W))) / 2 for
    W <= s < T; eta = alpha_f * peak afterwards; evaluated at s = count + 1 (see module docstring).
    """
    eta = alpha_f * peak

    def schedule(count):
        s = jnp.asarray(count, jnp.float32) + 1.0
        warm = peak * jnp.minimum(s, warmup) / max(warmup, 1)
        frac = (s - warmup) / max(total - warmup, 1)
        cos = eta + (peak - eta) * (1.0 + jnp.cos(jnp.pi * frac)) / 2.0
        return jnp.where(s < warmup, warm, jnp.where(s >= total, eta, cos))

    return schedule


def component_norms(grads, labels) -> dict[str, jax.Array]:
    """Global L2 norm (float32) of the grads of each component."""
    sq = {c: jnp.zeros((), jnp.float32) for c in COMPONENTS}
    for g, c in zip(jax.tree.leaves(grads), jax.tree.leaves(labels)):
        sq[c] = sq[c] + jnp.sum(jnp.square(g.astype(jnp.float32)))
    return {c: jnp.sqrt(v) for c, v in sq.items()}


def clip_by_component_norm(label_fn, max_norm: float) -> optax.GradientTransformation:
    """Scales each component's grads by min(1, max_norm / (norm + 1e-6)) (`_do_global_fixed_clipping`)."""

    def update(updates, state, params=None):
        labels = label_fn(updates)
        coef = {c: jnp.minimum(1.0, max_norm / (n + CLIP_EPS)) for c, n in component_norms(updates, labels).items()}
        clipped = jax.tree.map(lambda g, c: (g * coef[c]).astype(g.dtype), updates, labels)
        return clipped, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class Optimizer(NamedTuple):
    """The optax transformation plus the per-component schedules (for logging learning rates)."""
    tx: optax.GradientTransformation
    schedules: Mapping[str, optax.Schedule]

    def learning_rates(self, count) -> dict[str, jax.Array]:
        """LR of each component used by update number `count` (0-based)."""
        return {c: s(count) for c, s in self.schedules.items()}


def make(optim) -> Optimizer:
    """The optimizer of an `optim` config section (see molmo_jax/recipes/common.py: optimizer).

    Fields: steps, alpha_f, b1, b2, eps, max_grad_norm and per component `lr.<c>`, `warmup.<c>`,
    `weight_decay.<c>`.
    """
    schedules = {c: cosine_with_warmup(optim.lr[c], optim.warmup[c], optim.steps, optim.alpha_f)
                 for c in COMPONENTS}
    adamw = {c: optax.adamw(schedules[c], b1=optim.b1, b2=optim.b2, eps=optim.eps,
                            weight_decay=optim.weight_decay[c], mask=decay_mask) for c in COMPONENTS}
    tx = optax.chain(clip_by_component_norm(component_labels, optim.max_grad_norm),
                     optax.multi_transform(adamw, component_labels))
    return Optimizer(tx, schedules)

