"""The mesh helper and the one table mapping logical axis names to mesh axes.

Model code names axes logically (`("embed", "mlp")`); only `LOGICAL_RULES` knows the mesh. The mesh
always has the four axes `data`, `fsdp`, `tensor`, `expert` (size 1 when unused), so a (2, 2, 2)
data/fsdp/tensor layout is `make_mesh((2, 2, 2))`. Code that traces the model runs inside
`use_mesh(mesh)`, which makes the mesh current and sets `LOGICAL_RULES`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# Logical axis -> mesh axis (or axes). The single source of truth for parameter and activation layout.
LOGICAL_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", ("data", "fsdp", "expert")),  # outside the MoE layers the expert axis is data parallel
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("expert", "expert"),
    ("layers", None),
    ("pos", None),
    ("pixels", None),
    ("norm", None),
)


def make_mesh(spec: Sequence[int] | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes data, fsdp, tensor[, expert] from `spec`, 3 or 4 sizes in MESH_AXES order.

    One -1 size takes the devices the others leave (e.g. (1, -1, 1): fsdp over every device). Without
    `devices`, the mesh takes the first prod(spec) of `jax.devices()` (all of them where a size is -1);
    `spec` None is the first device alone.
    """
    spec = tuple(int(n) for n in (spec or (1, 1, 1)))
    shape = list(spec) + [1] * (len(MESH_AXES) - len(spec))
    available = list(jax.devices() if devices is None else devices)
    if -1 in shape:
        rest = -int(np.prod(shape))  # the product of the other sizes
        shape[shape.index(-1)] = len(available) // rest if rest > 0 and len(available) % rest == 0 else 0
    n = int(np.prod(shape))
    if len(shape) != len(MESH_AXES) or not 0 < n <= len(available) or (devices is not None and n != len(available)):
        raise ValueError(f"mesh {spec} (axes {', '.join(MESH_AXES)}) does not fit {len(available)} devices")
    return Mesh(np.asarray(available[:n]).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def use_mesh(mesh: Mesh | Sequence[int] | None = None) -> Iterator[Mesh]:
    """Makes `mesh` (a Mesh, or a `make_mesh` spec) the current mesh with `LOGICAL_RULES` set; yields it."""
    mesh = mesh if isinstance(mesh, Mesh) else make_mesh(mesh)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_RULES):
        yield mesh


def logical_to_spec(axes: Sequence[str | None]) -> PartitionSpec:
    """PartitionSpec of one array whose dimensions carry these logical names."""
    return nn.logical_to_mesh_axes(tuple(axes), LOGICAL_RULES)


def param_shardings(abstract_params, mesh: Mesh):
    """NamedShardings for a (boxed) param tree from `jax.eval_shape(model.init, ...)`; a ValueError naming
    the first param whose dimensions the mesh does not split evenly (e.g. fsdp=3 on 128-wide layers)."""
    specs = nn.get_partition_spec(abstract_params)
    shardings = nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_RULES)
    boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)  # read, not unboxed: unbox constrains in a mesh context
    leaves = jax.tree_util.tree_leaves_with_path(abstract_params, is_leaf=boxed)
    for (path, leaf), named in zip(leaves, jax.tree.leaves(shardings)):
        _check_even(jax.tree_util.keystr(path), (leaf.value if boxed(leaf) else leaf).shape, named.spec, mesh)
    return shardings


def _split_axes(spec: PartitionSpec, ndim: int) -> list[tuple[str, ...]]:
    """The mesh axes splitting each of `ndim` dimensions under a PartitionSpec (() where none does)."""
    entries = tuple(spec) + (None,) * (ndim - len(spec))
    return [() if e is None else (e,) if isinstance(e, str) else tuple(e) for e in entries]


def shard_factors(spec: PartitionSpec, mesh: Mapping[str, int], ndim: int) -> tuple[int, ...]:
    """How many ways each of `ndim` dimensions is split by a mesh-axis PartitionSpec (`mesh`: axis sizes)."""
    return tuple(math.prod(mesh[a] for a in axes) for axes in _split_axes(spec, ndim))


def _check_even(name: str, shape: Sequence[int], spec: PartitionSpec, mesh: Mesh):
    for size, axes in zip(shape, _split_axes(spec, len(shape))):
        shards = math.prod(mesh.shape[a] for a in axes)
        if size % shards:
            raise ValueError(f"mesh {dict(mesh.shape)} does not split param {name} of shape {tuple(shape)} evenly "
                             f"({size} over {'x'.join(axes)} = {shards} shards)")


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Shards the leading (batch) dimension over data x fsdp x expert, replicates the rest."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1)))


def batch_shards(mesh: Mesh) -> int:
    """How many ways `batch_sharding` splits the leading dimension (the product of the batch axes)."""
    axes = dict(LOGICAL_RULES)["batch"]
    return int(np.prod([mesh.shape[a] for a in axes]))


def pad_rows(batch, multiple: int):
    """Pads the leading dimension of every array in `batch` to a multiple of `multiple` by repeating its
    last row (a real example, so padded rows compute nothing out of range); drop rows >= the original
    size from the results."""
    def pad(x):
        extra = -np.shape(x)[0] % multiple
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)]) if extra else x
    return jax.tree.map(pad, batch)


def shard_batch(batch, mesh: Mesh):
    """Places every array of a host batch dict on the mesh, batch-sharded.

    A batch that does not split evenly over the batch axes (e.g. one prompt on fsdp=8) is padded with
    copies of its last row (`pad_rows`); the caller keeps the first len(batch) rows of the outputs.
    """
    batch = pad_rows(batch, batch_shards(mesh))
    return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(mesh, np.ndim(x))), batch)
