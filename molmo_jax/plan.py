"""Memory planner: per-device bytes of one training step for a config, a mesh and a batch shape.

    molmo-jax plan --config Molmo-7B-D-0924 --mesh fsdp=256 --batch 256 --seq 2304

The mesh need not exist: shard shapes come from `sharding.LOGICAL_RULES` and the mesh sizes alone
(a dimension split f ways takes size / f rows per device; a mesh that splits a param unevenly is reported:
training refuses it, `sharding.param_shardings`).

Per device, for the trainer's step (params f32 master weights, AdamW, jitted, state donated):
  params       the param leaves in their dtypes, sharded by the rules table
  optimizer    AdamW mu and nu, float32, sharded like the params
  gradients    float32, sharded like the params (x2 with gradient accumulation: accumulator + micro)
  batch        the input arrays, rows sharded over data x fsdp x expert
  activations  an analytic estimate (below)

Activations. Every scanned layer (ViT and LLM) is described by the tensors its forward produces, tagged
"dot" (a matmul output), "batched_dot" (attention scores / outputs: matmuls with batch dims) or
"other". The backward needs, per layer, the layer input (the scan carry, for the ViT also the selected
layers' outputs it carries along) plus what the remat policy saves:
  none           every tensor of the layer
  dots           the dot and batched_dot outputs
  dots_no_batch  the dot outputs
  full           nothing
One layer at a time is recomputed and differentiated: its working set is what the policy did not save
plus one more tensor of the largest size (its gradient). Attention holds float32 [B, H, T, S] scores, and
normalised probabilities only under probability dropout: without it the softmax is normalised after
probs @ v, which took two such tensors off XLA's compiled peak of the tiny model (224 px ViT: 61.1 -> 44.7
MB). The peak is
  saved residuals of all layers of both towers
  + max(largest layer working set, logits working set, connector working set)
  + with fsdp > 1 one layer's params all-gathered (compute dtype) with its unreduced float32 gradients.
Logits working set: the head output in the compute dtype plus three float32 [b, T, V] arrays (logits,
softmax, gradient). It ignores XLA's fusion and scheduling and collectives' buffers; `compiled_memory`
gives XLA's own numbers for meshes that exist locally (tests/test_plan.py checks the two agree to 1.3x
for a tiny model).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np

from molmo_jax import sharding
from molmo_jax import config as config_lib
from molmo_jax.models.molmo import abstract_params

GiB = 2 ** 30
# Memory per device; vendors give TPU HBM in GiB and GPU memory in (decimal) GB.
ACCELERATORS: dict[str, int] = {
    "TPU v5e": 16 * GiB,
    "TPU v4": 32 * GiB,
    "A100-40GB": 40 * 10 ** 9,
    "A100-80GB": 80 * 10 ** 9,
    "H100": 80 * 10 ** 9,
    "TPU v5p": 95 * GiB,
    "H200": 141 * 10 ** 9,
}
DEFAULT_HEADROOM = 0.9  # fraction of device memory a plan may use (runtime, fragmentation, collectives)
BATCH_AXES = ("data", "fsdp", "expert")
ADAM_MOMENTS = 2
F32 = 4


# ------------------------------------------------------------------------------------------------ mesh


def parse_mesh(text: str) -> dict[str, int]:
    """"fsdp=256,tensor=1" -> {"data": 1, "fsdp": 256, "tensor": 1, "expert": 1}; axes not named are 1."""
    sizes = dict.fromkeys(sharding.MESH_AXES, 1)
    seen = set()
    for item in text.split(","):
        match = re.fullmatch(r"\s*(\w+)\s*=\s*(\d+)\s*", item)
        if not match:
            raise ValueError(f"mesh {text!r}: {item!r} is not AXIS=SIZE (e.g. 'fsdp=256,tensor=4'); "
                             f"axes: {', '.join(sharding.MESH_AXES)}")
        axis, size = match.group(1), int(match.group(2))
        if axis not in sizes:
            raise ValueError(f"mesh {text!r}: unknown axis {axis!r}; axes: {', '.join(sharding.MESH_AXES)}")
        if axis in seen:
            raise ValueError(f"mesh {text!r}: axis {axis!r} given twice")
        if size < 1:
            raise ValueError(f"mesh {text!r}: axis {axis!r} has size {size}; sizes must be >= 1")
        seen.add(axis)
        sizes[axis] = size
    return sizes


def mesh_str(mesh: Mapping[str, int]) -> str:
    """{"data": 1, "fsdp": 8, ...} -> "fsdp=8" (axes of size 1 left out; "1 device" when all are)."""
    return ",".join(f"{a}={n}" for a, n in mesh.items() if n > 1) or "1 device"


def local_shape(shape: Sequence[int], spec, mesh: Mapping[str, int]) -> tuple[int, ...]:
    """The per-device shard shape (uneven splits rounded up)."""
    return tuple(-(-s // f) for s, f in zip(shape, sharding.shard_factors(spec, mesh, len(shape))))


def per_device_batch(batch: int, mesh: Mapping[str, int]) -> int:
    ways = math.prod(mesh[a] for a in BATCH_AXES)
    if batch % ways:
        raise ValueError(f"batch {batch} is not divisible by the {ways} batch shards "
                         f"(data x fsdp x expert of mesh {mesh_str(mesh)})")
    return batch // ways


# ---------------------------------------------------------------------------------------------- params


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One param: its path, global shape, dtype and mesh-axis PartitionSpec."""
    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    spec: jax.sharding.PartitionSpec

    def local_elements(self, mesh: Mapping[str, int]) -> int:
        return math.prod(local_shape(self.shape, self.spec, mesh))

    def uneven(self, mesh: Mapping[str, int]) -> bool:
        return any(s % f for s, f in zip(self.shape, sharding.shard_factors(self.spec, mesh, len(self.shape))))


_LEAVES: dict[str, tuple[Leaf, ...]] = {}


def param_leaves(cfg) -> tuple[Leaf, ...]:
    """Every param of the model with its mesh-axis spec (from the rules table); memoised per config."""
    key = cfg.to_json_best_effort(sort_keys=True)
    if key not in _LEAVES:
        boxed = abstract_params(cfg)
        specs = jax.tree.leaves(nn.get_partition_spec(boxed),
                                is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec))
        _LEAVES[key] = tuple(
            Leaf("/".join(str(k.key) for k in path), tuple(x.shape), np.dtype(x.dtype),
                 sharding.logical_to_spec(tuple(spec)))
            for (path, x), spec in zip(jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed)), specs))
    return _LEAVES[key]


def param_bytes(cfg, mesh: Mapping[str, int]) -> dict[str, Any]:
    """Param count, per-device param elements and bytes, and the params whose split is uneven."""
    leaves = param_leaves(cfg)
    return {
        "count": sum(math.prod(x.shape) for x in leaves),
        "local_elements": sum(x.local_elements(mesh) for x in leaves),
        "local_bytes": sum(x.local_elements(mesh) * x.dtype.itemsize for x in leaves),
        "uneven": [x.path for x in leaves if x.uneven(mesh)],
    }


def gathered_layer_elements(cfg, mesh: Mapping[str, int], tower: str) -> int:
    """Elements one layer of `tower` ("llm" / "vit") holds on a device once its fsdp shards are gathered."""
    unsharded = {**mesh, "fsdp": 1}
    leaves = [x for x in param_leaves(cfg) if x.path.startswith(f"{tower}/blocks/")]
    return sum(x.local_elements(unsharded) // x.shape[0] for x in leaves)


# ----------------------------------------------------------------------------------------- activations


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One forward intermediate of a layer: bytes per device and what produced it."""
    name: str
    nbytes: int
    kind: str = "other"  # "dot" | "batched_dot" | "other"


SAVED_KINDS = {"none": ("dot", "batched_dot", "other"), "dots": ("dot", "batched_dot"),
               "dots_no_batch": ("dot",), "full": ()}


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """Per-device sizes of one transformer layer: n rows (tokens) of width d, b sequences of length t."""
    b: int
    t: int
    d: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    dtype_bytes: int
    gated: bool
    causal_mask: bool
    qk_norm: bool = False
    moe: tuple[int, int] | None = None  # (experts, top_k)
    prob_dropout: bool = False  # dropout on the attention probabilities (materialises them normalised)

    @property
    def n(self) -> int:
        return self.b * self.t


def attention_tensors(s: LayerShape) -> list[Tensor]:
    c, n, hd, kd = s.dtype_bytes, s.n, s.heads * s.head_dim, s.kv_heads * s.head_dim
    scores = s.b * s.heads * s.t * s.t
    out = [Tensor("norm", n * s.d * c), Tensor("q", n * hd * c, "dot"), Tensor("k", n * kd * c, "dot"),
           Tensor("v", n * kd * c, "dot")]
    if s.qk_norm:
        out += [Tensor("q_norm", n * hd * c), Tensor("k_norm", n * kd * c)]
    if s.kv_heads != s.heads:
        out.append(Tensor("kv_repeat", 2 * n * hd * c))
    if s.causal_mask:
        out.append(Tensor("mask_bias", s.b * s.t * s.t * F32))
    out.append(Tensor("scores", scores * F32, "batched_dot"))
    if s.prob_dropout:  # without it the softmax is normalised after probs @ v (`layers._softmax_attention`)
        out.append(Tensor("probs", scores * F32))
    if c != F32:
        out.append(Tensor("probs_cast", scores * c))
    return out + [Tensor("attn_out", n * hd * c, "batched_dot"), Tensor("out_proj", n * s.d * c, "dot"),
                  Tensor("residual", n * s.d * c)]


def mlp_tensors(s: LayerShape) -> list[Tensor]:
    c, n = s.dtype_bytes, s.n
    out = [Tensor("norm", n * s.d * c)]
    if s.moe:
        experts, k = s.moe
        out += [Tensor("router_logits", n * experts * F32, "dot"), Tensor("router_probs", n * experts * F32),
                Tensor("routed", n * k * s.d * c)]
        n = n * k
    h = [Tensor("gate", n * s.hidden * c, "dot"), Tensor("up", n * s.hidden * c, "dot")] if s.gated else \
        [Tensor("wi", n * s.hidden * c, "dot")]
    out += h + [Tensor("act", n * s.hidden * c), Tensor("down", n * s.d * c, "dot")]
    if s.moe:
        out.append(Tensor("combined", s.n * s.d * c))
    return out + [Tensor("residual", s.n * s.d * c)]


def layer_memory(s: LayerShape, carry_bytes: int, policy: str) -> dict[str, int]:
    """saved: bytes kept for the backward per layer (carry included); working: one layer's backward."""
    tensors = attention_tensors(s) + mlp_tensors(s)
    saved = sum(x.nbytes for x in tensors if x.kind in SAVED_KINDS[policy])
    total = sum(x.nbytes for x in tensors)
    return {"saved": carry_bytes + saved, "working": total - saved + max(x.nbytes for x in tensors)}


def llm_layer(cfg, b: int, t: int, mesh: Mapping[str, int], dtype_bytes: int) -> LayerShape:
    llm, tp = cfg.llm, mesh["tensor"]
    moe = (llm.moe_num_experts, llm.moe_top_k) if llm.block_type == "moe" else None
    return LayerShape(b, t, llm.d_model, -(-llm.n_heads // tp), -(-llm.n_kv_heads // tp), llm.head_dim,
                      -(-llm.mlp_hidden // tp), dtype_bytes, gated=True, causal_mask=True, qk_norm=llm.qk_norm,
                      moe=moe, prob_dropout=llm.attention_dropout > 0)


def vit_layer(cfg, crops: int, mesh: Mapping[str, int], dtype_bytes: int) -> LayerShape:
    v, tp = cfg.vit, mesh["tensor"]
    tokens = math.prod(config_lib.patch_grid(cfg)) + config_lib.num_prefix_tokens(cfg)
    return LayerShape(crops, tokens, v.d_model, -(-v.n_heads // tp), -(-v.n_kv_heads // tp), v.head_dim,
                      -(-v.mlp_hidden // tp), dtype_bytes, gated=False, causal_mask=False)


def connector_bytes(cfg, crops: int, dtype_bytes: int, tensor: int) -> int:
    """Working set of the connector: ViT features concatenated, masked, padded and windowed (4 copies),
    the pooled tokens and the projector's three hidden activations."""
    patches = math.prod(config_lib.patch_grid(cfg))
    tokens = crops * math.prod(config_lib.pooled_grid(cfg))
    features = crops * patches * cfg.vit.d_model * len(cfg.vit_layers)
    hidden = tokens * -(-cfg.connector.projector_hidden // tensor)
    return dtype_bytes * (4 * features + tokens * config_lib.pooled_dim(cfg) + 3 * hidden)


def activation_bytes(cfg, b: int, seq_len: int, crops: int, mesh: Mapping[str, int]) -> dict[str, Any]:
    """The analytic activation estimate of the module docstring, per device, for b sequences: bytes of
    each term, their total and which working set is the largest ("working_set_of")."""
    c = np.dtype(cfg.dtype).itemsize
    policy = cfg.llm.remat_policy
    llm = llm_layer(cfg, b, seq_len, mesh, c)
    llm_mem = layer_memory(llm, llm.n * llm.d * c, policy)
    out = {"llm_saved": cfg.llm.n_layers * llm_mem["saved"]}
    working = {"llm_layer": llm_mem["working"]}
    if crops:
        vit = vit_layer(cfg, b * crops, mesh, c)
        carry = (1 + len(cfg.vit_layers)) * vit.n * vit.d * c  # x and the selected layers' outputs
        vit_mem = layer_memory(vit, carry, cfg.vit.remat_policy)
        out["vit_saved"] = cfg.vit.n_layers * vit_mem["saved"]
        working["vit_layer"] = vit_mem["working"]
        working["connector"] = connector_bytes(cfg, b * crops, c, mesh["tensor"])
    vocab = -(-cfg.llm.embedding_size // mesh["tensor"])
    working["logits"] = b * seq_len * vocab * (c + 3 * F32)
    out["working_set"] = max(working.values())
    if mesh["fsdp"] > 1:
        layer = max(gathered_layer_elements(cfg, mesh, t) for t in (("llm", "vit") if crops else ("llm",)))
        out["fsdp_gather"] = layer * (c + F32)
    return {**out, "total": sum(out.values()), "working_set_of": max(working, key=working.get)}


# --------------------------------------------------------------------------------------------- the plan


def batch_shapes(cfg, batch: int, seq_len: int, crops: int) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Global shapes and dtypes of the trainer's batch arrays (`trainer.BATCH_KEYS`)."""
    text = (batch, seq_len)
    out = {"input_ids": (text, np.int32), "labels": (text, np.int32), "loss_masks": (text, np.float32),
           "position_ids": (text, np.int32)}
    if crops:
        patches = math.prod(config_lib.patch_grid(cfg))
        out.update(images=((batch, crops, patches, 3 * cfg.vit.patch_size ** 2), np.float32),
                   image_input_idx=((batch, crops, math.prod(config_lib.pooled_grid(cfg))), np.int32))
        if cfg.connector.padding_embed:
            out["image_masks"] = ((batch, crops, patches), np.float32)
    return {k: (shape, np.dtype(dt)) for k, (shape, dt) in out.items()}


def fits(total: int, headroom: float) -> dict[str, dict[str, Any]]:
    """Per named accelerator: its memory, the usable part (x headroom) and whether `total` fits."""
    return {name: {"memory_bytes": cap, "fits": total <= headroom * cap, "utilization": total / cap}
            for name, cap in ACCELERATORS.items()}


def plan(cfg, mesh_spec: str | Mapping[str, int], batch: int, seq_len: int, crops: int | None = None,
         grad_accum: int = 1, headroom: float = DEFAULT_HEADROOM, with_compiled: bool = False) -> dict[str, Any]:
    """Per-device memory of one training step (see the module docstring) -> a JSON-able dict.

    mesh_spec: "fsdp=256,tensor=1" or a {axis: size} dict; batch: global sequences per step; crops:
    image crops per example (default: the config's maximum, 0 = text only); grad_accum: micro-batches per
    step. With with_compiled=True (the mesh must fit the local devices) XLA's memory analysis is added.
    """
    mesh = parse_mesh(mesh_spec) if isinstance(mesh_spec, str) else {**dict.fromkeys(sharding.MESH_AXES, 1),
                                                                      **mesh_spec}
    crops = config_lib.max_total_crops(cfg) if crops is None else crops
    b = per_device_batch(batch, mesh)
    if b % grad_accum:
        raise ValueError(f"per-device batch {b} is not divisible by grad_accum={grad_accum}")
    params = param_bytes(cfg, mesh)
    batch_spec = sharding.logical_to_spec(("batch",))
    batch_local = sum(math.prod(local_shape(shape, batch_spec, mesh)) * dt.itemsize
                      for shape, dt in batch_shapes(cfg, batch, seq_len, crops).values())
    acts = activation_bytes(cfg, b // grad_accum, seq_len, crops, mesh)
    sizes = {
        "params": params["local_bytes"],
        "optimizer": ADAM_MOMENTS * F32 * params["local_elements"],
        "gradients": (1 if grad_accum == 1 else 2) * F32 * params["local_elements"],
        "batch": batch_local,
        "activations": acts["total"],
    }
    sizes["total"] = sum(sizes.values())
    result = {
        "model": cfg.name, "mesh": mesh, "devices": math.prod(mesh.values()), "batch": batch,
        "per_device_batch": b, "grad_accum": grad_accum, "seq_len": seq_len, "crops": crops,
        "remat_policy": cfg.llm.remat_policy, "dtype": cfg.dtype, "param_dtype": cfg.param_dtype,
        "param_count": params["count"], "bytes": sizes, "activations": acts, "headroom": headroom,
        "fits": fits(sizes["total"], headroom),
        "warnings": [f"{p} does not split evenly over this mesh: training refuses it" for p in params["uneven"]],
    }
    if with_compiled:
        result["compiled"] = compiled_memory(cfg, mesh, batch, seq_len, crops, grad_accum)
    return result


# ------------------------------------------------------------------------------------ compiled analysis


def compiled_memory(cfg, mesh: Mapping[str, int], batch: int, seq_len: int, crops: int,
                    grad_accum: int = 1) -> dict[str, int]:
    """XLA's per-device memory analysis of the trainer's jitted step (AdamW) on a local mesh.

    Compiles from shapes only (nothing is allocated); the mesh's device count must be available.
    "peak" = argument + output - alias + temp bytes (the donated state's outputs reuse its buffers).
    """
    import optax

    from molmo_jax.models.molmo import Molmo
    from molmo_jax.train import optim, trainer

    n = math.prod(mesh.values())
    if n > jax.device_count():
        raise ValueError(f"compiling for mesh {mesh_str(mesh)} needs {n} devices, {jax.device_count()} exist")
    device_mesh = sharding.make_mesh([mesh[a] for a in sharding.MESH_AXES], jax.devices()[:n])
    opt = optim.Optimizer(optax.adamw(1e-4), {})
    target = trainer.abstract_state(cfg, opt, device_mesh)
    inputs = {k: jax.ShapeDtypeStruct(shape, dt, sharding=sharding.batch_sharding(device_mesh, len(shape)))
              for k, (shape, dt) in batch_shapes(cfg, batch, seq_len, crops).items()}
    step = jax.jit(functools.partial(trainer.train_step, model=Molmo(cfg, deterministic=False), opt=opt,
                                     z_loss=1e-4, grad_accum=grad_accum),
                   out_shardings=(trainer.shardings_of(target), None), donate_argnums=0)
    with sharding.use_mesh(device_mesh):
        analysis = step.lower(target, inputs).compile().memory_analysis()
    out = {k: int(getattr(analysis, f"{k}_size_in_bytes")) for k in ("argument", "output", "alias", "temp")}
    out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


# ------------------------------------------------------------------------------------------------ tables


def _gib(n: float) -> str:
    return f"{n / GiB:.2f}"


def table(plans: Sequence[Mapping[str, Any]], accelerators: Sequence[str] = tuple(ACCELERATORS)) -> str:
    """A markdown table, one row per plan: GiB per device and which accelerators it fits."""
    head = ["model", "mesh", "batch/dev", "seq", "crops", "remat", "params", "optim", "grads", "acts", "total"]
    head += list(accelerators)
    rows = [head, ["---"] * len(head)]
    for p in plans:
        s = p["bytes"]
        rows.append([p["model"], mesh_str(p["mesh"]), str(p["per_device_batch"]), str(p["seq_len"]),
                     str(p["crops"]), p["remat_policy"], _gib(s["params"]), _gib(s["optimizer"]),
                     _gib(s["gradients"]), _gib(s["activations"]), _gib(s["total"])]
                    + ["yes" if p["fits"][a]["fits"] else "no" for a in accelerators])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def details(p: Mapping[str, Any]) -> str:
    """The activation breakdown, compiled numbers and warnings of one plan, one item a line."""
    lines = [f"{p['model']} on {mesh_str(p['mesh'])}: {p['param_count'] / 1e9:.3f} B params, "
             f"batch {p['batch']} ({p['per_device_batch']}/device), headroom {p['headroom']}"]
    a = p["activations"]
    lines += [f"  activations/{k}: {_gib(v)} GiB" for k, v in a.items() if k not in ("total", "working_set_of")]
    lines.append(f"  (working set: {a['working_set_of']})")
    lines += [f"  compiled/{k}: {_gib(v)} GiB" for k, v in p.get("compiled", {}).items()]
    return "\n".join(lines + [f"  warning: {w}" for w in p["warnings"]])
