"""Clock reading (PixMo-Clocks, ClockBench) as the official `ClockEval` (olmo/eval/evaluators.py) scores it.

Reference fields: "hour", "minute", "second" (ints; -1 = not shown on the clock). An example with all
three -1 is unanswerable. The official task "clocks" scores with `test_mode=False`, "clock_bench" with
`test_mode=True` (launch_scripts/utils.py `get_evaluator`).

Per answerable example the prediction (stripped) is split at ":": the hour is the last word before the
first ":", the minute / second the first word after the first / second one, read with Python int();
a missing or non-integer field is wrong.
- hour_correct: equal, or gold 0 and predicted 12. Outside test mode "PM" anywhere in the text adds 12
  to the predicted hour (case-sensitive, so gold hours must be 24-hour when answers say "PM").
- minute_correct / minute_close: equal / within `err_threshold` (3 minutes; 1 in test mode).
- second_correct / second_close, only for examples showing seconds, likewise.
- all_correct / all_close: hour correct and minute (and second) correct / close; overall_exact /
  overall_close equal them.
Per unanswerable example: correctly_declines_to_answer = the text has no ":"; overall_exact and
overall_close equal it.
Test mode (ClockBench, 12-hour dials): gold hour 12 and gold / predicted minute 60 read as 0, a
predicted hour >= 12 loses 12, minutes 59 apart are close (the dial wraps), and without seconds a
prediction 719 minutes from the gold time (11:59 for 0:00) is all_close.

Each metric is the mean over the examples that have it; a metric no example has (second_* without
seconds shown, correctly_declines_to_answer without unanswerable examples) is left out of the result
(the official mean of no values is a weight-0 NaN, not a score).

One deviation: in test mode the official 719-minute check reads the predicted hour and minute even when
they failed to parse, raising (first example) or reusing an earlier example's values (later ones); here
such an example is not all_close.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from molmo_jax.eval.common import mean

CLOCK_METRICS = ("overall_close", "overall_exact", "correctly_declines_to_answer", "all_correct", "all_close",
                 "hour_correct", "minute_correct", "second_correct", "minute_close", "second_close")
NOT_SHOWN = -1


def _field(parts: Sequence[str], index: int, word: int) -> int | None:
    """int() of word `word` of the `index`-th ":"-separated part; None when absent or not an integer."""
    try:
        return int(parts[index].split()[word])
    except (IndexError, ValueError):
        return None


def _predicted_hour(text: str, parts: Sequence[str], test_mode: bool) -> int | None:
    hour = _field(parts, 0, -1)
    if hour is None:
        return None
    if "PM" in text and not test_mode:
        hour += 12
    return hour - 12 if test_mode and hour >= 12 else hour


def _predicted_minute(parts: Sequence[str], test_mode: bool) -> int | None:
    minute = _field(parts, 1, 0)
    return 0 if test_mode and minute == 60 else minute


def _close(pred: int | None, gold: int, threshold: int) -> bool:
    return pred is not None and abs(pred - gold) <= threshold


def clock_example_scores(prediction: str, hour: int, minute: int, second: int, *,
                         test_mode: bool = False) -> dict[str, float]:
    """The `CLOCK_METRICS` an example has (see the module docstring) for a gold time (-1 = not shown)."""
    text = prediction.strip()
    if test_mode:
        hour, minute = (0 if hour == 12 else hour), (0 if minute == 60 else minute)
    if max(hour, minute, second) <= NOT_SHOWN:
        declines = float(":" not in text)
        return dict(overall_close=declines, overall_exact=declines, correctly_declines_to_answer=declines)

    threshold = 1 if test_mode else 3
    parts = text.split(":")
    pred_hour, pred_minute = _predicted_hour(text, parts, test_mode), _predicted_minute(parts, test_mode)
    hour_correct = pred_hour is not None and (pred_hour == hour or (hour == 0 and pred_hour == 12))
    minute_correct = pred_minute == minute
    minute_close = _close(pred_minute, minute, threshold) or (
        test_mode and pred_minute is not None and abs(pred_minute - minute) == 59)
    scores = dict(hour_correct=hour_correct, minute_correct=minute_correct, minute_close=minute_close)
    all_correct, all_close = hour_correct and minute_correct, hour_correct and minute_close
    if second != NOT_SHOWN:
        pred_second = _field(parts, 2, 0)
        scores.update(second_correct=pred_second == second, second_close=_close(pred_second, second, threshold))
        all_correct, all_close = all_correct and scores["second_correct"], all_close and scores["second_close"]
    elif test_mode and pred_hour is not None and pred_minute is not None:
        all_close = all_close or abs(hour * 60 + minute - (pred_hour * 60 + pred_minute)) == 719
    scores.update(all_correct=all_correct, all_close=all_close, overall_exact=all_correct, overall_close=all_close)
    return {k: float(v) for k, v in scores.items()}


def clock_scores(predictions: Sequence[str], references: Sequence[Mapping[str, Any]], *,
                 test_mode: bool = False) -> dict[str, float]:
    """Mean of each `CLOCK_METRICS` entry over the examples that have it; metrics none has are left out."""
    per_example = [clock_example_scores(p, int(r["hour"]), int(r["minute"]), int(r["second"]), test_mode=test_mode)
                   for p, r in zip(predictions, references)]
    out = {}
    for name in CLOCK_METRICS:
        values = [s[name] for s in per_example if name in s]
        if values:
            out[name] = mean(values)
    return out
