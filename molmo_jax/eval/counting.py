"""Counting accuracy (CountBenchQA, PixMo-Count) as the official `PointCountEval` computes it.

A count is parsed from the generation: its last word as an integer or number word, else "a total of
N". Two official quirks are reproduced by default (paper-comparable):
- "none" answers ("There are none.") are invalid, not 0: the official regex for them is a non-raw
  string whose `\\b` is a backspace, so it never matches. `none_is_zero=True` reads them as 0.
- "a total of N" is only looked for on the first line (`re.match` with ".*"); `all_lines=True`
  searches the whole text (the last occurrence wins, as on the first line).
"""
from __future__ import annotations

import re
from collections import defaultdict
from typing import Sequence

from molmo_jax.eval.common import mean

WORD_TO_NUM = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20,
}


def _last_word_count(words: Sequence[str]) -> int | None:
    """The last word as Python int() reads it (so "+3", "1_0" count) or as a number word."""
    if not words:
        return None
    try:
        return int(words[-1])
    except ValueError:
        return WORD_TO_NUM.get(words[-1])


def _total_of(text: str, all_lines: bool) -> int | None:
    """N of the last "a total of N" (on the first line only, unless `all_lines`)."""
    scope = text if all_lines else text.split("\n", 1)[0]
    found = re.findall(r"a total of ([0-9]+)", scope)
    return int(found[-1]) if found else None


def parse_count(text: str, *, none_is_zero: bool = False, all_lines: bool = False) -> int | None:
    """The count a generation states, or None when it states none (an invalid answer)."""
    text = text.strip().lower().rstrip(".").strip()
    count = _last_word_count(text.split())
    if count is None:
        count = _total_of(text, all_lines)
    if count is None and none_is_zero and re.search(r"\bnone\b", text):
        count = 0
    return count


def count_example_scores(prediction: str, count: int, **parse_options) -> dict[str, float]:
    """correct (exact), close (off by at most one) and valid (a count was parsed) of one example."""
    parsed = parse_count(prediction, **parse_options)
    if parsed is None:
        return dict(correct=0.0, close=0.0, valid=0.0)
    return dict(correct=float(parsed == count), close=float(abs(parsed - count) <= 1), valid=1.0)


def count_scores(predictions: Sequence[str], counts: Sequence[int], **parse_options) -> dict[str, float]:
    """Mean correct / close / valid, and `correct_{k}`: the accuracy on examples whose gold count is k."""
    per_example = [count_example_scores(p, c, **parse_options) for p, c in zip(predictions, counts)]
    out = {k: mean([s[k] for s in per_example]) for k in ("correct", "close", "valid")}
    by_count = defaultdict(list)
    for s, c in zip(per_example, counts):
        by_count[int(c)].append(s["correct"])
    out.update({f"correct_{k}": mean(v) for k, v in sorted(by_count.items())})
    return out

