"""Pointing precision / recall / F1 as the official `PointingEval` (PixMo-Points eval) computes them.

Per example: predicted points are parsed from the text (`molmo_jax.formatting.extract_points`, pixels).
- No gold points: all three scores are 1 iff no point was predicted.
- Else text failing the official format check scores 0.
- Else predictions and gold points are paired by Hungarian matching on Euclidean distance; a pair is a
  hit when the predicted point, rounded to a pixel, lies inside the gold object's mask.
  precision = hits / #predicted, recall = hits / #masks, F1 = 2PR / (P + R + 1e-10) (official epsilon).

Official quirks, reproduced by default (paper-comparable), with the corrected behaviour as options:
- `match="distance"`: distance matching may pair a point lying inside one object's mask with another
  object, scoring 0 for it. `match="mask"` pairs points and objects to maximise the hits.
- `rounding="half_even"`: the mask lookup rounds pixel coordinates half to even (Python round()).
  `rounding="half_up"` rounds halves up.
- `strict_format=False`: the format check's lazy alt / label patterns let several `<point>` tags in one
  answer pass. `strict_format=True` allows one tag only.
Text that passes the format check but yields no points (e.g. integer "(12, 34)" coordinates or all
coordinates above 100) makes the official code raise; here it scores 0.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

from molmo_jax.eval.common import mean
from molmo_jax.formatting import extract_points

F1_EPSILON = 1e-10
MATCHING = ("distance", "mask")
ROUNDING = ("half_even", "half_up")

_NUM = r"\d+(?:\.\d+)?"
_SIGNED = r"-?" + _NUM
_ALT_LABEL = r'alt="[\s\S]*?">[\s\S]*?'
_LEGACY_PAIR = r"\s*\d{3}\s*,\s*\d{3}"
# The official format check (`is_valid_format`): one of these forms, the whole stripped text.
_VALID_FORMATS = (
    rf"(?:\(\s*{_SIGNED}\s*,\s*{_SIGNED}\s*\)\n?)+",
    rf'<point\s+x="\s*{_NUM}"\s+y="\s*{_NUM}"\s+{_ALT_LABEL}</point>',
    rf'<points\s+(?:x\d+="\s*{_NUM}"\s+y\d+="\s*{_NUM}"\s+)+{_ALT_LABEL}</points>',
    rf"<point\s+p={_LEGACY_PAIR}\s+{_ALT_LABEL}</point>",
    rf"<points\s+(?:\d+={_LEGACY_PAIR}\s+)+{_ALT_LABEL}</points>",
)
_VALID_FORMAT = re.compile("|".join(f"(?:{f})" for f in _VALID_FORMATS))
_TAG = re.compile(r"<points?\b")


def is_valid_point_format(text: str, strict: bool = False) -> bool:
    """The official pointing-answer format check; `strict` also requires at most one point tag."""
    text = text.strip()
    return _VALID_FORMAT.fullmatch(text) is not None and (not strict or len(_TAG.findall(text)) <= 1)


def _round_pixel(v: float, rounding: str) -> int:
    return int(round(v)) if rounding == "half_even" else math.floor(v + 0.5)


def point_in_mask(point: Sequence[float], mask: np.ndarray, rounding: str = "half_even") -> bool:
    """Whether the (x, y) pixel point, rounded to integers, is a True pixel of the [H, W] mask."""
    x, y = (_round_pixel(float(v), rounding) for v in point)
    height, width = mask.shape
    return 0 <= x < width and 0 <= y < height and bool(mask[y, x])


def _inside(pred: np.ndarray, masks: Sequence[np.ndarray], rounding: str) -> np.ndarray:
    """bool[n_pred, n_masks]: prediction i lies in mask j."""
    return np.array([[point_in_mask(p, m, rounding) for m in masks] for p in pred], bool)


def _match(pred: np.ndarray, gold: np.ndarray, inside: np.ndarray, match: str):
    """(pred index, gold index) pairs of the Hungarian matching."""
    if match == "distance":
        return linear_sum_assignment(cdist(pred, gold))
    return linear_sum_assignment(inside.astype(np.float64), maximize=True)


def f1_score(precision: float, recall: float) -> float:
    """Official F1: 2PR / (P + R + 1e-10), 0 when either is 0."""
    if precision == 0 or recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall + F1_EPSILON)


def pointing_example_scores(text: str, points: Sequence[Sequence[float]], masks: Sequence[np.ndarray],
                            image_size: tuple[float, float], *, match: str = "distance",
                            rounding: str = "half_even", strict_format: bool = False) -> dict[str, float]:
    """precision, recall and f1 of one generated answer.

    points: float[n, 2] gold (x, y) pixels, masks: n bool [H, W] object masks, image_size: (w, h).
    """
    if match not in MATCHING or rounding not in ROUNDING:
        raise ValueError(f"match={match!r} (allowed {MATCHING}), rounding={rounding!r} (allowed {ROUNDING})")
    pred = extract_points(text, *image_size)
    if len(points) == 0:
        s = float(len(pred) == 0)
        return dict(precision=s, recall=s, f1=s)
    if not is_valid_point_format(text, strict_format) or len(pred) == 0:
        return dict(precision=0.0, recall=0.0, f1=0.0)
    inside = _inside(pred, masks, rounding)
    rows, cols = _match(pred, np.asarray(points, np.float64).reshape(-1, 2), inside, match)
    hits = int(inside[rows, cols].sum())
    precision, recall = hits / len(pred), hits / len(masks)
    return dict(precision=precision, recall=recall, f1=f1_score(precision, recall))


def pointing_scores(predictions: Sequence[str], references: Sequence[dict], **options) -> dict[str, float]:
    """Mean precision / recall / f1; references hold "points", "masks" and "image_size" (w, h)."""
    per_example = [pointing_example_scores(p, r["points"], r["masks"], r["image_size"], **options)
                   for p, r in zip(predictions, references)]
    return {k: mean([s[k] for s in per_example]) for k in ("precision", "recall", "f1")}
