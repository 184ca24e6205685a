"""Helpers shared by the scorers."""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence


def as_references(answers: str | Sequence[str]) -> list[str]:
    """Gold answers as a list: a plain string is one reference (as the official `VqaEval` reads it),
    never a sequence of one-character references."""
    if isinstance(answers, str):
        return [answers]
    if isinstance(answers, (bytes, Mapping)) or not isinstance(answers, Iterable):
        raise TypeError(f"gold answers must be a string or a sequence of strings, got {type(answers).__name__}")
    return list(answers)


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean, 0.0 for no values (as the official `mean_metric`)."""
    return float(sum(values) / len(values)) if len(values) else 0.0


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance (unit insert / delete / substitute) between two sequences."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]
