"""What a held-out PixMo-lite result is compared against: the same prompts with the images swapped between
examples (`SwappedImages`), the answers a model that ignores the image can reach (`majority_baseline` over
all prompts or per `question_type`), and where predicted points land (`point_landing`). The main job
(experiments/main.py), the connector ablation and the image gain (experiments/image_gain.py) use them."""
from __future__ import annotations

import collections
import dataclasses
import json
import re
from typing import Any, Callable

import numpy as np

from data_pipelines import synthetic


def majority_baseline(result: dict, key: Callable[[str], Any] = lambda prompt: None) -> float:
    """Accuracy of always giving the most common reference (count or answer) among prompts of the same
    `key(prompt)` (default: all prompts alike); for pointing, the F1 of always pointing at nothing (1 where
    the gold has no points, else 0: the only answer a model that ignores the image can get right)."""
    if result["task"] == "synthetic_points":
        return float(np.mean([len(p["reference"]["points"]) == 0 for p in result["predictions"]]))
    groups = collections.defaultdict(list)
    for p in result["predictions"]:
        groups[key(p["prompt"])].append(json.dumps(p["reference"], sort_keys=True))
    return sum(collections.Counter(g).most_common(1)[0][1] for g in groups.values()) / len(result["predictions"])


def question_type(prompt: str) -> tuple:
    """What a text-only model can know of a PixMo-lite prompt: the shape it names, whether it asks for a
    colour and the colour it names ("red circles", else None), else the question after the style prefix (e.g.
    "What is the value of B?")."""
    shape = re.search(r"circle|square|triangle", prompt)
    if shape:
        color = re.search("|".join(synthetic.COLORS), prompt)
        return shape.group(), "color" in prompt, color and color.group()
    return (prompt.split(":")[-1].strip(),)


@dataclasses.dataclass(frozen=True)
class SwappedImages:
    """A held-out source whose example i shows the image of example i + 7: same prompts and answers, the
    wrong picture. Accuracy that survives the swap does not come from the image."""
    source: Any

    def __len__(self) -> int:
        return len(self.source)

    def get(self, index: int, rng) -> dict:
        example = self.source.get(index, rng)
        example["image"] = self.source.get((index + 7) % len(self.source), np.random.RandomState(0))["image"]
        return example


def point_landing(source: synthetic.SyntheticSource, result: dict) -> dict[str, float]:
    """Where a pointing result's predicted points land in its scenes, as fractions of all predicted points:
    on a shape of the kind the prompt asks for, on a shape of another kind, on the background."""
    counts = collections.Counter()
    for p in result["predictions"]:
        asked = next(kind for kind in synthetic.SHAPES if kind in p["prompt"])
        for kind in source.kinds_at(p["example"], p["points"]):
            counts["background" if kind is None else "asked_kind" if kind == asked else "other_kind"] += 1
    total = sum(counts.values())
    return {k: counts[k] / total if total else float("nan") for k in ("asked_kind", "other_kind", "background")}
