"""What a held-out PixMo-lite result is compared against: the same prompts with the images swapped between
examples (`SwappedImages`), the answers a model that ignores the image can reach (`majority_baseline` over
all prompts or per `question_type`), where predicted points land (`point_landing`) and what pointing
answers that know only a shape's grid cell score (`cell_oracle_f1`) and how well a linear readout of a
model's image tokens locates a lone shape (`position_readout`). The main job (experiments/main.py), the
connector ablation and the image gain (experiments/image_gain.py) use them.

    python -m experiments.controls     # cell oracles on the main job's held-out pointing prompts
    python -m experiments.controls --readout runs/main/stage2/export/orbax   # + that model's position readout
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import re
from typing import Any, Callable

import jax
import numpy as np

from data_pipelines import synthetic
from molmo_jax import api
from molmo_jax.eval import pointing, runner
from molmo_jax.formatting import points_to_text
from molmo_jax.models.molmo import Molmo
from molmo_jax.recipes import stage2


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


SWAP_SHIFT = 7  # example i is shown example i + SWAP_SHIFT's image


@dataclasses.dataclass(frozen=True)
class SwappedImages:
    """A held-out source whose example i shows the image of example i + SWAP_SHIFT: same prompts and answers,
    the wrong picture. Accuracy that survives the swap does not come from the image."""
    source: Any

    def __len__(self) -> int:
        return len(self.source)

    def get(self, index: int, rng) -> dict:
        example = self.source.get(index, rng)
        other = (index + SWAP_SHIFT) % len(self.source)
        example["image"] = self.source.get(other, np.random.RandomState(0))["image"]
        return example


def point_landing(source: synthetic.SyntheticSource, result: dict, scene_shift: int = 0) -> dict[str, float]:
    """Where a pointing result's predicted points land in its scenes, as fractions of all predicted points:
    on a shape of the kind the prompt asks for, on a shape of another kind, on the background.

    `scene_shift=SWAP_SHIFT`: each example's points read in another example's scene (the `SwappedImages`
    pairing): where points that know nothing of their scene land (chance, for the model's own spread)."""
    counts = collections.Counter()
    for p in result["predictions"]:
        asked = next(kind for kind in synthetic.SHAPES if kind in p["prompt"])
        for kind in source.kinds_at((p["example"] + scene_shift) % len(source), p["points"]):
            counts["background" if kind is None else "asked_kind" if kind == asked else "other_kind"] += 1
    total = sum(counts.values())
    return {k: counts[k] / total if total else float("nan") for k in ("asked_kind", "other_kind", "background")}


def cell_oracle_f1(source: synthetic.SyntheticSource, formatter, n: int, cells: int | None) -> float:
    """Pointing F1 (the official scorer) on the prompts of the first `n` examples of a held-out pointing
    `source` of an oracle that knows which cell of a `cells` x `cells` grid holds each gold point and answers
    the cell's centre (None: the gold points themselves). With the grid of the pooled image tokens (4 for
    112 px images, 14 px patches pooled 2 x 2) it is what a model can reach that only tells which token
    holds a shape."""
    size = source.image_size
    texts, references = [], []
    for item in runner.eval_items(source, runner.resolve_task("synthetic_points"), n, formatter):
        gold = item.reference["points"]
        side = size / (cells or size)
        answer = gold if cells is None else (np.floor(gold / side) + 0.5) * side
        texts.append(points_to_text(answer, (size / 100, size / 100), "shapes", "shapes") if len(gold) else
                     "There are none.")
        references.append(item.reference)
    return pointing.pointing_scores(texts, references)["f1"]


def position_readout(bundle: api.MolmoBundle, style: synthetic.SceneStyle, n: int = 1200, fit: int = 1000,
                     seed: int = 0) -> dict[str, float]:
    """How well the mean of a model's image tokens says where a lone shape is: ridge regression (lambda 1)
    from the mean over the pooled tokens float[d] of `fit` one-shape scenes (kind, colour, radius in
    `style.radius` and place at random) to the shape's centre (x, y), scored on the other n - fit scenes.

    The mean is what an LLM head attending to every image token alike reads; a model whose pointing answers
    miss while this readout finds the shape has the position in its image tokens but does not use it.
    Returns R^2 of (x, y), the median distance in pixels of the predicted centre, the fraction of scenes
    predicted within the smallest radius of the style, and the same two for always answering the mean
    centre of the fitted scenes (what knowing nothing gives)."""
    size = bundle.cfg.vit.image_size[0]
    rng = np.random.default_rng(seed)
    encode = jax.jit(lambda p, images, masks: Molmo(bundle.cfg).apply({"params": p}, images, masks,
                                                                      method=Molmo.encode_images))
    features, centres = [], []
    for _ in range(n):
        r = rng.uniform(*(f * size for f in style.radius))
        x, y = rng.uniform(r + 1, size - r - 1, size=2)
        shape = synthetic.Shape(str(rng.choice(synthetic.SHAPES)), str(rng.choice(list(synthetic.COLORS))), x, y, r)
        inputs = bundle.preprocessor(synthetic.draw_scene([shape], size), "Point")
        tokens = encode(bundle.params, inputs["images"][None], inputs["image_masks"][None])  # [1, crops, N, d]
        features.append(np.asarray(tokens, np.float64).reshape(-1, tokens.shape[-1]).mean(0))
        centres.append([x, y])
    a, centres = np.c_[np.array(features), np.ones(n)], np.array(centres)
    weights = np.linalg.solve(a[:fit].T @ a[:fit] + np.eye(a.shape[1]), a[:fit].T @ centres[:fit])
    truth = centres[fit:]
    predicted, mean = a[fit:] @ weights, np.broadcast_to(centres[:fit].mean(0), truth.shape)
    error = lambda guess: np.hypot(*(guess - truth).T)
    radius = style.radius[0] * size
    return {"r2": float(1 - ((predicted - truth) ** 2).sum() / ((truth - truth.mean(0)) ** 2).sum()),
            "median_error_px": float(np.median(error(predicted))),
            "within_radius": float(np.mean(error(predicted) < radius)),
            "mean_centre_median_error_px": float(np.median(error(mean))),
            "mean_centre_within_radius": float(np.mean(error(mean) < radius))}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pointing F1 of cell oracles on the PixMo-lite recipe's held-out "
                                                 "pointing set; with --readout, a model's position readout")
    parser.add_argument("--n", type=int, default=64, help="held-out examples (3 prompts each)")
    parser.add_argument("--readout", metavar="CHECKPOINT", help="also the position readout of this PixMo-lite "
                                                                "model's image tokens (`position_readout`)")
    args = parser.parse_args(argv)
    cfg = stage2.get_config("lite")
    source = synthetic.config_held_out_source("synthetic_points", cfg.data)
    formatter = runner.prompt_formatter(cfg.model)
    for cells in (None, 8, 4, 2):
        name = "gold points" if cells is None else f"{cells}x{cells} cell centres ({source.image_size / cells:g} px)"
        print(f"{name:32} F1 {cell_oracle_f1(source, formatter, args.n, cells):.3f}")
    if args.readout:
        r = position_readout(api.load(args.readout), synthetic.config_style(cfg.data))
        print(f"position readout of {args.readout} (one shape per scene, mean image token -> centre): R^2 "
              f"{r['r2']:.2f}, median error {r['median_error_px']:.1f} px, within the smallest radius "
              f"{r['within_radius']:.2f}; the mean centre: {r['mean_centre_median_error_px']:.1f} px, "
              f"{r['mean_centre_within_radius']:.2f}")


if __name__ == "__main__":
    main()
