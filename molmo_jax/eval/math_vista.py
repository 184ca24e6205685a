"""MathVista scoring: the official code's rule-based, offline path only.

The official `MathVistaEval` extracts the answer from the response with GPT-4 (olmo/eval/
math_vista_utils.py:extract_answer, needs an OpenAI key) and the paper's MathVista numbers use it.
That extraction is not reproducible offline; this module implements the official non-API fallback
(`math_vista_score(..., use_api=False)`) followed by the official answer normalisation and equality
check, so its scores are comparable with each other but not with the paper's.
"""
from __future__ import annotations

import re
from typing import Sequence

from molmo_jax.eval.common import edit_distance
from molmo_jax.eval.vqa import select_mc_option


def _option_letters(choices: Sequence[str]) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(choices))]


def extract_answer_offline(response: str, question_type: str, answer_type: str,
                           choices: Sequence[str]) -> str:
    """The fallback extraction: the chosen option's text, or the response as int / float text when it
    parses as one, else the response itself."""
    if question_type == "multi_choice":
        return choices[select_mc_option(response, _option_letters(choices))]
    cast = {"integer": int, "float": float}.get(answer_type)
    try:
        return response if cast is None else str(cast(response))
    except ValueError:
        return response


def _closest_choice(text: str, choices: Sequence[str]) -> str:
    distances = [edit_distance(text, c) for c in choices]
    return choices[distances.index(min(distances))]


def normalize_extracted_answer(extraction: str, choices: Sequence[str], question_type: str,
                               answer_type: str, precision) -> str | None:
    """Official `normalize_extracted_answer`: the extraction in the gold answer's format.

    multi_choice: a letter before ":" (e.g. "(b): x" -> "B") or the extraction itself, mapped to the
    option text, else the option at the smallest edit distance. integer / float: str(int(float(x))) /
    str(round(float(x), precision)); None when that fails (as with a non-integer `precision`, which
    Python's round() rejects). list and other types: unchanged.
    """
    if question_type == "multi_choice":
        extraction = extraction.strip()
        letters = re.findall(r"([a-zA-Z]):", extraction)
        if letters:
            extraction = letters[0].upper()
        options = _option_letters(choices)
        if extraction in options:
            return choices[options.index(extraction)]
        return _closest_choice(extraction, choices)
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), precision))
    except (ValueError, TypeError, OverflowError):
        return None
    return extraction


def math_vista_score(response: str, answer: str, question_type: str, answer_type: str,
                     choices: Sequence[str], precision=None) -> float:
    """1.0 if the offline-extracted, normalised answer equals the gold `answer` string."""
    extraction = extract_answer_offline(response, question_type, answer_type, choices)
    prediction = normalize_extracted_answer(extraction, choices, question_type, answer_type, precision)
    return float(prediction == answer)
