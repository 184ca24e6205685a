"""Benchmark runs: answer a dataset's prompts with a loaded model, score the answers, report.

    bundle = molmo_jax.load("Molmo-7B-D-0924/")
    result = evaluate(bundle, "synthetic_count", n=32, out_dir="eval/")  # -> {"metrics": {...}, ...}
    molmo-jax eval --checkpoint DIR --task synthetic_count --n 32 --out DIR

Datasets are `pixmo.Source`s (`len` and `get(index, rng)` -> official example dicts) or the name of a
held-out PixMo-lite set (`synthetic`, generator seed `HELD_OUT_SEED`; training uses seed 0). Example `i` is
read and formatted with `np.random.RandomState(seed + i)`, the rng of the official `DeterministicDataset`.
Every conversation of an example (each `message_list` entry; of a multi-turn one, its first exchange) is
one prompt: the official inference prompt, `Formatter(..., for_inference=True)` (prompt template and style
prefix, e.g. "point_count: How many circles?"), wrapped in role tags by `bundle.predict_batch`, answered
greedily in at most the task's `max_new_tokens` (spec section 9: 12, 192 for pointing / counting).

A task (`EvalTask`) names the official benchmark whose scorer it uses (`metrics.score`) and the reference
it builds per prompt:
  short_answer  {"answer"}                                cap_qa (EM), docs (relaxed / ANLS and EM)
  clock         {"hour", "minute", "second"}              clocks (`ClockEval`; metadata, -1 = not shown)
  counting      {"count"}                                 count, points_counting (`PointCountEval`)
  pointing      {"points", "masks", "image_size"}         points (`PointingEval` precision / recall / F1)
Pointing masks are the example's own "masks" when it has them; for PixMo-lite scenes the object masks
rendered from the generator's shape geometry ("shapes": the scene is regenerated from its seed and must
redraw the example's image exactly); else a distance fallback ("disc"): a disc of radius `DISC_RADIUS` x
the image's short side around each gold point, so a matched point within that distance is a hit, unlike
the official mask test. The result's "mask_source" says which were used.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from etils import epath
from PIL import Image, ImageDraw
from tqdm import tqdm

from data_pipelines import synthetic
from molmo_jax import cli, points
from molmo_jax.eval.metrics import score
from molmo_jax.formatting import Formatter
from molmo_jax.preprocess import load_image

KINDS = ("short_answer", "clock", "counting", "pointing")
HELD_OUT_SEED = 12345  # generator seed of the held-out PixMo-lite sets (experiments/lite.py `eval_seed`)
HELD_OUT_SIZE = 1000  # examples of a held-out PixMo-lite set
DISC_RADIUS = 0.05  # fallback pointing "mask": this fraction of the image's short side around a gold point
DRAW_MIN_SIDE = 448  # drawings of smaller images are upscaled (nearest) to about this short side


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """How to score a dataset: reference kind (one of KINDS), `metrics.score` benchmark, answer budget."""
    name: str
    kind: str
    benchmark: str
    max_new_tokens: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"EvalTask.kind={self.kind!r}; allowed {KINDS}")


TASKS = {t.name: t for t in (
    EvalTask("synthetic_clocks", "clock", "clocks", 12),
    EvalTask("synthetic_cap_qa", "short_answer", "tally_qa", 12),
    EvalTask("synthetic_docs_charts", "short_answer", "chart_qa", 12),
    EvalTask("synthetic_docs_tables", "short_answer", "doc_qa", 12),
    EvalTask("synthetic_count", "counting", "pixmo_count", 192),
    EvalTask("synthetic_points_counting", "counting", "pixmo_count", 192),
    EvalTask("synthetic_points", "pointing", "pointing_eval", 192),
)}


@dataclasses.dataclass
class EvalItem:
    """One prompt: its example's index, the image (uint8[H, W, 3]), the prompt without role tags, the gold
    answer as the formatter writes it for training, and the scorer's reference."""
    example: int
    image: np.ndarray
    prompt: str
    answer: str
    reference: dict[str, Any]


# ----------------------------------------------------------------------------- datasets and tasks

def held_out_source(name: str, image_size: int = 112) -> synthetic.SyntheticSource:
    """The held-out PixMo-lite set `name` ("synthetic_<task>")."""
    task = name.removeprefix("synthetic_")
    if not name.startswith("synthetic_") or task not in synthetic.TASKS:
        raise KeyError(f"unknown PixMo-lite set {name!r}; known: {sorted('synthetic_' + t for t in synthetic.TASKS)}")
    return synthetic.SyntheticSource(task, HELD_OUT_SIZE, HELD_OUT_SEED, image_size)


def resolve_task(task: str | EvalTask) -> EvalTask:
    """`task` itself or the `TASKS` entry of that name."""
    if isinstance(task, EvalTask):
        return task
    if task not in TASKS:
        raise KeyError(f"unknown eval task {task!r}; known: {sorted(TASKS)}")
    return TASKS[task]


def prompt_formatter(cfg) -> Formatter:
    """The model's formatter writing bare prompts (template, style prefix): `predict_batch` adds role tags.

    `predict_batch` formats its prompt as style "demo", which adds no prefix only under the system prompt
    kinds of the released models (demo_or_style) or none; other kinds would get a second prefix.
    """
    formatter = Formatter.from_config(cfg)
    if formatter.system_prompt in ("style", "style_and_length"):
        raise NotImplementedError(f"system_prompt_kind={formatter.system_prompt!r}: predict_batch would add the "
                                  "'demo' style prefix to the eval prompt; evaluate needs demo_or_style or none")
    return dataclasses.replace(formatter, message_format="none", always_start_with_space=False)


def conversations(example: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The prompts of an example as single-exchange messages: its `message_list` entries (else itself),
    a multi-turn `messages` conversation as its first question / answer."""
    out = []
    for message in example.get("message_list", [example]):
        if "messages" in message:
            turns = message["messages"]
            message = dict(question=turns[0], answer=turns[1], style=message.get("style"))
        out.append(dict(message))
    return out


# ----------------------------------------------------------------------------- references

def gold_pixels(message: Mapping[str, Any], width: int, height: int) -> np.ndarray:
    """float64[n, 2] gold (x, y) pixels: `points` scaled by `point_scale` (percent) if given, else pixels."""
    pts = np.asarray(message["points"], np.float64).reshape(-1, 2)
    if "point_scale" in message:
        pts = pts / message["point_scale"] * np.array([width, height])
    return pts


def scene_shapes(dataset, index: int, image: np.ndarray) -> list[synthetic.Shape] | None:
    """The shapes of a PixMo-lite scene example regenerated from its seed (scene tasks draw the scene
    first); None for other datasets or when they do not redraw `image` exactly."""
    if not isinstance(dataset, synthetic.SyntheticSource):
        return None
    shapes = synthetic.random_scene(synthetic.task_rng(dataset.seed, dataset.task, index), dataset.image_size)
    return shapes if np.array_equal(synthetic.draw_scene(shapes, dataset.image_size), image) else None


def shape_mask(shape: synthetic.Shape, size: int) -> np.ndarray:
    """bool[size, size]: the pixels the generator paints for `shape`."""
    return (synthetic.draw_scene([shape], size) != synthetic.BACKGROUND).any(-1)


def disc_mask(point: np.ndarray, width: int, height: int, radius: float) -> np.ndarray:
    """bool[height, width]: pixels within `radius` of the (x, y) point."""
    y, x = np.mgrid[:height, :width]
    return (x - point[0]) ** 2 + (y - point[1]) ** 2 <= radius ** 2


def pointing_reference(message: Mapping[str, Any], image: np.ndarray, shapes) -> dict[str, Any]:
    """`PointingEval` reference; each gold point's mask is the message's, its nearest shape's, or a disc."""
    height, width = image.shape[:2]
    gold = gold_pixels(message, width, height)
    if "masks" in message:
        masks, source = [np.asarray(m, bool) for m in message["masks"]], "dataset"
    elif shapes is not None:
        centres = np.array([[s.x, s.y] for s in shapes]).reshape(-1, 2)
        nearest = [int(np.argmin(((centres - p) ** 2).sum(-1))) for p in gold]
        masks, source = [shape_mask(shapes[j], width) for j in nearest], "shapes"
    else:
        radius = DISC_RADIUS * min(width, height)
        masks, source = [disc_mask(p, width, height, radius) for p in gold], "disc"
    return dict(points=gold, masks=masks, image_size=(width, height), mask_source=source)


def count_reference(message: Mapping[str, Any]) -> dict[str, Any]:
    """`PointCountEval` reference: the metadata count, else the number of gold points."""
    if "count" in message.get("metadata", {}):
        return dict(count=int(message["metadata"]["count"]))
    if "points" not in message:
        raise ValueError("a counting example needs metadata['count'] or points")
    return dict(count=len(np.asarray(message["points"]).reshape(-1, 2)))


def clock_reference(message: Mapping[str, Any]) -> dict[str, int]:
    """`ClockEval` reference: the metadata's shown "hour", "minute", "second" (-1 when not shown)."""
    return {k: int(message["metadata"][k]) for k in ("hour", "minute", "second")}


def answer_reference(message: Mapping[str, Any]) -> dict[str, Any]:
    """`VqaEval` reference: "answer" or "answers"."""
    key = "answer" if "answer" in message else "answers"
    return {key: message[key]}


MESSAGE_REFERENCES = {"short_answer": answer_reference, "clock": clock_reference, "counting": count_reference}


def reference(kind: str, message: Mapping[str, Any], image: np.ndarray, shapes) -> dict[str, Any]:
    """The scorer's reference of one message for a task of `kind`."""
    if kind == "pointing":
        return pointing_reference(message, image, shapes)
    return MESSAGE_REFERENCES[kind](message)


# ----------------------------------------------------------------------------- prompts and answers

def eval_items(dataset, task: EvalTask, n: int, formatter: Formatter, seed: int = 0) -> Iterator[EvalItem]:
    """The prompts of examples 0..n-1 in order, with their gold answers and references."""
    for index in range(n):
        rng = np.random.RandomState(seed + index)
        example = dataset.get(index, rng)
        image = load_image(example["image"])
        shapes = scene_shapes(dataset, index, image) if task.kind == "pointing" else None
        for message in conversations(example):
            message["image"] = image
            (prompt,), _ = formatter.format_example(message, is_training=False, for_inference=True, rng=rng)
            # The training answer; its rng only picks a (discarded) template or breaks ties among "answers".
            _, answer, _ = formatter.get_user_prompt(message, is_training=False, rng=np.random.RandomState(0))
            yield EvalItem(index, image, prompt, answer, reference(task.kind, message, image, shapes))


def _chunks(items: Iterable[EvalItem], size: int) -> Iterator[list[EvalItem]]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def answer_items(bundle, items: Iterable[EvalItem], batch_size: int, max_new_tokens: int):
    """(item, Prediction) pairs, `batch_size` prompts per `predict_batch` call. A short last batch after
    full ones is padded with copies of its last item to reuse the compiled program of the full ones."""
    padded = False
    for batch in _chunks(items, batch_size):
        run = batch + batch[-1:] * (batch_size - len(batch)) if padded else batch
        padded = True
        predictions = bundle.predict_batch([it.image for it in run], [it.prompt for it in run],
                                           max_new_tokens=max_new_tokens)
        yield from zip(batch, predictions)


# ----------------------------------------------------------------------------- outputs

def draw_comparison(image: np.ndarray, gold: np.ndarray, predicted: np.ndarray) -> Image.Image:
    """The image twice, side by side: gold points (left) and predicted points (right), upscaled (nearest)
    when small."""
    height, width = image.shape[:2]
    scale = max(1, -(-DRAW_MIN_SIDE // min(height, width)))
    big = Image.fromarray(image).resize((width * scale, height * scale), Image.NEAREST)
    panels = [points.draw(big, np.asarray(p, np.float64).reshape(-1, 2) * scale) for p in (gold, predicted)]
    out = Image.new("RGB", (2 * big.width + 8, big.height), "white")
    canvas = ImageDraw.Draw(out)
    for k, (panel, title) in enumerate(zip(panels, ("gold", "predicted"))):
        out.paste(panel, (k * (big.width + 8), 0))
        canvas.text((k * (big.width + 8) + 4, 2), title, fill=(0, 0, 0), stroke_width=2, stroke_fill="white")
    return out


def _jsonable(value):
    """JSON-ready copy: arrays as lists, numpy scalars as Python ones, object masks left out."""
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items() if k != "masks"}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return value


def print_table(result: Mapping[str, Any]):
    """The metrics as a table: rich if installed, else plain text."""
    title = f"{result['task']} ({result['benchmark']} scorer): {result['prompts']} prompts, {result['seconds']:.1f}s"
    rows = [(name, f"{value:.4f}") for name, value in result["metrics"].items()]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(name) for name, _ in rows)
        print("\n".join([title] + [f"  {name:<{width}}  {value}" for name, value in rows]))
        return
    table = Table("metric", "value")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(title)
    console.print(table)


# ----------------------------------------------------------------------------- evaluate

def evaluate(bundle, dataset, task: str | EvalTask | None = None, n: int | None = None, batch_size: int = 8,
             out_dir: epath.PathLike | None = None, draw: int = 4, *, max_new_tokens: int | None = None,
             seed: int = 0, scoring: Mapping[str, Any] | None = None, show: bool = True) -> dict[str, Any]:
    """Answers the prompts of the first `n` examples (default: all) of `dataset` and scores them.

    bundle: anything with `cfg` (its formatting settings) and `predict_batch` (a `MolmoBundle`).
    dataset: a `pixmo.Source` or a held-out PixMo-lite set by name (`held_out_source`).
    task: a `TASKS` name or an `EvalTask` (default: the dataset's name).
    out_dir: where to write `<task>.json` (this result) and, for pointing tasks, the first `draw` prompts'
      gold-vs-predicted drawings `<task>_<k>.png`.
    max_new_tokens: default the task's; seed: of the examples' rngs; scoring: `ScoringOptions` fields
      (default official); show: print the metrics table.

    Returns {"task", "benchmark", "examples", "prompts", "max_new_tokens", "metrics" ({name: mean}),
    "mask_source" (pointing tasks), "seconds", "files", "predictions" (per prompt: example, prompt, gold
    answer, prediction, points, reference without masks)}.
    """
    start = time.perf_counter()
    if task is None and not isinstance(dataset, str):
        raise ValueError("evaluate needs the task of a dataset object")
    source = held_out_source(dataset) if isinstance(dataset, str) else dataset
    task = resolve_task(dataset if task is None else task)
    n = len(source) if n is None else n
    if not 0 < n <= len(source):
        raise ValueError(f"n={n}: the dataset has {len(source)} examples")
    max_new_tokens = max_new_tokens or task.max_new_tokens
    items = eval_items(source, task, n, prompt_formatter(bundle.cfg), seed)
    answered = list(tqdm(answer_items(bundle, items, batch_size, max_new_tokens), desc=task.name, unit="prompt",
                         disable=None, leave=False))
    references = [it.reference for it, _ in answered]
    result = dict(task=task.name, benchmark=task.benchmark, examples=n, prompts=len(answered),
                  max_new_tokens=max_new_tokens,
                  metrics=score(task.benchmark, [p.text for _, p in answered], references, **(scoring or {})))
    if task.kind == "pointing":
        result["mask_source"] = sorted({r["mask_source"] for r in references})
    result["predictions"] = [dict(example=it.example, prompt=it.prompt, answer=it.answer, prediction=p.text,
                                  points=p.points, reference=it.reference) for it, p in answered]
    result["files"] = []
    if out_dir is not None:
        out_dir = epath.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        drawn = answered[:draw] if task.kind == "pointing" else []
        result["files"] = [str(out_dir / f"{task.name}.json")] + write_drawings(drawn, out_dir, task.name)
    result["seconds"] = time.perf_counter() - start
    result = _jsonable(result)
    if out_dir is not None:
        epath.Path(result["files"][0]).write_text(json.dumps(result, indent=1))
    if show:
        print_table(result)
    return result


def write_drawings(answered: Sequence, out_dir: epath.Path, name: str) -> list[str]:
    """Writes `draw_comparison` of each (item, prediction) to `out_dir/<name>_<k>.png`; returns the paths."""
    paths = []
    for k, (item, prediction) in enumerate(answered):
        paths.append(str(out_dir / f"{name}_{k:03d}.png"))
        with epath.Path(paths[-1]).open("wb") as f:
            draw_comparison(item.image, item.reference["points"], prediction.points).save(f, format="PNG")
    return paths


# ----------------------------------------------------------------------------- CLI

def _eval_arguments(parser: argparse.ArgumentParser):
    cli._add_checkpoint_arguments(parser)
    parser.add_argument("--task", required=True, choices=sorted(TASKS), help="held-out PixMo-lite set to score")
    parser.add_argument("--n", type=int, help=f"number of examples (default: all {HELD_OUT_SIZE})")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", type=epath.Path, help="directory for <task>.json and pointing drawings")
    parser.add_argument("--draw", type=int, default=4, help="pointing drawings to write (gold | predicted)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the task's (12, 192 for pointing/counting)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples' formatting rngs")


def _eval(args) -> int:
    evaluate(cli._load_bundle(args), args.task, n=args.n, batch_size=args.batch_size, out_dir=args.out,
             draw=args.draw, max_new_tokens=args.max_new_tokens, seed=args.seed)
    if args.out:
        print(f"wrote {args.out / args.task}.json")
    return 0


cli.register(cli.Command("eval", "score a checkpoint on a held-out PixMo-lite task (table, JSON, drawings)",
                         _eval_arguments, _eval))
