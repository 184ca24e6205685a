"""Benchmark runs: answer a dataset's prompts with a loaded model, score the answers, report.

    bundle = molmo_jax.load("Molmo-7B-D-0924/")
    result = evaluate(bundle, "chart_qa", data_dir="evaldata/", out_dir="eval/")  # -> {"metrics": {...}, ...}
    molmo-jax eval --checkpoint DIR --task chart_qa [--split test] --data-dir D --out OUT
    molmo-jax eval --checkpoint A --checkpoint B --task paper --data-dir D --out OUT   # the paper's table

Tasks (`tasks.TASKS`) are the paper's benchmarks, the academic validation sets, pointing, AndroidControl
(read by `data_pipelines.eval_sets` from `data_dir`, with the official inference settings: answer length,
max crops) and the held-out PixMo-lite sets (`data_pipelines.synthetic.config_held_out_source`: another
generator seed than training's, the scenes of the PixMo-lite recipe unless a training config says
otherwise); `open_dataset` is this module's one edge to `data_pipelines`. `evaluate` also takes any
`pixmo.Source` with a task. Example `i` is read and formatted with
`np.random.RandomState(seed + i)`, the rng of the official `DeterministicDataset`.
Every conversation of an example (each `message_list` entry; of a multi-turn one, its first exchange) is
one prompt: the official inference prompt, `Formatter(..., for_inference=True)` (prompt template and style
prefix, e.g. "point_count: How many circles?"), wrapped in role tags by `bundle.predict_batch`, answered
greedily in at most the task's `max_new_tokens` (launch_scripts/utils.py:get_evaluation: 12, 192 for
pointing / counting).

A task (`EvalTask`) names the official benchmark whose scorer it uses (`metrics.score`) and the reference
it builds per prompt:
  fields        the example's metadata, answer fields and  the benchmarks (VQA, ANLS, multiple choice,
                the formatter's option names                RealWorldQA, MMMU, MathVista, AndroidControl)
  short_answer  {"answer"}                                cap_qa (EM), docs (relaxed / ANLS and EM)
  clock         {"hour", "minute", "second"}              clocks (`ClockEval`; metadata, -1 = not shown)
  counting      {"count"}                                 count, points_counting (`PointCountEval`)
  pointing      {"points", "masks", "image_size"}         points (`PointingEval` precision / recall / F1)
Pointing masks are the example's own "masks" when it has them; the object masks of a dataset that
renders them (`dataset.object_masks(index, image)`: PixMo-lite scenes, from the generator's shape geometry)
("shapes"); else a distance fallback ("disc"): a disc of radius `DISC_RADIUS` x
the image's short side around each gold point, so a matched point within that distance is a hit, unlike
the official mask test. The result's "mask_source" says which were used.

With `out_dir`, every answer is appended to `out_dir/<task>.predictions.jsonl` as its batch finishes (its
first line the run's settings, the checkpoint included). With `resume` (the CLI's way) a run started again
with the same settings answers only the prompts after the last one written, and a file written with other
settings is refused; without it the file is started afresh. Examples whose image cannot be read
are dropped and counted ("dropped"). Test splits scored by a server (VQA v2, DocVQA, InfographicVQA)
get `out_dir/<task>_test_submission.json` in the server's format instead of metrics.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from typing import Any, Iterator, Mapping, Sequence

import ml_collections
import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from molmo_jax import points
from molmo_jax.eval.answers import answer_all, predictions_file, write_submission
from molmo_jax.eval.metrics import score
from molmo_jax.eval.tasks import PAPER_TASKS, TASKS, EvalTask, resolve_task
from molmo_jax.formatting import Formatter
from molmo_jax.preprocess import ImageError, Preprocessor, load_image

DISC_RADIUS = 0.05  # fallback pointing "mask": this fraction of the image's short side around a gold point
DRAW_MIN_SIDE = 448  # drawings of smaller images are upscaled (nearest) to about this short side
ANSWER_FIELDS = ("answer", "answers", "answer_idx", "options")  # message fields the official scorers read


@dataclasses.dataclass
class EvalItem:
    """One prompt: its example's index, the image (uint8[H, W, 3]; None: text only), the prompt without
    role tags, the gold answer as the formatter writes it for training (None: not known), the scorer's
    reference and the question's id (test-server files)."""
    example: int
    image: np.ndarray | None
    prompt: str
    answer: str | None
    reference: dict[str, Any]
    question_id: str | None = None


# ----------------------------------------------------------------------------- datasets and tasks

def prompt_formatter(cfg) -> Formatter:
    """The model's formatter writing bare prompts (template, style prefix): `predict_batch` adds role tags.

    `predict_batch` formats its prompt as style "demo", which adds no prefix only under the system prompt
    kinds of the released models (demo_or_style) or none; other kinds would get a second prefix.
    """
    formatter = Formatter.from_config(cfg)
    if formatter.system_prompt_kind in ("style", "style_and_length"):
        raise NotImplementedError(f"system_prompt_kind={formatter.system_prompt_kind!r}: predict_batch would add the "
                                  "'demo' style prefix to the eval prompt; evaluate needs demo_or_style or none")
    return dataclasses.replace(formatter, message_formatting="none", always_start_with_space=False)


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


def object_masks(dataset, index: int, image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """(object centres float[n, 2], their bool[H, W] masks) of example `index` from a dataset that renders
    them (`object_masks`, e.g. PixMo-lite scenes); None for others."""
    render = getattr(dataset, "object_masks", None)
    return None if render is None else render(index, image)


def disc_mask(point: np.ndarray, width: int, height: int, radius: float) -> np.ndarray:
    """bool[height, width]: pixels within `radius` of the (x, y) point."""
    y, x = np.mgrid[:height, :width]
    return (x - point[0]) ** 2 + (y - point[1]) ** 2 <= radius ** 2


def pointing_reference(message: Mapping[str, Any], image: np.ndarray, objects) -> dict[str, Any]:
    """`PointingEval` reference; each gold point's mask is the message's, its nearest object's (`objects`:
    `object_masks`), or a disc."""
    height, width = image.shape[:2]
    gold = gold_pixels(message, width, height)
    if "masks" in message:
        masks, source = [np.asarray(m, bool) for m in message["masks"]], "dataset"
    elif objects is not None:
        centres, object_mask = objects
        nearest = [int(np.argmin(((centres - p) ** 2).sum(-1))) for p in gold]
        masks, source = [object_mask[j] for j in nearest], "shapes"
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


def fields_reference(message: Mapping[str, Any], metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The fields the official evaluators read: the message's answer fields, then `metadata` (the
    example's and the conversation's metadata and the formatter's, e.g. "option_names") over them."""
    return {**{k: message[k] for k in ANSWER_FIELDS if k in message}, **metadata}


def reference(kind: str, message: Mapping[str, Any], image: np.ndarray, objects,
              metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The scorer's reference of one message for a task of `kind`."""
    if kind == "pointing":
        return pointing_reference(message, image, objects)
    if kind == "fields":
        return fields_reference(message, metadata or {})
    return MESSAGE_REFERENCES[kind](message)


# ----------------------------------------------------------------------------- prompts and answers

def training_answer(formatter: Formatter, message: Mapping[str, Any]) -> str | None:
    """The answer as the formatter writes it for training, None when the example has none (test splits);
    its rng only picks a (discarded) template or breaks ties among "answers"."""
    try:
        return formatter.get_user_prompt(message, is_training=False, rng=np.random.RandomState(0))[1]
    except ValueError:  # no answer field, or an empty "answers" list
        return None


def eval_items(dataset, task: EvalTask, n: int, formatter: Formatter, seed: int = 0,
               dropped: list | None = None) -> Iterator[EvalItem]:
    """The prompts of examples 0..n-1 in order, with their gold answers and references. Examples whose
    image cannot be read, or that the reader rejects (a ValueError such as a hash mismatch), are skipped;
    (index, reason) is appended to `dropped`."""
    for index in range(n):
        rng = np.random.RandomState(seed + index)
        try:
            example = dataset.get(index, rng)
            image = None if example.get("image") is None else load_image(example["image"])
        except (ImageError, OSError, ValueError) as e:
            logging.warning("%s: example %d dropped: %s", task.name, index, e)
            if dropped is not None:
                dropped.append((index, f"{type(e).__name__}: {e}"))
            continue
        objects = object_masks(dataset, index, image) if task.kind == "pointing" else None
        for message in conversations(example):
            message["image"] = image
            (prompt,), extra = formatter.format_example(message, is_training=False, for_inference=True, rng=rng)
            metadata = {**example.get("metadata", {}), **message.get("metadata", {}),
                        **{k: v for k, v in (extra or {}).items() if k not in ANSWER_FIELDS}}
            yield EvalItem(index, image, prompt, training_answer(formatter, message),
                           reference(task.kind, message, image, objects, metadata),
                           metadata.get("question_id"))


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


# ----------------------------------------------------------------------------- datasets and settings

def open_dataset(task: EvalTask, split: str | None = None, data_dir=None, image_dir=None, lite_data=None):
    """The dataset of `task`: its eval set read from `data_dir` (`split` default: the task's), or its
    held-out PixMo-lite set, drawn with the image size and scene style of `lite_data` (a training config's
    data section; default: the PixMo-lite recipe's, `lite.data_fields`), the library's edge to
    `data_pipelines`, its readers."""
    from data_pipelines import eval_sets, synthetic

    if task.dataset is None:
        if lite_data is None:
            from molmo_jax.recipes import lite
            lite_data = ml_collections.ConfigDict(lite.data_fields())
        return synthetic.config_held_out_source(task.name, lite_data)
    split = split or task.split
    if split not in task.splits:
        raise ValueError(f"{task.name}: no split {split!r}; allowed: {', '.join(task.splits)}")
    if data_dir is None:
        raise ValueError(f"{task.name} reads {task.dataset} from a data directory: pass data_dir (--data-dir)")
    return eval_sets.load(task.dataset, data_dir, split, image_dir)


def with_max_crops(bundle, max_crops: int | None):
    """`bundle` with its images cut into at most `max_crops` crops (None, the same, or a bundle without a
    preprocessor: `bundle` itself)."""
    if max_crops is None or not hasattr(bundle, "preprocessor") or bundle.cfg.preprocess.max_crops == max_crops:
        return bundle
    cfg = copy.deepcopy(bundle.cfg)
    cfg.preprocess.max_crops = max_crops
    return dataclasses.replace(bundle, cfg=cfg, preprocessor=Preprocessor(cfg, bundle.tokenizer))


# ----------------------------------------------------------------------------- evaluate

def evaluate(bundle, dataset, task: str | EvalTask | None = None, n: int | None = None, batch_size: int = 8,
             out_dir: epath.PathLike | None = None, draw: int = 4, *, max_new_tokens: int | None = None,
             seed: int = 0, scoring: Mapping[str, Any] | None = None, show: bool = True, split: str | None = None,
             data_dir=None, image_dir=None, max_crops: int | None = None, resume: bool = False,
             checkpoint: str | None = None) -> dict[str, Any]:
    """Answers the prompts of the first `n` examples (default: all) of `dataset` and scores them.

    bundle: anything with `cfg` (its formatting settings) and `predict_batch` (a `MolmoBundle`).
    dataset: a `pixmo.Source`, or a `TASKS` name: its eval set read from `data_dir` (`split`, `image_dir`:
      see `open_dataset`) or its held-out PixMo-lite set.
    task: a `TASKS` name or an `EvalTask` (default: the dataset's name).
    out_dir: where to stream `<task>.predictions.jsonl` (resumed with `resume`, see the module docstring)
      and write `<task>.json` (this result), a test-server file, and for pointing tasks the first `draw`
      prompts' gold-vs-predicted drawings `<task>_<k>.png`.
    checkpoint: names the model in the settings of the predictions file (the CLI: its directory).
    max_new_tokens / max_crops: default the task's; seed: of the examples' rngs; scoring: `ScoringOptions`
      fields (default official); show: print the metrics table.

    Returns {"task", "benchmark", "split", "examples", "prompts", "dropped", "max_new_tokens", "max_crops",
    "metrics" ({name: mean}; empty for a server-scored test split), "mask_source" (pointing tasks), "seconds",
    "files", "predictions" (per prompt: example, prompt, gold answer, prediction, points, reference without
    masks, scores: the scorer on that prompt alone)}.
    """
    start = time.perf_counter()
    if task is None and not isinstance(dataset, str):
        raise ValueError("evaluate needs the task of a dataset object")
    task = resolve_task(dataset if task is None else task)
    if isinstance(dataset, str):
        split = split or (task.split if task.dataset else None)
        dataset = open_dataset(task, split, data_dir, image_dir)
    n = len(dataset) if n is None else n
    if not 0 < n <= len(dataset):
        raise ValueError(f"n={n}: the dataset has {len(dataset)} examples")
    max_new_tokens = max_new_tokens or task.max_new_tokens
    max_crops = max_crops or task.max_crops
    bundle = with_max_crops(bundle, max_crops)
    settings = dict(checkpoint=checkpoint, task=task.name, split=split, examples=n, seed=seed,
                    max_new_tokens=max_new_tokens, max_crops=max_crops)
    if out_dir is not None:
        out_dir = epath.Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    dropped = []
    items = eval_items(dataset, task, n, prompt_formatter(bundle.cfg), seed, dropped)
    answered = answer_all(bundle, items, batch_size, max_new_tokens,
                          out_dir and predictions_file(out_dir, task.name), settings, task.name, resume)
    texts, references = [p.text for _, p in answered], [it.reference for it, _ in answered]
    server_scored = task.submission is not None and split == "test"
    scoring = dict(scoring or {})
    result = dict(task=task.name, benchmark=task.benchmark, split=split, examples=n, prompts=len(answered),
                  dropped=dropped, max_new_tokens=max_new_tokens, max_crops=max_crops,
                  metrics={} if server_scored else score(task.benchmark, texts, references, **scoring))
    if task.kind == "pointing":
        result["mask_source"] = sorted({r["mask_source"] for r in references})
    result["predictions"] = [dict(example=it.example, prompt=it.prompt, answer=it.answer, prediction=p.text,
                                  points=p.points, reference=it.reference,
                                  scores={} if server_scored else score(task.benchmark, [p.text], [it.reference],
                                                                        **scoring))
                             for it, p in answered]
    result["files"] = []
    if out_dir is not None:
        drawn = answered[:draw] if task.kind == "pointing" else []
        result["files"] = [str(out_dir / f"{task.name}.json")] + write_drawings(drawn, out_dir, task.name)
        if server_scored:
            result["files"].append(write_submission(task, answered, out_dir))
        result["files"].append(str(predictions_file(out_dir, task.name)))
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


# ----------------------------------------------------------------------------- the paper's table

def evaluate_paper(bundles: Mapping[str, Any], data_dir, out_dir=None, image_dir=None, show: bool = True,
                   paths: Mapping[str, str] | None = None, **kwargs) -> list[dict[str, Any]]:
    """Each bundle (name -> bundle, or a function loading it: one checkpoint in memory at a time) on the
    11 benchmarks of the paper's table (`tasks.PAPER_TASKS`) with their default splits and settings;
    `kwargs` go to `evaluate`. Every dataset is opened before any model loads, so a missing one fails at once. With `out_dir`, each run goes to `out_dir/<name>/` and the
    table to `out_dir/paper.{md,json,png}`; `paths` (name -> checkpoint directory) name the checkpoints in
    the predictions files. Returns `report.paper_rows`."""
    from molmo_jax.eval import report
    datasets = {name: open_dataset(TASKS[name], None, data_dir, image_dir) for name in PAPER_TASKS}
    results = {}
    for checkpoint, bundle in bundles.items():
        bundle = bundle() if callable(bundle) else bundle
        results[checkpoint] = {
            name: evaluate(bundle, dataset, name, split=TASKS[name].split, show=show,
                           out_dir=None if out_dir is None else epath.Path(out_dir) / checkpoint,
                           checkpoint=(paths or {}).get(checkpoint, checkpoint), **kwargs)
            for name, dataset in datasets.items()}
    rows = report.paper_rows(results)
    if out_dir is not None:
        report.write_paper(rows, out_dir)
    if show:
        print(report.markdown(rows))
    return rows


def data_parallel_mesh(batch_size: int):
    """A mesh splitting each batch over all devices (data parallel), or None for one device or a batch
    size they do not divide."""
    import jax

    from molmo_jax import sharding
    n = jax.device_count()
    return sharding.make_mesh((-1, 1, 1)) if n > 1 and batch_size % n == 0 else None
