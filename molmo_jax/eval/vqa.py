"""Short-answer scorers of the official Molmo eval (olmo/eval/vqa.py, `VqaEval`).

VQA score (VQA v2, TextVQA, OK-VQA), A-OKVQA direct-answer score, ANLS (DocVQA, InfographicVQA,
ST-VQA), relaxed correctness (ChartQA), exact match, multiple choice (AI2D, A-OKVQA-MC) and
RealWorldQA.

Where the official code raises, these functions return a defined value instead (see each docstring):
ANLS of two empty strings, duplicate multiple-choice options, a RealWorldQA target outside A-D.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Sequence

from molmo_jax.eval.common import as_references, edit_distance

# Normalisation tables of the official VQA evaluation (data, copied verbatim; entries with capitals
# can never match because answers are lower-cased first, as in the official code).
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}
NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@",
               "`", ",", "?", "!")

_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
# The official period regex: "(?!<=\d)" was meant as the look-behind "(?<!\d)"; as written it is a
# look-ahead that always holds, so every period not followed by a digit goes ("3." -> "3").
_OFFICIAL_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_INTENDED_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
# The official code passes re.UNICODE (= 32) where `re.sub` takes `count`.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def _strip_punctuation(text: str, official_periods: bool) -> str:
    """Official `processPunctuation`: drop or space out punctuation, then strip periods.

    A mark is deleted when it touches a space anywhere in the (original) text or the text has a
    digit-comma-digit; otherwise it becomes a space.
    """
    delete_all = _COMMA_IN_NUMBER.search(text) is not None
    out = text
    for p in PUNCTUATION:
        delete = delete_all or (p + " ") in text or (" " + p) in text
        out = out.replace(p, "" if delete else " ")
    if official_periods:
        return _OFFICIAL_PERIOD.sub("", out, count=_OFFICIAL_PERIOD_COUNT)
    return _INTENDED_PERIOD.sub("", out)


def _map_words(text: str) -> str:
    """Official `processDigitArticle`: number words -> digits, drop articles, restore contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def normalize_vqa_answer(answer: str, official_periods: bool = True) -> str:
    """Official VQA answer normalisation (`preprocess_answer`).

    Lower-case, strip, punctuation removal, number words to digits, articles removed, contractions.
    official_periods: True (default, paper-comparable; the official VQA v2 evaluation has the same
      slip) strips a period right after a digit ("3." -> "3") and at most the first 32 periods; False
      uses the intended regex (keeps a period after a digit) with no limit.
    """
    text = answer.replace("\n", " ").replace("\t", " ").lower().strip()
    return _map_words(_strip_punctuation(text, official_periods))


def vqa_score(answers: str | Sequence[str], prediction: str, *, official_periods: bool = True,
              leave_one_out: bool = False) -> float:
    """VQA accuracy of `prediction` against the human `answers`, after VQA normalisation.

    Default (official Molmo code): min(#answers equal to the prediction / 3, 1).
    leave_one_out: the VQA v2 server's average over the 10 subsets of 9 answers of
      min(#matches in the subset / 3, 1).
    A plain-string `answers` is the official `vqa_score`'s single-target case: 1.0 if the normalised
    prediction equals it as given (the gold is not normalised), else 0.0. (`VqaEval`, and so `score`,
    wraps a string gold in a list first: one reference of three needed.)
    """
    prediction = normalize_vqa_answer(prediction, official_periods)
    if isinstance(answers, str):
        return float(prediction == answers)
    matches = [normalize_vqa_answer(a, official_periods) == prediction for a in as_references(answers)]
    n = sum(matches)
    if not leave_one_out or not matches:
        return min(n / 3.0, 1.0)
    return sum(min((n - m) / 3.0, 1.0) for m in matches) / len(matches)


def a_okvqa_score(answers: str | Sequence[str], prediction: str) -> float:
    """A-OKVQA direct-answer score: min(#equal answers / 3, 1) after lower() and strip() only; a
    plain-string `answers` is one answer (the official function would count its characters)."""
    counts = Counter(a.lower().strip() for a in as_references(answers))
    return min(counts[prediction.lower().strip()] / 3.0, 1.0)


def anls(target: str, prediction: str, theta: float = 0.5) -> float:
    """Average normalised Levenshtein similarity of one pair (case-insensitive, space-sensitive).

    1 - d / max(len) if that normalised distance is below `theta`, else 0. The lengths are those of
    the un-lowered strings, as in the official code. Two empty strings score 1.0 (the official code
    divides by zero).
    """
    longest = max(len(target), len(prediction))
    if longest == 0:
        return 1.0
    distance = edit_distance(target.lower(), prediction.lower()) / longest
    return 1.0 - distance if distance < theta else 0.0


def anls_score(answers: str | Sequence[str], prediction: str, theta: float = 0.5) -> float:
    """ANLS against several references (a plain string is one): the best single-reference ANLS."""
    return max(anls(a, prediction, theta) for a in as_references(answers))


def _to_float(text: str) -> float | None:
    """Python float of `text`, a trailing "%" dividing by 100; None if it does not parse."""
    try:
        return float(text.rstrip("%")) / 100.0 if text.endswith("%") else float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """ChartQA relaxed correctness (pix2struct): numbers within 5% relative, else case-insensitive EM.

    Numbers are whatever Python's float() accepts ("1e3", "1_000", "nan"); a target that parses to 0
    falls back to string comparison, as in the official code.
    """
    pred_value, target_value = _to_float(prediction), _to_float(target)
    if pred_value is not None and target_value:
        return abs(pred_value - target_value) / abs(target_value) <= max_relative_change
    return prediction.lower() == target.lower()


def relaxed_score(answers: str | Sequence[str], prediction: str) -> float:
    """Relaxed correctness against several references (any; a plain string is one)."""
    return float(any(relaxed_correctness(a, prediction) for a in as_references(answers)))


def exact_match(answers: str | Sequence[str], prediction: str) -> float:
    """1.0 if the prediction equals one of the answers (a plain string is one) ignoring case (no
    stripping)."""
    return float(prediction.lower() in [a.lower() for a in as_references(answers)])


def select_mc_option(prediction: str, options: Sequence[str]) -> int:
    """Index of the option the model chose (official `select_mc_option`).

    Case-insensitive and stripped: an exact match, else the only option containing the prediction,
    else the option at the smallest edit distance (first one on ties). Duplicate options make the
    official code assert; here the first of equal options wins.
    """
    target = prediction.lower().strip()
    options = [o.lower().strip() for o in options]
    if target in options:
        return options.index(target)
    containing = [i for i, o in enumerate(options) if target in o]
    if len(containing) == 1:
        return containing[0]
    distances = [edit_distance(o, target) for o in options]
    return distances.index(min(distances))


def mc_score(prediction: str, options: Sequence[str], answer_idx: int) -> float:
    """1.0 if the selected option is the gold one."""
    return float(select_mc_option(prediction, options) == answer_idx)


REAL_WORLD_QA_LETTERS = ("A", "B", "C", "D")


def real_world_qa_score(answer: str, prediction: str, question_type: str, *,
                        official_periods: bool = True) -> float:
    """RealWorldQA: option letter A-D for "multiple_choice", else EM of VQA-normalised strings.

    A multiple-choice target outside A-D scores 0.0 (the official code raises).
    """
    if question_type != "multiple_choice":
        return float(normalize_vqa_answer(prediction, official_periods)
                     == normalize_vqa_answer(answer, official_periods))
    if answer not in REAL_WORLD_QA_LETTERS:
        return 0.0
    return mc_score(prediction, REAL_WORLD_QA_LETTERS, REAL_WORLD_QA_LETTERS.index(answer))


def extract_short_answer(text: str) -> str:
    """The answer `VqaEval` scores from a generation.

    The text after the first "Answer:" (up to a second one), else the most frequent line (first on
    ties) of a multi-line output, else the text; internal whitespace collapsed except in the
    "Answer:" case.
    """
    text = text.strip()
    if "Answer:" in text:
        return text.split("Answer:")[1].strip()
    if "\n" in text:
        lines = [" ".join(line.split()) for line in text.split("\n")]
        counts = Counter(lines)
        top = max(counts.values())
        return next(line for line in lines if counts[line] == top)
    return " ".join(text.split())
