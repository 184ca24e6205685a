"""LoRA adapters on the param tree: frozen base kernels plus trainable low-rank A/B pairs, merged functionally.

    lcfg = LoraConfig(rank=8, alpha=16, targets=r"llm/blocks/attention/(query|value)")
    lora = init(jax.random.key(0), model_cfg, lcfg, mesh)           # {"llm": {"blocks": ...{"lora_a", "lora_b"}}}
    logits = Molmo(model_cfg).apply({"params": apply_lora(base, lora, lcfg)}, ...)   # inside the loss
    exported = merge(base, lora, lcfg)                               # plain params, same tree as `base`

The model code is unchanged: the adapted kernel is W + (alpha / rank) * A @ B, computed from the trees
(inside the jitted loss, so only A and B get gradients). Targets are `Dense` modules whose param path
(e.g. "llm/blocks/attention/query") fully matches the `targets` regex. A Dense kernel is
[lead..., in..., out...] (lead: stacked layers); its adapter is A [lead..., in..., r] and B
[lead..., r, out...], A carrying the kernel's logical axes of its lead and input dims, B those of its lead
and output dims (the rank dim is replicated), so the adapters shard like the kernel they adapt.
Init (as PEFT): A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), B = 0, so the adapted model starts as the base.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from molmo_jax import sharding
from molmo_jax.models.layers import Dense
from molmo_jax.models.molmo import Molmo, abstract_params, dummy_inputs

LORA_LEAVES = ("lora_a", "lora_b")
DEFAULT_TARGETS = r"llm/blocks/attention/(query|value)"  # the LoRA paper's choice


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank r of the adapters (> 0), alpha (the update is scaled by alpha / r), targets: regex fully
    matching the "/"-joined param path of each adapted Dense module."""
    rank: int
    alpha: float = 16.0
    targets: str = DEFAULT_TARGETS

    def __post_init__(self):
        if self.rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {self.rank}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @classmethod
    def from_config(cls, c) -> "LoraConfig":
        """From a `lora` config section (rank, alpha, targets)."""
        return cls(int(c.rank), float(c.alpha), str(c.targets))


@dataclasses.dataclass(frozen=True)
class Target:
    """One adapted kernel: its shape split into lead / input / output dims, with their logical axis names."""
    shape: tuple[int, ...]
    names: tuple[str | None, ...]
    n_lead: int
    n_in: int

    def a(self, rank: int) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
        """(shape, logical axes) of A."""
        k = self.n_lead + self.n_in
        return self.shape[:k] + (rank,), self.names[:k] + (None,)

    def b(self, rank: int) -> tuple[tuple[int, ...], tuple[str | None, ...]]:
        """(shape, logical axes) of B."""
        n, k = self.n_lead, self.n_lead + self.n_in
        return self.shape[:n] + (rank,) + self.shape[k:], self.names[:n] + (None,) + self.names[k:]


_DENSE: dict[str, dict[str, tuple[int, int]]] = {}


def dense_layouts(model_cfg) -> dict[str, tuple[int, int]]:
    """"/"-joined path of every Dense module of the model -> (input dims, output dims) of its kernel, the
    rest being stacked lead dims (read from the modules while tracing an abstract init; memoised)."""
    key = model_cfg.to_json_best_effort(sort_keys=True)
    if key not in _DENSE:
        found = {}

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, Dense) and context.method_name == "__call__":
                found["/".join(context.module.path)] = (len(context.module.in_axes), len(context.module.features))
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(record):
            jax.eval_shape(lambda r: Molmo(model_cfg).init(r, **dummy_inputs(model_cfg, seq_len=1, crops=1)),
                           jax.random.key(0))
        _DENSE[key] = found
    return _DENSE[key]


def targets(model_cfg, lcfg: LoraConfig) -> dict[str, Target]:
    """Module path -> `Target` of every Dense kernel that `lcfg.targets` matches; raises if none does."""
    boxed = traverse_util.flatten_dict(abstract_params(model_cfg), sep="/")
    out = {}
    layouts = dense_layouts(model_cfg)
    for path, (n_in, n_out) in layouts.items():
        if re.fullmatch(lcfg.targets, path):
            kernel = boxed[f"{path}/kernel"]
            shape = tuple(kernel.value.shape)
            out[path] = Target(shape, tuple(kernel.names), len(shape) - n_in - n_out, n_in)
    if not out:
        raise ValueError(f"LoRA targets {lcfg.targets!r} match no Dense module; Dense modules: {sorted(layouts)}")
    return out


def abstract(model_cfg, lcfg: LoraConfig) -> Any:
    """The adapter tree as boxed (logically partitioned) ShapeDtypeStructs, float32."""
    flat = {}
    for path, t in targets(model_cfg, lcfg).items():
        for leaf, (shape, names) in zip(LORA_LEAVES, (t.a(lcfg.rank), t.b(lcfg.rank))):
            flat[f"{path}/{leaf}"] = nn.Partitioned(jax.ShapeDtypeStruct(shape, jnp.float32), names)
    return traverse_util.unflatten_dict(flat, sep="/")


def init(rng: jax.Array, model_cfg, lcfg: LoraConfig, mesh=None) -> Any:
    """Fresh adapters (A uniform in +-1/sqrt(fan_in), B zeros) created in their shardings on `mesh`."""
    mesh = mesh or sharding.make_mesh()
    boxed = abstract(model_cfg, lcfg)
    ts = targets(model_cfg, lcfg)

    def make(rng):
        flat = {}
        for (path, t), key in zip(sorted(ts.items()), jax.random.split(rng, len(ts))):
            a_shape, _ = t.a(lcfg.rank)
            bound = 1.0 / math.sqrt(np.prod(t.shape[t.n_lead:t.n_lead + t.n_in]))
            flat[f"{path}/lora_a"] = jax.random.uniform(key, a_shape, jnp.float32, -bound, bound)
            flat[f"{path}/lora_b"] = jnp.zeros(t.b(lcfg.rank)[0], jnp.float32)
        return traverse_util.unflatten_dict(flat, sep="/")

    with sharding.use_mesh(mesh):
        return jax.jit(make, out_shardings=sharding.param_shardings(boxed, mesh))(rng)


def delta(a: jax.Array, b: jax.Array, kernel_ndim: int) -> jax.Array:
    """A @ B contracted over the rank, batched over the lead dims: the kernel-shaped low-rank update."""
    n_out = kernel_ndim - (a.ndim - 1)
    n_lead = b.ndim - 1 - n_out
    lead, rank = a.shape[:n_lead], a.shape[-1]
    product = a.reshape(lead + (-1, rank)) @ b.reshape(lead + (rank, -1))
    return product.reshape(a.shape[:-1] + b.shape[n_lead + 1:])


def apply_lora(base: Any, lora: Any, lcfg: LoraConfig) -> Any:
    """`base` with every adapted kernel replaced by W + scale * A @ B (in W's dtype); same tree as base."""
    params = traverse_util.flatten_dict(base, sep="/")
    adapters = traverse_util.flatten_dict(lora, sep="/")
    for path in {p.rsplit("/", 1)[0] for p in adapters}:
        w = params[f"{path}/kernel"]
        update = delta(adapters[f"{path}/lora_a"], adapters[f"{path}/lora_b"], w.ndim)
        params[f"{path}/kernel"] = (w + lcfg.scale * update).astype(w.dtype)
    return traverse_util.unflatten_dict(params, sep="/")


def merge(base: Any, lora: Any, lcfg: LoraConfig) -> Any:
    """`apply_lora` run once (jitted, keeping the base's shardings): plain params for export / inference."""
    shardings = jax.tree.map(lambda x: x.sharding, base)
    return jax.jit(lambda b, l: apply_lora(b, l, lcfg), out_shardings=shardings)(base, lora)
