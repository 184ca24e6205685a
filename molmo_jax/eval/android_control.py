"""AndroidControl step-wise accuracy as the official `AndroidControlEval` computes it
(`olmo/eval/evaluators.py:compute_stepwise_accuracy`).

An action is text such as "Click(540, 1200)", "Long Press(10, 20)", "Type hello", "Scroll down",
"Open App Gmail", "Navigate Home", "Navigate Back" or "Wait" (the official `process_action` format),
read case-insensitively. A predicted step is correct when its action type equals the target's and:
click / long press: its first two numbers fall inside the target box (edges included); type: the same
text; scroll: the same direction; open app: the same app name; navigate / wait: always. A click inside
the target box of an "open app" target also counts. Of a prediction with "Action:" (the hl_cot format)
only the text after it is read.

Official quirks reproduced: a target box given as text is read by its decimal numbers only ("12.0", not
"12"), so a box written without decimals never matches (the official code raises; here the step is
wrong); two unrecognised actions are equal, so an unparseable prediction of an unparseable target is
correct.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DECIMAL = re.compile(r"\d+\.\d+")
_PREFIXES = (("click", "click"), ("long press", "long press"), ("type", "type"), ("scroll", "scroll"),
             ("open app", "open_app"))


def parse_action(text: str) -> dict[str, Any]:
    """{"type": click | long press | type | scroll | wait | open_app | navigate home | navigate back | None,
    plus "coords" (x, y) or None, "text", "direction" or "app_name"}."""
    text = text.strip().lower()
    if text in ("wait", "navigate home", "navigate back"):
        return {"type": text}
    kind = next((kind for prefix, kind in _PREFIXES if text.startswith(prefix)), None)
    if kind in ("click", "long press"):
        numbers = _NUMBER.findall(text)
        return {"type": kind, "coords": (float(numbers[0]), float(numbers[1])) if len(numbers) >= 2 else None}
    if kind == "type":
        return {"type": kind, "text": text[5:]}
    if kind == "scroll":
        words = text.split()
        return {"type": kind, "direction": words[1] if len(words) >= 2 else ""}
    if kind == "open_app":
        return {"type": kind, "app_name": text[9:]}
    return {"type": None}


def _box(box) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) of a target box: a sequence, or text read by its decimal numbers."""
    if box is None or box == "":
        return None
    values = [float(v) for v in _DECIMAL.findall(box)] if isinstance(box, str) else [float(v) for v in box]
    return tuple(values[:4]) if len(values) >= 4 else None


def _inside(coords, box) -> bool:
    box = _box(box)
    return coords is not None and box is not None and box[0] <= coords[0] <= box[2] and box[1] <= coords[1] <= box[3]


def step_correct(prediction: str, target: str, target_box) -> bool:
    """Whether one predicted action completes the target step (see the module docstring)."""
    if "Action:" in prediction:
        prediction = prediction.split("Action:")[1].strip()
    gold, pred = parse_action(target), parse_action(prediction)
    if gold["type"] != pred["type"]:
        return pred["type"] == "click" and gold["type"] == "open_app" and _inside(pred["coords"], target_box)
    if gold["type"] in ("click", "long press"):
        return gold["coords"] is not None and _inside(pred["coords"], target_box)
    return gold == pred


def step_accuracy(predictions: Sequence[str], targets: Sequence[str], target_boxes: Sequence) -> list[float]:
    """1.0 / 0.0 per step."""
    return [float(step_correct(p, t, b)) for p, t, b in zip(predictions, targets, target_boxes)]
