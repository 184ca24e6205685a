"""MMMU scoring as the official Molmo eval does it (olmo/eval/mmmu_eval_utils.py, itself the MMMU
benchmark's `main_parse_and_eval.py`): parse an option letter or an open answer from free text.

Random fallback: when no option letter can be found the official code guesses with Python's global
`random`, seeded once with 42 when the module is imported, so the guesses depend on how many
fallbacks came before in the process. `mmmu_score`'s default is the same: one process-wide stream
seeded with 42 (`OFFICIAL_FALLBACK_RNG`); `rng=random.Random(42)` called on the examples in order
reproduces a fresh official run whatever ran before; `rng=None` scores such answers as wrong instead.
"""
from __future__ import annotations

import random
import re
import string
from typing import Sequence

from molmo_jax.eval.common import as_references

MMMU_SEED = 42
# The official module's `random.seed(42)` on import: one stream for every fallback in the process.
OFFICIAL_FALLBACK_RNG = random.Random(MMMU_SEED)
_STRIP_CHARS = (",", ".", "!", "?", ";", ":", "'")
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL_RESPONSES = (":", ",", ".", "!", "?", ";", "'")
# Number patterns of the MMMU parser: with thousands commas, scientific, plain.
_NUMBER_PATTERNS = (
    r"-?\b\d{1,3}(?:,\d{3})+\b",
    r"-?\d+(?:\.\d+)?[eE][+-]?\d+",
    r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])",
)


def _mc_candidates(response: str, index2ans: dict[str, str]) -> tuple[list[str], str]:
    """Options mentioned in the padded response and how: "(A)", " A ", or (long answers) content."""
    bracketed = [c for c in index2ans if f"({c})" in response]
    if bracketed:
        return bracketed, "bracket"
    spaced = [c for c in index2ans if f" {c} " in response]
    if spaced or len(response.split()) <= 5:
        return spaced, "letter"
    return [c for c, ans in index2ans.items() if ans.lower() in response.lower()], "content"


def _last_mention(response: str, choice: str, kind: str, index2ans: dict[str, str]) -> int:
    """Position of the last mention of `choice` (of the kind it was found by)."""
    if kind == "content":
        return response.lower().rfind(index2ans[choice].lower())
    return response.rfind(f"({choice})" if kind == "bracket" else f" {choice} ")


def parse_multi_choice_response(response: str, index2ans: dict[str, str],
                                rng: random.Random | None) -> str | None:
    """The option letter a free-text `response` picks (keys of `index2ans`, e.g. "A".."D").

    Several mentions: the last one. None found: `rng.choice` of the letters (official), or None when
    `rng` is None.
    """
    for char in _STRIP_CHARS:
        response = response.strip(char)
    response = f" {response} "
    candidates, kind = _mc_candidates(response, index2ans)
    if not candidates:
        return None if rng is None else rng.choice(list(index2ans))
    positions = [_last_mention(response, c, kind, index2ans) for c in candidates]
    return candidates[positions.index(max(positions))]


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(text: str) -> list:
    """Numbers -> [float rounded to 2 decimals]; other text lower-cased (a single character is padded
    with a space on either side to avoid trivial substring matches)."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    """Every number-like substring (comma-grouped, scientific, plain), in that pattern order."""
    return [n for pattern in _NUMBER_PATTERNS for n in re.findall(pattern, text)]


def _shortest_tail(sentence: str, indicators: Sequence[str]) -> str | None:
    """The shortest text after the last occurrence of any indicator (official selection rule: an
    empty tail found first is replaced by the next one, whatever its length)."""
    best = None
    for indicator in indicators:
        if indicator in sentence:
            tail = sentence.split(indicator)[-1].strip()
            if not best or len(tail) < len(best):
                best = tail
    return best


def _key_responses(response: str) -> list[str]:
    """Candidate answer spans: what follows "so", "is", "answer", ... (and "=" in the last line)."""
    response = response.strip().strip(".").lower()
    # The split's "[A-Z]" can never match the lower-cased text: in effect it splits on newlines.
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for i, sentence in enumerate(sentences):
        indicators = _KEY_INDICATORS + (("=",) if i == len(sentences) - 1 else ())
        tail = _shortest_tail(sentence, indicators)
        if tail and tail.strip() not in _TRIVIAL_RESPONSES:
            keys.append(tail)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """Normalised candidate answers (strings and floats) of an open question's response."""
    keys = _key_responses(response)
    candidates = keys + [n for key in keys for n in extract_numbers(key)]
    return list({v: None for c in candidates for v in normalize_str(c)})


def eval_open(answers: str | Sequence[str], candidates: Sequence) -> bool:
    """A float candidate equal to a numeric answer, or a string candidate containing a text answer."""
    gold = [g for a in as_references(answers) for g in normalize_str(a)]
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(g, str) and g in candidate for g in gold):
                return True
        elif candidate in gold:
            return True
    return False


def mmmu_score(answers: str | Sequence[str], response: str, question_type: str,
               options: Sequence[str] = (), rng: random.Random | None = OFFICIAL_FALLBACK_RNG) -> float:
    """1.0 if the response answers an MMMU question correctly.

    question_type "multiple-choice": `options` (empty ones dropped) are lettered A, B, ...; the parsed
    letter must equal an answer. Any other type is scored as an open question.
    rng: the random fallback for unparseable multiple-choice answers (see the module docstring).
    """
    answers = as_references(answers)
    if question_type != "multiple-choice":
        return float(eval_open(answers, parse_open_response(response)))
    options = [o for o in options if len(o) > 0]
    index2ans = dict(zip(string.ascii_uppercase, options))
    return float(parse_multi_choice_response(response, index2ans, rng) in answers)
