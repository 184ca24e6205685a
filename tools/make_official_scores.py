"""Runs the official Molmo scorers on crafted inputs and writes tests/data/official_scores.json.

The official code is imported at run time from a checkout of allenai/molmo (nothing of it is copied):

  PYTHONPATH=<dir with editdistance and Levenshtein> \
    .venv/bin/python tools/make_official_scores.py --official-src /tmp/molmo

Heavy imports the scorers never use (boto3, rich, cached_path, torchmetrics, the HTML helpers) are
stubbed; evaluator classes run with a stand-in tokenizer whose "tokens" index the prediction strings,
and `mean_metric` is replaced so they return per-example scores instead of means. Cases where the
official code raises are stored with "raises": the exception type.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "official_scores.json"


# ------------------------------------------------------------------------------------------------
# Importing the official modules


def _stub(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def import_official(src: Path):
    """The official olmo.eval.vqa and olmo.eval.evaluators modules, made runnable on CPU without a
    process group; evaluators return per-example score lists."""
    for name in ("boto3", "botocore", "rich", "rich.console", "rich.highlighter", "rich.progress",
                 "rich.text", "rich.traceback", "cached_path"):
        _stub(name, **{a: mock.MagicMock() for a in ("Config", "Console", "ConsoleRenderable",
                                                     "NullHighlighter", "Progress", "Text", "Traceback")})
    _stub("botocore.exceptions", HTTPClientError=Exception, ConnectionError=Exception, ClientError=Exception)
    _stub("botocore.config", Config=object)
    _stub("cached_path.schemes", SchemeClient=type("SchemeClient", (), {"recoverable_errors": ()}),
          add_scheme_client=lambda c: None)
    _stub("torchmetrics", MeanMetric=object, Metric=object)
    # Package shells, so that olmo/__init__.py and olmo/eval/__init__.py (models, data) are not run.
    _stub("olmo", __path__=[str(src / "olmo")])
    _stub("olmo.eval", __path__=[str(src / "olmo" / "eval")])
    _stub("olmo.html_utils", build_html_table=None, postprocess_prompt=None, BoxesToVisualize=None,
          get_html_image_with_boxes=None)
    import olmo.eval.evaluators as evaluators
    import olmo.eval.vqa as vqa

    evaluators.mean_metric = lambda v: [_plain(x) for x in v]
    evaluators.get_world_size = lambda: 1
    evaluators.dist = types.SimpleNamespace(all_gather_into_tensor=lambda out, x: out.copy_(x))
    evaluators.torch = types.SimpleNamespace(
        int32=torch.int32, device=lambda name: torch.device("cpu"), cat=torch.cat, tensor=torch.tensor,
        zeros=torch.zeros, full=torch.full)
    return vqa, evaluators


def _plain(x):
    """JSON-able Python value of a numpy / torch scalar."""
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, float, np.integer, np.floating)):
        return float(x)
    return x


class FakeTokenizer:
    """decode([i]) = texts[i]."""

    def __init__(self, texts):
        self.texts = texts

    def decode(self, tokens):
        return self.texts[int(tokens[0])]


def run_evaluator(evaluator, predictions, metadatas):
    """The evaluator's per-example score lists for one batch."""
    tokens = {"predictions": [np.array([i]) for i in range(len(predictions))],
              "prompts": [np.array([-1]) for _ in predictions]}
    return evaluator(metadatas, tokens, FakeTokenizer(predictions))


def guarded(fn, *args):
    """{"official": fn(*args)} or {"raises": exception type name}."""
    try:
        return {"official": _plain(fn(*args))}
    except Exception as e:  # the official code's own failure is the data here
        return {"raises": type(e).__name__}


# ------------------------------------------------------------------------------------------------
# Crafted inputs

NORMALIZE_INPUTS = [
    "Two", "the Two dogs", "A cat.", "3.", "3.5", "1,000", "1,000 people", "dont", "Its", "isnt it?",
    "yes!", "no .", "hot-dog", "hot - dog", "a/b", "(left)", "left (side)", "  Tab\there\nnew  ",
    "an apple; a pear", "mr. smith", "e.g. this", "None", "zero point five", "ten", "eleven",
    "x" + "." * 40 + "y", ". ".join("abcdefghijklmnopqrstuvwxyz0123456789"), "5.", "5 .", "$5.00",
    "100%", "it's", "ma'am", "oclock", "\"quoted\"", "_under_score_", "3,4", "a.b.c", "St. Louis",
    "", " ", "The", "an", "youll", "yall'll",
]

VQA_CASES = [
    (["2"] * 10, "two"), (["2"] * 10, "Two."), (["2"] * 2 + ["3"] * 8, "2"), (["2"] * 1 + ["3"] * 9, "2"),
    (["2"] * 3 + ["3"] * 7, "2"), (["2"] * 4 + ["3"] * 6, "2"), (["dog"] * 10, "the dog"),
    (["dog"] * 10, "a dog"), (["hot dog"] * 10, "hot-dog"), (["hotdog"] * 10, "hot-dog"),
    (["hot dog"] * 5, "hot - dog"), (["yes"] * 10, "Yes."), (["yes"] * 10, ""), ([""] * 3, ""),
    (["3"] * 3, "3."), (["3."] * 3, "3"), (["1000"] * 3, "1,000"), (["don't"] * 3, "dont"),
    (["left side"] * 3, "left (side)"), ([], "x"), (["red", "Red", "RED", "blue"], "red"),
    (["St Louis"] * 3, "St. Louis"), (["x" * 3 + "y"] * 3, "x" + "." * 40 + "y"),
]

A_OKVQA_CASES = [
    (["dog"] * 3, "dog"), (["dog"] * 2, "Dog"), (["dog", "Dog ", "DOG"], " dog "), (["dog"] * 3, "the dog"),
    (["dogs"] * 3, "dog"), (["2"] * 3, "two"), ([" a"] * 4, "a"), (["x", "y"], "z"), (["hot dog"] * 3, "hot-dog"),
    (["yes"] * 10, "yes."),
]

ANLS_CASES = [
    ("hello", "hello"), ("Hello", "hello"), ("hello", "hallo"), ("hello", "help"), ("abc", "xyz"),
    ("abcd", "abce"), ("ab", "a"), ("abcdef", "abc"), ("abcdef", "abcd"), ("hello world", "helloworld"),
    ("", "x"), ("x", ""), ("İstanbul", "istanbul"), ("12.5", "12.50"), ("New York", "new  york"),
    ("A", "a"), ("abcdefghij", "abcdefgh"), ("abcdefghij", "abcdefg"), ("total", "Total:"),
    ("ü", "u"),
]

RELAXED_CASES = [
    ("10", "10"), ("10", "10.4"), ("10", "10.6"), ("10", "9.5"), ("10", "9.4"), ("50%", "50"),
    ("50%", "0.5"), ("50%", "51%"), ("0.5", "50%"), ("0", "0"), ("0", "0.0"), ("0", "0.01"),
    ("Yes", "yes"), ("Yes", "yes "), ("1,000", "1000"), ("1000", "1,000"), ("1e3", "1000"),
    ("1000", "1_000"), ("-5", "-5.2"), ("-5", "5"), ("nan", "nan"), ("inf", "inf"), ("12", " 12 "),
    ("abc", "ABC"), ("100", ""),
]

MC_CASES = [
    ("A", ["A", "B", "C", "D"]), ("a", ["A", "B", "C", "D"]), (" C ", ["A", "B", "C", "D"]),
    ("B: cat", ["A", "B", "C", "D"]), ("The answer is C", ["A", "B", "C", "D"]), ("", ["A", "B", "C", "D"]),
    ("cat", ["a cat", "a dog", "a bird"]), ("a", ["a cat", "a dog", "a bird"]), ("bird", ["a cat", "a dog", "a bird"]),
    ("dog", ["dog", "hot dog"]), ("og", ["dog", "hot dog"]), ("hot", ["dog", "hot dog"]), ("E", ["A", "B", "C", "D"]),
    ("AB", ["A", "B", "C", "D"]), ("blue", ["red", "green", "blue"]), ("bleu", ["red", "green", "blue"]),
    ("xyz", ["ab", "cd"]), ("D.", ["A", "B", "C", "D"]), ("(B)", ["A", "B", "C", "D"]),
    ("same", ["x", "x", "y"]), ("x", ["x", "X", "y"]),
]

REAL_WORLD_QA_CASES = [
    ("A", "A", "multiple_choice"), ("a", "A", "multiple_choice"), ("B.", "B", "multiple_choice"),
    ("The answer is D", "D", "multiple_choice"), ("C", "B", "multiple_choice"), ("", "A", "multiple_choice"),
    ("A", "E", "multiple_choice"), ("Two", "2", "short_answer"), ("2.", "2", "short_answer"),
    ("the car", "car", "short_answer"), ("Car", "cars", "short_answer"), ("yes", "Yes.", "short_answer"),
]

_MMMU_OPTIONS = ["cat", "dog", "bird", "fish"]
MMMU_CASES = [
    ("A", ["A"], "multiple-choice", _MMMU_OPTIONS), ("(B)", ["B"], "multiple-choice", _MMMU_OPTIONS),
    ("The answer is (C).", ["C"], "multiple-choice", _MMMU_OPTIONS), ("B.", ["B"], "multiple-choice", _MMMU_OPTIONS),
    ("A or B", ["B"], "multiple-choice", _MMMU_OPTIONS), ("(A) is wrong, (D) is right", ["D"], "multiple-choice", _MMMU_OPTIONS),
    ("I think the animal in the picture is a dog", ["B"], "multiple-choice", _MMMU_OPTIONS),
    ("I think it is a cat or maybe a dog, really", ["B"], "multiple-choice", _MMMU_OPTIONS),
    ("dog", ["B"], "multiple-choice", _MMMU_OPTIONS), ("none of these", ["A"], "multiple-choice", _MMMU_OPTIONS),
    ("", ["B"], "multiple-choice", _MMMU_OPTIONS), ("zzz", ["C"], "multiple-choice", _MMMU_OPTIONS),
    ("?", ["D"], "multiple-choice", _MMMU_OPTIONS), ("E", ["A"], "multiple-choice", ["x", "y", "", "z"]),
    ("C", ["C"], "multiple-choice", ["x", "y", "", "z"]), (".,A.", ["A"], "multiple-choice", _MMMU_OPTIONS),
    ("42", ["42"], "open", []), ("The answer is 42.", ["42"], "open", []), ("42.001", ["42"], "open", []),
    ("1,234", ["1234"], "open", []), ("x = 3.5", ["3.5"], "open", []), ("so the result is blue", ["blue"], "open", []),
    ("Blue", ["blue"], "open", []), ("a", ["a"], "open", []), ("it is 2e3", ["2000"], "open", []),
    ("First line is 4\nso final answer is 5", ["5"], "open", []), ("7", ["['7', '8']"], "open", []),
    ("the value is", ["value"], "open", []),
]

_MV_CHOICES = ["3/11", "8/11", "6/11", "3/5"]
MATH_VISTA_CASES = [
    ("B", "8/11", "multi_choice", "text", _MV_CHOICES, None), ("b", "8/11", "multi_choice", "text", _MV_CHOICES, None),
    ("8/11", "8/11", "multi_choice", "text", _MV_CHOICES, None), ("C", "8/11", "multi_choice", "text", _MV_CHOICES, None),
    ("The answer is B", "8/11", "multi_choice", "text", _MV_CHOICES, None),
    ("A", "ratio a:b", "multi_choice", "text", ["ratio a:b", "c"], None),
    ("14", "14", "free_form", "integer", [], None), ("14.0", "14", "free_form", "integer", [], None),
    ("fourteen", "14", "free_form", "integer", [], None), (" 14 ", "14", "free_form", "integer", [], None),
    ("0.6", "0.6", "free_form", "float", [], 1), ("0.61", "0.6", "free_form", "float", [], 1),
    ("0.65", "0.6", "free_form", "float", [], 1), ("1.45", "1.45", "free_form", "float", [], 2),
    ("1.45", "1.45", "free_form", "float", [], 2.0), ("1.5", "1.5", "free_form", "float", [], None),
    ("x", "1.5", "free_form", "float", [], 1), ("[2007, 2008]", "[2007, 2008]", "free_form", "list", [], None),
    ("inf", "inf", "free_form", "integer", [], None), ("1e3", "1000", "free_form", "integer", [], None),
]

COUNT_CASES = [
    ("3", 3), ("3.", 3), ("three", 3), ("Three.", 3), ("There are 3 dogs", 3), ("There are 3.", 3),
    ("Counting the <points x1=\"1.0\" y1=\"2.0\" alt=\"dog\">dog</points> shows a total of 1.", 1),
    ("a total of 4 dogs", 4), ("a total of 4 dogs and a total of 5 cats", 5), ("first line\na total of 6 dogs", 6),
    ("There are none.", 0), ("none", 0), ("none.", 1), ("", 0), ("twenty", 20), ("twenty-one", 21),
    ("+3", 3), ("-1", 0), ("3,", 3), ("I see 2 dogs and 5 cats", 5), ("4 dogs", 4), ("1_0", 10),
    ("There are 7 dogs. A total of 8", 8), ("a total of 9\nand 3 more", 3),
]

_IMG = [100, 80]  # w, h
POINTING_CASES = [
    # (text, gold points (pixels), mask rectangles [x0, y0, x1, y1) per object)
    ('<point x="10.0" y="12.5" alt="dog">dog</point>', [[10, 10]], [[5, 5, 15, 15]]),
    ('<point x="50.0" y="50.0" alt="dog">dog</point>', [[10, 10]], [[5, 5, 15, 15]]),
    ('<points x1="10.0" y1="12.5" x2="60.0" y2="62.5" alt="dog">dog</points>', [[10, 10], [60, 50]],
     [[5, 5, 15, 15], [55, 45, 65, 55]]),
    ('<points x1="10.0" y1="12.5" x2="11.0" y2="12.5" alt="dog">dog</points>', [[10, 10]], [[5, 5, 15, 15]]),
    ('<point x="10.0" y="12.5" alt="dog">dog</point>', [[10, 10], [60, 50]], [[5, 5, 15, 15], [55, 45, 65, 55]]),
    ("There are none.", [], []), ('<point x="10.0" y="12.5" alt="dog">dog</point>', [], []),
    ("There are none.", [[10, 10]], [[5, 5, 15, 15]]), ("", [[10, 10]], [[5, 5, 15, 15]]),
    ("(10.0, 12.5)", [[10, 10]], [[5, 5, 15, 15]]), ("(10.0, 12.5)\n(60.0, 62.5)", [[10, 10], [60, 50]],
                                                      [[5, 5, 15, 15], [55, 45, 65, 55]]),
    ("(10, 12)", [[10, 10]], [[5, 5, 15, 15]]), ('<point x="150.0" y="12.5" alt="dog">dog</point>', [[10, 10]],
                                                  [[5, 5, 15, 15]]),
    ('<point x="10.0" y="12.5" alt="dog">dog</point> <point x="60.0" y="62.5" alt="dog">dog</point>',
     [[10, 10], [60, 50]], [[5, 5, 15, 15], [55, 45, 65, 55]]),
    ("Click(10.0, 12.5)", [[10, 10]], [[5, 5, 15, 15]]),
    ('<point p=100,125 alt="dog">dog</point>', [[10, 10]], [[5, 5, 15, 15]]),
    ('<points 1=100,125 2=600,625 alt="dog">dog</points>', [[10, 10], [60, 50]], [[5, 5, 15, 15], [55, 45, 65, 55]]),
    ('The dog: <point x="10.0" y="12.5" alt="dog">dog</point>', [[10, 10]], [[5, 5, 15, 15]]),
    # Hungarian-by-distance pairs the point in the big mask with the wrong object.
    ('<points x1="30.0" y1="12.5" x2="90.0" y2="12.5" alt="o">o</points>', [[10, 10], [31, 10]],
     [[0, 0, 50, 30], [85, 5, 95, 15]]),
    ('<point x="40.0" y="12.5" alt="o">o</point>', [[10, 10], [45, 10]], [[0, 0, 50, 30], [60, 0, 70, 10]]),
    # Rounding half to even at a mask border: x = 14.5 -> 14 (inside), 15.5 -> 16 (outside [5, 16)).
    ('<point x="14.5" y="12.5" alt="dog">dog</point>', [[10, 10]], [[5, 5, 15, 15]]),
    ('<point x="15.5" y="12.5" alt="dog">dog</point>', [[10, 10]], [[5, 5, 16, 15]]),
    ('<point x="12.5" y="12.5" alt="dog">dog</point>', [[10, 10]], [[13, 5, 16, 15]]),
    ('<point x="99.9" y="99.9" alt="edge">edge</point>', [[99, 79]], [[90, 70, 100, 80]]),
    ('<points x1="10.0" y1="12.5" x2="10.0" y2="12.5" x3="60.0" y3="62.5" alt="d">d</points>',
     [[10, 10], [60, 50]], [[5, 5, 15, 15], [55, 45, 65, 55]]),
    ('<point x="10.0" y="12.5" alt="dog">dog', [[10, 10]], [[5, 5, 15, 15]]),
]

_NO_TIME = (-1, -1, -1)
CLOCK_CASES = [
    # (prediction, gold (hour, minute, second), is_test); each runs alone (the official loop leaks parsed
    # values from one example into the next).
    ("3:25", (3, 25, -1), False), ("3:28", (3, 25, -1), False), ("3:29", (3, 25, -1), False),
    ("3:22", (3, 25, -1), False), ("4:25", (3, 25, -1), False), ("3:25 PM", (3, 25, -1), False),
    ("3:25 PM", (15, 25, -1), False), ("3:25 pm", (15, 25, -1), False), ("3:25 AM", (3, 25, -1), False),
    ("12:05", (0, 5, -1), False), ("12:05", (12, 5, -1), False), ("03:05", (3, 5, -1), False),
    ("3:5", (3, 5, -1), False), ("The time is 3:25.", (3, 25, -1), False), ("It is 3:25 now", (3, 25, -1), False),
    ("3:25PM", (15, 25, -1), False), ("3", (3, 0, -1), False), ("3 o'clock", (3, 0, -1), False),
    ("3.25", (3, 25, -1), False), ("", (3, 25, -1), False), (":25", (3, 25, -1), False),
    ("  3:25 \n", (3, 25, -1), False), ("3:25", (3, -1, -1), False), ("3:25:10", (3, 25, 10), False),
    ("3:25:13", (3, 25, 10), False), ("3:25:14", (3, 25, 10), False), ("3:26:10", (3, 25, 10), False),
    ("3:25", (3, 25, 10), False), ("3:25:10 PM", (15, 25, 10), False), ("3:25:10", (3, 25, -1), False),
    ("I cannot tell.", _NO_TIME, False), ("3:25", _NO_TIME, False), ("", _NO_TIME, False),
    ("12:00", (12, 0, -1), True), ("0:00", (12, 0, -1), True), ("11:59", (12, 0, -1), True),
    ("11:59", (0, 0, -1), True), ("12:59", (1, 0, -1), True), ("3:00", (3, 60, -1), True),
    ("3:60", (4, 0, -1), True), ("3:60", (3, 0, -1), True), ("3:26", (3, 25, -1), True),
    ("3:27", (3, 25, -1), True), ("15:25", (3, 25, -1), True), ("3:25 PM", (3, 25, -1), True),
    ("3:59", (3, 0, -1), True), ("3:25:11", (3, 25, 10), True), ("3:25:12", (3, 25, 10), True),
    ("11:59:00", (0, 0, 0), True), ("4:25", (3, 25, -1), True), ("I cannot tell.", _NO_TIME, True),
    ("3:25", _NO_TIME, True), ("no idea", (0, 0, -1), True), ("3:xx", (3, 0, -1), True),
]


# ------------------------------------------------------------------------------------------------
# Running the official code


def masks_from_rects(rects, image_size):
    w, h = image_size
    masks = []
    for x0, y0, x1, y1 in rects:
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        masks.append(m)
    return masks


def official_pointing(evaluators, text, points, rects):
    meta = dict(points=np.array(points, np.float64).reshape(-1, 2) if points else [],
                masks=masks_from_rects(rects, _IMG), image_size=_IMG)
    try:
        out = run_evaluator(evaluators.PointingEval(), [text], [meta])
    except Exception as e:
        return {"raises": type(e).__name__}
    return {"official": {k: out[k][0] for k in ("precision", "recall", "f1")}}


def official_count(evaluators, text, count):
    out = run_evaluator(evaluators.PointCountEval(), [text], [dict(count=count)])
    return {"official": {k: out[k][0] for k in ("correct", "close", "valid")}}


def official_clock(evaluators, prediction, time, is_test):
    """`ClockEval`'s scores of one example: the metrics it has (absent ones are left out)."""
    meta = dict(zip(("hour", "minute", "second"), time))
    try:
        out = run_evaluator(evaluators.ClockEval(is_test=is_test), [prediction], [meta])
    except Exception as e:
        return {"raises": type(e).__name__}
    return {"official": {k: float(v[0]) for k, v in out.items() if v}}


def official_vqa_eval(evaluators, metric, predictions, metadatas):
    """Per-example scores of `VqaEval(metric)`, answer extraction included."""
    out = run_evaluator(evaluators.VqaEval((metric,)), predictions, metadatas)
    return out[metric]


def vqa_eval_cases():
    """(metric, predictions, metadatas) batches exercising `VqaEval`'s answer extraction."""
    raw = ["two", "Answer: two", "The answer is... Answer: Two. Answer: three", "two\ntwo\nthree",
           "three\ntwo\ntwo", "two\nthree", "  two   dogs ", "Answer:", "\n\n", "two\n\ntwo"]
    vqa = ("vqa_score", raw, [dict(answers=["2"] * 3 + ["3"] * 7)] * len(raw))
    docs = ("ansl", ["Answer: hello", "hello\nhallo", "HELLO  world"],
            [dict(answers=["hello", "hello world"])] * 3)
    chart = ("relaxed_correctness", ["Answer: 10.4", "10.4\n11", "12%"], [dict(answer="10")] * 2 + [dict(answer="12%")])
    em = ("em", ["Yes", "yes\nno\nno", " Yes "], [dict(answer="yes")] * 3)
    mc = ("mc", ["B", "Answer: C", "A\nB\nB"], [dict(option_names=["A", "B", "C", "D"], answer_idx=1)] * 3)
    aok = ("a_okvqa_score", ["Dog", "the dog"], [dict(answers=["dog"] * 3)] * 2)
    rwqa = ("real_world_qa_score", ["B", "Answer: A", "two"],
            [dict(answer="B", question_type="multiple_choice")] * 2 + [dict(answer="2", question_type="short_answer")])
    mmmu = ("mmmu_score", ["Answer: (B)", "zzz", "qqq", "The answer is 42.\n42"],
            [dict(answer="B", question_type="multiple-choice", options=_MMMU_OPTIONS)] * 3
            + [dict(answer="42", question_type="open", options=[])])
    return [vqa, docs, chart, em, mc, aok, rwqa, mmmu]


def generate(src: Path) -> dict:
    vqa, evaluators = import_official(src)

    data = {}
    # MMMU first: its random fallback draws from the global `random` seeded 42 at import.
    random.seed(42)
    data["mmmu_score"] = [
        dict(response=r, answers=a, question_type=t, options=o,
             **guarded(vqa.mmmu_score, a, r, dict(question_type=t, options=o)))
        for r, a, t, o in MMMU_CASES]
    random.seed(42)
    data["vqa_eval"] = [dict(metric=m, predictions=p, references=refs,
                             official=official_vqa_eval(evaluators, m, p, refs))
                        for m, p, refs in vqa_eval_cases()]

    data["normalize_vqa_answer"] = [dict(answer=a, **guarded(vqa.preprocess_answer, a)) for a in NORMALIZE_INPUTS]
    data["vqa_score"] = [dict(answers=a, prediction=p, **guarded(vqa.vqa_score, a, p)) for a, p in VQA_CASES]
    data["a_okvqa_score"] = [dict(answers=a, prediction=p, **guarded(vqa.a_okvqa_score, a, p))
                             for a, p in A_OKVQA_CASES]
    data["anls"] = [dict(target=t, prediction=p, **guarded(vqa.anls_metric, t, p))
                    for t, p in ANLS_CASES + [("", "")]]
    data["relaxed_correctness"] = [dict(target=t, prediction=p, **guarded(vqa.relaxed_correctness, t, p))
                                   for t, p in RELAXED_CASES]
    data["select_mc_option"] = [dict(prediction=p, options=o, **guarded(vqa.select_mc_option, p, o))
                                for p, o in MC_CASES]
    data["real_world_qa_score"] = [
        dict(prediction=p, answer=a, question_type=t,
             **guarded(vqa.real_world_qa_score, a, p, dict(question_type=t)))
        for p, a, t in REAL_WORLD_QA_CASES]
    data["math_vista_score"] = [
        dict(response=r, answer=a, question_type=qt, answer_type=at, choices=c, precision=prec,
             **guarded(lambda *args: vqa.math_vista_score(*args, use_api=False), r,
                       dict(example_id=i, question_type=qt, answer_type=at, choices=c, answer=a, query="",
                            precision=prec), None))
        for i, (r, a, qt, at, c, prec) in enumerate(MATH_VISTA_CASES)]
    data["count"] = [dict(prediction=p, count=c, **official_count(evaluators, p, c)) for p, c in COUNT_CASES]
    data["pointing"] = [dict(text=t, points=p, mask_rects=r, image_size=_IMG,
                             **official_pointing(evaluators, t, p, r)) for t, p, r in POINTING_CASES]
    data["clocks"] = [dict(prediction=p, hour=h, minute=m, second=sec, is_test=t,
                           **official_clock(evaluators, p, (h, m, sec), t)) for p, (h, m, sec), t in CLOCK_CASES]
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official-src", type=Path, required=True, help="checkout of allenai/molmo")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    data = generate(args.official_src.resolve())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {sum(len(v) for v in data.values())} cases to {args.out}")


if __name__ == "__main__":
    main()
