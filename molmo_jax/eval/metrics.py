"""Benchmark-level scoring: `score(benchmark, predictions, references, **options) -> {metric: mean}`.

Mirrors the official evaluator choice (launch_scripts/utils.py:get_evaluator) and each evaluator's
handling of the generated text (olmo/eval/evaluators.py: `VqaEval`, `PointingEval`, `PointCountEval`,
`CountEval`, `AndroidControlEval`, `MathVistaEval`).

predictions: generated strings. references: one dict per example with the official metadata fields:
  short-answer benchmarks   "answer" (str or list) or "answers" (list); optional "is_human" (ChartQA)
  multiple choice           "option_names" (e.g. ["A", "B", "C", "D"]), "answer_idx"; AI2D optionally
                            "abc_label", "has_transparent_box"
  real_world_qa             "answer", "question_type" ("multiple_choice" or "short_answer")
  mmmu                      "answer", "question_type" ("multiple-choice" or "open"), "options"
  math_vista                "answer", "question_type", "answer_type", "choices", "precision"
  countbench_qa, pixmo_count "count"
  pointing_eval             "points" (float[n, 2] pixels), "masks" (n bool [H, W]), "image_size" (w, h)
  clocks, clock_bench       "hour", "minute", "second" (ints, -1 = not shown; all -1 = unanswerable)
  android_control           "target_action" (e.g. "Click(540, 1200)"), "target_box" (x1, y1, x2, y2)

options (`ScoringOptions`): every default reproduces the official scorers (paper-comparable); the
others select the corrected behaviour of a quirk, see the field comments. Elo ratings from pairwise
preferences are not per-example scores: see `molmo_jax.eval.elo.elo_ratings`.
"""
from __future__ import annotations

import dataclasses
import functools
import random
from typing import Any, Callable, Mapping, Sequence

from molmo_jax.eval.android_control import step_accuracy
from molmo_jax.eval.clocks import clock_scores
from molmo_jax.eval.common import as_references, mean
from molmo_jax.eval.counting import count_scores
from molmo_jax.eval.math_vista import math_vista_score
from molmo_jax.eval.mmmu import MMMU_SEED, mmmu_score
from molmo_jax.eval.pointing import pointing_scores
from molmo_jax.eval.vqa import (a_okvqa_score, anls_score, exact_match, extract_short_answer,
                                mc_score, real_world_qa_score, relaxed_score, vqa_score)


@dataclasses.dataclass(frozen=True)
class ScoringOptions:
    """Quirk switches; the defaults are the official behaviour."""
    # VQA normalisation: strip a period after a digit and only the first 32 periods (official).
    official_periods: bool = True
    # VQA score as the VQA v2 server's 10-choose-9 average instead of min(#matches / 3, 1).
    vqa_leave_one_out: bool = False
    # Counting: read "none" as 0 (official: invalid) / find "a total of N" beyond the first line.
    count_none_is_zero: bool = False
    count_all_lines: bool = False
    # Pointing: "distance" (official) or "mask" matching; "half_even" (official) or "half_up" pixel
    # rounding; a format check that rejects several point tags.
    point_match: str = "distance"
    point_rounding: str = "half_even"
    point_strict_format: bool = False
    # MMMU: seed of the random guess for unparseable multiple-choice answers; None scores them wrong.
    mmmu_seed: int | None = MMMU_SEED


Reference = Mapping[str, Any]
ExampleScorer = Callable[[str, Reference, ScoringOptions], float]


def _answers(ref: Reference) -> list[str]:
    """Gold answers as `VqaEval` reads them: "answer" before "answers", a string as a 1-list."""
    return as_references(ref["answer"] if "answer" in ref else ref["answers"])


SHORT_ANSWER_METRICS: dict[str, ExampleScorer] = {
    "vqa_score": lambda p, r, o: vqa_score(_answers(r), p, official_periods=o.official_periods,
                                           leave_one_out=o.vqa_leave_one_out),
    "a_okvqa_score": lambda p, r, o: a_okvqa_score(_answers(r), p),
    "anls": lambda p, r, o: anls_score(_answers(r), p),
    "relaxed_correctness": lambda p, r, o: relaxed_score(_answers(r), p),
    "em": lambda p, r, o: exact_match(_answers(r), p),
    "mc": lambda p, r, o: mc_score(p, r["option_names"], r["answer_idx"]),
    "real_world_qa_score": lambda p, r, o: real_world_qa_score(r["answer"], p, r["question_type"],
                                                               official_periods=o.official_periods),
}


def _subset_mean(scores: Sequence[float], keep: Sequence[bool]) -> float:
    return mean([s for s, k in zip(scores, keep) if k])


def _example_scores(name: str, predictions, references, opts) -> list[float]:
    """Per-example `name` scores of the short answers extracted as `VqaEval` does."""
    scorer = SHORT_ANSWER_METRICS[name]
    return [scorer(extract_short_answer(p), r, opts) for p, r in zip(predictions, references)]


def _short_answer(predictions, references, opts, metrics: Sequence[str]) -> dict[str, float]:
    """`VqaEval`: mean of each metric; references with "is_human" also get `{metric}_human` /
    `{metric}_aug` means (ChartQA)."""
    out = {}
    for name in metrics:
        scores = _example_scores(name, predictions, references, opts)
        out[name] = mean(scores)
        if references and "is_human" in references[0]:
            human = [bool(r["is_human"]) for r in references]
            out[f"{name}_human"] = _subset_mean(scores, human)
            out[f"{name}_aug"] = _subset_mean(scores, [not h for h in human])
    return out


def _ai2d(predictions, references, opts) -> dict[str, float]:
    """Multiple-choice accuracy; with "abc_label" metadata also the official transparent / opaque
    splits (letter-labelled diagrams count only in the split of their box style)."""
    scores = _example_scores("mc", predictions, references, opts)
    out = {"mc": mean(scores)}
    if references and "abc_label" in references[0]:
        for split, transparent in (("transparent", True), ("opaque", False)):
            keep = [not r["abc_label"] or r["has_transparent_box"] == transparent for r in references]
            out[f"mc_ai2d_{split}"] = _subset_mean(scores, keep)
    return out


def _mmmu(predictions, references, opts) -> dict[str, float]:
    """MMMU accuracy; one seeded random stream serves the examples' fallbacks in order."""
    rng = None if opts.mmmu_seed is None else random.Random(opts.mmmu_seed)
    scores = [mmmu_score(_answers(r), extract_short_answer(p), r["question_type"], r.get("options", ()), rng)
              for p, r in zip(predictions, references)]
    return {"mmmu_score": mean(scores)}


def _math_vista(predictions, references, opts) -> dict[str, float]:
    """MathVista accuracy with the offline fallback extraction (not the paper's GPT-4 extraction)."""
    scores = [math_vista_score(p.strip(), r["answer"], r["question_type"], r["answer_type"], r["choices"],
                               r.get("precision")) for p, r in zip(predictions, references)]
    return {"math_vista_score": mean(scores)}


def _counting(predictions, references, opts) -> dict[str, float]:
    """`PointCountEval`: correct / close / valid and per-gold-count accuracy."""
    return count_scores(predictions, [r["count"] for r in references],
                        none_is_zero=opts.count_none_is_zero, all_lines=opts.count_all_lines)


def _pointing(predictions, references, opts) -> dict[str, float]:
    """`PointingEval`: mean precision / recall / F1."""
    return pointing_scores([p.strip() for p in predictions], references, match=opts.point_match,
                           rounding=opts.point_rounding, strict_format=opts.point_strict_format)


def _clocks(predictions, references, opts, test_mode: bool = False) -> dict[str, float]:
    """`ClockEval`: hour / minute / second correct and close, declining unanswerable clocks; metrics no
    example has are left out. `test_mode` is ClockBench's `is_test` (12-hour dial wraparounds)."""
    return clock_scores(predictions, references, test_mode=test_mode)


def _android_control(predictions, references, opts) -> dict[str, float]:
    """`AndroidControlEval`: step-wise accuracy."""
    return {"accuracy": mean(step_accuracy(predictions, [r["target_action"] for r in references],
                                           [r["target_box"] for r in references]))}


def _short(*metrics: str):
    return functools.partial(_short_answer, metrics=metrics)


# Official task names (launch_scripts/utils.py) -> scorer.
BENCHMARKS = {
    "coco_2014_vqa": _short("vqa_score"),
    "text_vqa": _short("vqa_score"),
    "okvqa": _short("vqa_score"),
    "a_okvqa_da": _short("a_okvqa_score"),
    "a_okvqa_mc": _short("mc"),
    "science_qa_img": _short("mc"),
    "ai2_diagram": _ai2d,
    "chart_qa": _short("relaxed_correctness", "em"),
    "doc_qa": _short("anls", "em"),
    "info_qa": _short("anls", "em"),
    "st_qa": _short("anls", "em"),
    "tally_qa": _short("em"),
    "real_world_qa": _short("real_world_qa_score"),
    "mmmu": _mmmu,
    "math_vista": _math_vista,
    "countbench_qa": _counting,
    "pixmo_count": _counting,
    "pointing_eval": _pointing,
    "clocks": _clocks,
    "clock_bench": functools.partial(_clocks, test_mode=True),
    "android_control": _android_control,
}
ALIASES = {
    "vqa2": "coco_2014_vqa", "vqa_v2": "coco_2014_vqa", "coco_2014_vqa_multi": "coco_2014_vqa",
    "textvqa": "text_vqa", "ok_vqa": "okvqa", "chartqa": "chart_qa", "docvqa": "doc_qa",
    "infographicvqa": "info_qa", "infovqa": "info_qa", "stvqa": "st_qa", "ai2d": "ai2_diagram",
    "ai2_diagram_v2_mix_transparent": "ai2_diagram", "realworldqa": "real_world_qa",
    "real_world_qa_no_instruction": "real_world_qa", "mmmu_test": "mmmu", "mathvista": "math_vista",
    "math_vista_v2": "math_vista", "countbench": "countbench_qa", "countbenchqa": "countbench_qa",
    "pixmo_count_counting": "pixmo_count", "pointing": "pointing_eval", "pixmo_points": "pointing_eval",
    "clock": "clocks", "pixmo_clocks": "clocks", "clockbench": "clock_bench",
    "android_control_ll": "android_control", "android_control_hl": "android_control",
    "android_control_hl_ll": "android_control", "android_control_hl_cot": "android_control",
}


def score(benchmark: str, predictions: Sequence[str], references: Sequence[Reference],
          **options) -> dict[str, float]:
    """Mean scores of `predictions` on `benchmark` (an official task name or an alias; a ":split"
    suffix is ignored). `options` are `ScoringOptions` fields."""
    name = benchmark.split(":")[0].lower()
    name = ALIASES.get(name, name)
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {benchmark!r}; known: {sorted(BENCHMARKS) + sorted(ALIASES)}")
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    return BENCHMARKS[name](list(predictions), list(references), ScoringOptions(**options))
