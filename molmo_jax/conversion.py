"""The vocabulary of the conversion tables (`checkpoints.native_rules`, a pooling's export rules in
`models.connector`): `Rule`, which maps official native tensors to our param leaves and back, and the
reversible transforms rules are built from.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import numpy as np

Arrays = list[np.ndarray]


@dataclasses.dataclass(frozen=True)
class Rule:
    native: tuple[str, ...]  # native key templates; "{i}" = layer index when layered
    ours: tuple[str, ...]  # "/"-joined param paths
    to_ours: Callable[[Arrays], Arrays]
    to_native: Callable[[Arrays], Arrays]
    layered: bool = False


# ----------------------------------------------------------------------------- reversible transforms

def identity() -> tuple[Callable, Callable]:
    return (lambda xs: xs), (lambda xs: xs)


def linear(out_shape: tuple[int, ...] = ()) -> tuple[Callable, Callable]:
    """torch (out, in) weight <-> kernel (in, *out_shape); out_shape () keeps out flat."""
    def fwd(xs):
        w = xs[0]
        return [w.T.reshape((w.shape[1],) + (out_shape or (w.shape[0],)))]
    return fwd, lambda ks: [ks[0].reshape(ks[0].shape[0], -1).T]


def linear_from_heads(heads: int) -> tuple[Callable, Callable]:
    """torch (out, H*D) weight <-> kernel (H, D, out)."""
    return ((lambda xs: [xs[0].T.reshape(heads, -1, xs[0].shape[0])]),
            (lambda ks: [ks[0].reshape(-1, ks[0].shape[-1]).T]))


def reshape(shape: tuple[int, ...]) -> tuple[Callable, Callable]:
    return (lambda xs: [xs[0].reshape(shape)]), (lambda ks: [ks[0].reshape(-1)])


def split_rows(sizes: Iterable[int], parts: Iterable[Callable]) -> tuple[Callable, Callable]:
    """One fused native tensor, rows split into `sizes`, each part transformed by a (fwd, inv) pair."""
    sizes, parts = list(sizes), list(parts)
    def fwd(xs):
        chunks = np.split(xs[0], np.cumsum(sizes)[:-1], axis=0)
        return [f([c])[0] for (f, _), c in zip(parts, chunks)]
    def inv(ks):
        return [np.concatenate([i([k])[0] for (_, i), k in zip(parts, ks)], axis=0)]
    return fwd, inv


def experts(n_experts: int, transpose: bool) -> tuple[Callable, Callable]:
    """native (E*F, d) <-> (E, d, F) if transpose (w1, v1) else (E, F, d) (w2)."""
    def fwd(xs):
        w = xs[0].reshape(n_experts, -1, xs[0].shape[-1])
        return [w.transpose(0, 2, 1) if transpose else w]
    def inv(ks):
        w = ks[0].transpose(0, 2, 1) if transpose else ks[0]
        return [w.reshape(-1, w.shape[-1])]
    return fwd, inv


def rule(native, ours, pair, layered=False) -> Rule:
    native = (native,) if isinstance(native, str) else tuple(native)
    ours = (ours,) if isinstance(ours, str) else tuple(ours)
    return Rule(native, ours, pair[0], pair[1], layered)


def attention_rules(native_prefix: str, ours_prefix: str, heads: int, kv_heads: int, head_dim: int,
                     separate: bool, bias: bool, out_bias: bool, layered: bool) -> list[Rule]:
    """q/k/v/out projections: separate wq/wk/wv/wo (ViT, pooling) or a fused att_proj/attn_out (LLM)."""
    names = ("query", "key", "value")
    counts = (heads, kv_heads, kv_heads)
    rules = []
    if separate:
        for n, native, h in zip(names, ("wq", "wk", "wv"), counts):
            rules.append(rule(f"{native_prefix}.{native}.weight", f"{ours_prefix}/{n}/kernel",
                               linear((h, head_dim)), layered))
            if bias:
                rules.append(rule(f"{native_prefix}.{native}.bias", f"{ours_prefix}/{n}/bias",
                                   reshape((h, head_dim)), layered))
        out_native = f"{native_prefix}.wo"
    else:
        sizes = [h * head_dim for h in counts]
        rules.append(rule(f"{native_prefix}.att_proj.weight", [f"{ours_prefix}/{n}/kernel" for n in names],
                           split_rows(sizes, [linear((h, head_dim)) for h in counts]), layered))
        if bias:
            rules.append(rule(f"{native_prefix}.att_proj.bias", [f"{ours_prefix}/{n}/bias" for n in names],
                               split_rows(sizes, [reshape((h, head_dim)) for h in counts]), layered))
        out_native = f"{native_prefix}.attn_out"
    rules.append(rule(f"{out_native}.weight", f"{ours_prefix}/out/kernel", linear_from_heads(heads), layered))
    if out_bias:
        rules.append(rule(f"{out_native}.bias", f"{ours_prefix}/out/bias", identity(), layered))
    return rules
