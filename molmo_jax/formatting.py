"""Prompt formatting identical to the official Molmo `DataFormatter` (olmo/data/data_formatter.py).

Turns a dataset example (style, question / prompt / answer(s) / points / options / message_list) into
the message strings the tokenizer sees, e.g. `[" User: Point to the cup. Assistant:", " <point ...>"]`,
and parses generated pointing text back to pixel coordinates (`extract_points`, olmo/util.py).

Randomness (template choice, 10% style prefixes, length noise, answer ties) draws from a
`np.random.RandomState`-like `rng` with the same calls in the same order as the official code, so a
seeded RandomState reproduces the official choices.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

# Prompt templates, copied verbatim (data) from the official data_formatter.py, including its two
# missing commas that fuse neighbouring strings.
GENERAL_PROMPTS_V1 = {
    "short_answer": [
        "Answer this question very briefly\n{question}",
        "{question} Answer with a few words",
        "{question} Response very briefly",
        "{question} Answer directly without any details, explanation, or elaboration",
        "I have a question about this image, please answer it very briefly: {question}",
        "Question: {question} Short Answer:",
        "Question: {question}\nShort Answer:",
        '{question}\nAnswer the question as briefly as possible.',
        'Answer very briefly:\n{question}',
        'The question "{question}" can be answered using the image. A short answer is',
        "{question} Based on the image, respond to this question with a short answer:",
        "{question} Short answer:",
        "{question} A short answer to the question is",
        "Give a short, matter-of-fact answer to this question: {question}",
        "Give me a simple, direct answer to this question, do not elaborate or explain your answer:\n{question}"
    ],
    "short_caption": [
        'Caption the image with 1 or two sentences',
        'Write a very short description of this image.',
        'Briefly describe the image.',
        'Look and this image, and then summarize it in a sentence or two.',
        'Write a brief caption describing the image',
        'Brief Caption:'
        'A short image caption:',
        'A short image description',
        'Briefly describe the content of the image.',
        'Can you give me one sentence summary of the picture?',
        'How would you describe this image in a sentence or two?',
    ],
    "long_caption": [
        'Describe this image.',
        'Describe this image',
        'describe the image',
        'Write a long description of this image.',
        'caption the picture',
        'Caption',
        'caption',
        'Construct a long caption for this image',
        'Generate a caption',
        'Create a detailed caption',
        'Write a long caption',
        'Describe this image in detail',
        'Describe this',
        'describe this',
        'Caption this',
        'What can be seen in this image?',
        'What do you see in the image?',
        'Look at this photo carefully and then tell me about it in detail',
        'Write a long description of this image',
        'Tell me about this picture.',
        'Write a paragraph about this image.',
        'Look at this image carefully and then describe it in detail',
        'Generate a long caption about this image.'
    ],
    "long_caption_no_pointing": [
        'Describe this image in detail, but without any pointing.',
        'Write a long description of this image, do not produce any points.',
        'Tell me about this picture, use plain text only.',
        'Generate a plain text description of this caption',
        "What is in this image?\nNo pointing\nGive lots of detail"
        "Write a long caption.\nDo not use image coordinates\nOutput a full paragraph"
    ],
    "transcript": [
        'Describe this image as if you are a person speaking',
        'Imagine you are a person talking about this image. Generate a transcript of what you would say.',
        "Generate an audio transcript of a person describing this image",
        "Create a transcript of a human describing this image out load",
        "Describe this in this style of a human talking",
    ],
    "refexp_pointing": [
        'Where is the \"{refexp}\"?',
        'Point to {refexp}',
        'point at {refexp}',
        'Find the {refexp}.',
        'Which object in the image does \"{refexp}\" refer to?',
        'Locate the object \"{refexp}\" refers to.',
        'Point to the object that best matches the expression:\n{refexp}\n',
        'What object could be described as: {refexp}.\nPoint:',
        'Referring Expression: {refexp}.\nPoint:',
        'Expression: {refexp}\nPoint to the refexp',
        'Task: Point to the object that best matches the expression.\nExpression: {refexp}\nPoint:',
        'Instruction: Locate the object that matches the expression by returning a point.\nReferring Expression: {refexp}\n',
        'Help me find an object in this image by pointing to the {refexp}',
        'What point of the image might the expression \'{refexp}\' refer to?',
    ],
    "plain": ["{question}"],
    "multiple_choice": [
        "{question}\n{options}\nReturn only the letter of the best answer option",
        "Answer this question by naming one of the provided options:\n{question}\n{options}",
        "{question}\n{options}\nWhat option best answers the question?",
        "{question}\n{options}\nReturn the best answer option",
        "Look at the options, then return the letter of the option that best answers the question.\nQuesiton: {question}\nOptions: {options}",
        "{question}? Select an answer option from:\n{options}",
        "{question}\nSelect an answer option from:\n{options}\n\n",
        "Question: {question}? Options: {options} Answer:",
        "Answer the question by selecting an answer options\nQuestion: {question}\nOptions: {options}",
        "{question}?\n{options}\nReturn only the letter of the correct answer",
        "Help me answer this question: \"{question}\", by stating which of the following options is correct\n{options}."
    ],
    "pointing": [
        "Point to {label}\nPlease say 'This isn't in the image.' if it is not in the image.",
        "Point to all occurrences of \"{label}\"",
        "Point to any {label} in the image",
        "Point to any {label} in the image.",
        "Point: Where are the {label}",
        "Show me where the {label} are",
        "Can you show me where the {label} are?",
        "Show me where the {label} are",
        "Show me where a {label} is",
        "Show me where a {label} is.",
        "If there are any {label} in the image? Show me where they are.",
        "Where are the {label}?",
        "Generate a list of points showing where the {label} are.",
        "Find the \"{label}\".",
        "Find a \"{label}\".",
        "Locate all {label}.",
        "Locate an {label}.",
        "Locate a {label}.",
        "Locate every {label}.",
        "Locate {label}.",
        "Locate the {label}.",
        "Object: {label}\nInstruction: Point to the object.",
        "find {label}",
        "find {label}.",
        "Point to every {label}",
        "find any {label} in the picture",
        "Find the {label}",
        "Find any {label}",
        "Point to a {label}",
        "Point to an {label}",
        "Look for {label} in the image and show me where they are.",
        "Help me find an object in the image by pointing to them.\nObject: {label}.",
        "I am looking for {label}, where can they be found in the image?",
        "Can you see any {label} in the image? Point to them.",
        "Point out each {label} in the image.",
        "Point out every {label} in the image.",
        "Point to the {label} in the image.",
        "Locate each {label} in the image.",
        "Can you point out all {label} in this image?",
        "Please find {label} and show me where they are.",
        "If there are any {label} present, indicate their positions.",
        "If there is a {label} present, indicate its positions.",
        "show me all visible {label}",
    ],
    "point_count": [
        "How many {label} are there?",
        "How many {label}?",
        "How many {label}.",
        "how many {label}.",
        "how many {label}?",
        "How many {label} are there in the image?",
        "Tell me how many {label} there are",
        "Tell me how many {label} there are and point to them.",
        "how many {label}",
        "Tell me where each {label} is.",
        "Tell me how many {label} are in the image",
        "count {label}",
        "count every {label}",
        "count each {label}",
        "count {label}.",
        "Count the {label}.",
        "How many {label} do you see?",
        "How many {label} are visible?",
        "Count all the {label}",
        "how mmny {label}?",
        "Count every {label} in the picture.",
        "Count all the {label}",
        "Count each {label}",
        "Point to and count the {label} in the picture.",
        "Point and count {label}",
        "Point to every {label}",
        "Locate the {label} and count them",
        "Locate every {label} and count them",
        "Find all the {label}. How many are there?",
        "Find each {label}. How many are there?",
        "Point at {label} and then tell me the count.",
        "What is the total number of {label} in the image?",
        "In all the picture, how many {label} are there?",
        "Point at the {label} and then count them.",
        "Point to all the visible {label} output the total count.",
        "Point to all the {label} visible and output the total count. \nPlease say 'This isn't in the image.' if it is not in the image.",
        "Point to all occurrences of \"{label}\" and output the total count.",
        "Show me where the {label} are and output the total count.",
        "Where are the {label}? How many are there?",
        "Generate list of points showing where the {label} are and output the total count.",
        "Object: {label}\nInstruction: Point to the object and output the total count.",
        "find any {label} in the picture and output the total count.",
        "Can you see any {label} in the image? Point to them and output the total count.",
        "Can you point out all {label} in this image? How many are there?",
        "If there are any {label} present, indicate their positions and output the total count.",
        "How many {label} are there in the image? Point to them and output the total count.",
        "How many {label} are there in the image?",
        "Give me the count of {label} in the image.",
        "How many {label} are visible in the image?",
        "How many {label} are there?",
        "In the image, how many {label} are there?",
        "Can you count the number of {label} in the image?",
        "Can you count every {label} in the picture?",
        "Can you see any {label} in the image? How many are there?",
        "Are there any {label} in the image? How many are there?",
        "If you see any {label} in the image, give me the count. Otherwise, say 'This isn't in the image.'",
        "Object: {label}\nInstruction: How many are there?",
    ],
    "count_then_point": [
        "Count the {label} in the image, then point to them.",
        "How many {label} are there? Point to them.",
        "Count every {label} in the picture, then point to them.",
        "Locate the {label} and count them, then point to them.",
        "Find all the {label}. How many are there? Point to them.",
        "Find each {label}. How many are there? Point to them.",
        "Point to and count the {label} in the picture.",
    ],
    "only_count": [
        "Count the {label} in the image.",
        "How many {label} are there?",
        "Count every {label} in the picture.",
        "Locate the {label} and count them.",
        "Find all the {label}. How many are there?",
        "Find each {label}. How many are there?",
    ],
}

# Styles whose style prefix is used only 10% of the time under system_prompt_kind="demo_or_style".
DEMO_STYLES = ("point_count", "pointing", "user_qa", "long_caption")
# Eval-only style names and the training style whose prefix they use.
EVAL_STYLE_ALIASES = {"eval_short_answer": "vqa2", "eval_multiple_choice": "a_okvqa_mc"}
SYSTEM_PROMPT_KINDS = (None, "none", "style", "style_and_length", "demo_or_style")
NO_POINTS_TEXT = "There are none."
POINT_PLACEHOLDER = "<|POINT|>"
OPTION_LETTERS = "ABCDEFG"


def apply_keyword_prompt(prompts: Sequence[str], example: Mapping[str, Any], rng, debug: bool = False) -> str:
    """A random template (the first one when `debug`) with its `{keyword}` fields filled from `example`."""
    keywords = sorted(re.findall(r"{([^{}]+)}", prompts[0]))
    missing = [k for k in keywords if k not in example]
    if missing:
        raise KeyError(f"example lacks the template field(s) {missing}")
    prompt = prompts[0] if debug else prompts[rng.randint(0, len(prompts))]
    for k in keywords:
        head, tail = prompt.split("{" + k + "}", maxsplit=1)
        prompt = head + example[k] + tail
    return prompt


# ------------------------------------------------------------------------------------------------
# Points


def _round1(v: np.float64) -> np.float64:
    """`round(v, 1)` on a numpy float, which is numpy's rint(10 v) / 10 (not Python's decimal rounding)."""
    return round(np.float64(v), 1)


def points_to_text(points, scale, label_text: str, alt_text: str) -> str:
    """Official point markup of float[n, 2] (x, y) points, n >= 1.

    `scale`: a number (points are in 0..scale, printed as percentages) or (sx, sy) dividing pixel
    coordinates (pass (w/100, h/100) for pixels). Percentages are rounded to 0.1 and sorted by x then y.
    """
    pts = np.array(points, dtype=np.float64).reshape(-1, 2)
    pts = pts / np.array(scale)[None, :] if isinstance(scale, (tuple, list)) else pts * (100 / scale)
    pts = sorted(([_round1(x), _round1(y)] for x, y in pts), key=lambda p: p[0] * 10000 + p[1])
    if len(pts) == 1:
        (x, y), = pts
        return f'<point x="{x:0.1f}" y="{y:0.1f}" alt="{alt_text}">{label_text}</point>'
    coords = " ".join(f'x{i}="{x:0.1f}" y{i}="{y:0.1f}"' for i, (x, y) in enumerate(pts, start=1))
    return f'<points {coords} alt="{alt_text}">{label_text}</points>'


def count_text(points_text: str, n: int) -> str:
    """The `point_count` answer around a points markup."""
    return f"Counting the {points_text} shows a total of {n}."


_POINT_PATTERNS = (
    r"Click\(([0-9]+\.[0-9]), ?([0-9]+\.[0-9])\)",
    r"\(([0-9]+\.[0-9]),? ?([0-9]+\.[0-9])\)",
    r'x\d*="\s*([0-9]+(?:\.[0-9]+)?)"\s+y\d*="\s*([0-9]+(?:\.[0-9]+)?)"',
)
_LEGACY_POINT_PATTERN = r"(?:\d+|p)\s*=\s*([0-9]{3})\s*,\s*([0-9]{3})"


def extract_points(text: str, image_w: float, image_h: float) -> np.ndarray:
    """float64[n, 2] pixel (x, y) of every point in generated text (official `extract_points`).

    Accepts `Click(x, y)`, `(x, y)`, `x="..." y="..."` / `x1="..." y1="..."` markup and the legacy
    `p=ddd,ddd` (tenths of a percent); patterns are scanned in that order. Points with a coordinate
    above 100 (percent) are dropped.
    """
    found = [(float(m.group(1)), float(m.group(2))) for pat in _POINT_PATTERNS for m in re.finditer(pat, text)]
    found += [(int(m.group(1)) / 10.0, int(m.group(2)) / 10.0) for m in re.finditer(_LEGACY_POINT_PATTERN, text)]
    pct = np.array([p for p in found if max(p) <= 100], np.float64).reshape(-1, 2)
    return pct / 100.0 * np.array([image_w, image_h])


# ------------------------------------------------------------------------------------------------
# The formatter


CONFIG_FIELDS = ("prompt_type", "message_formatting", "system_prompt_kind", "always_start_with_space",
                 "default_inference_len")  # the Formatter fields a model config's `formatting` section sets


@dataclasses.dataclass
class Formatter:
    """Official `DataFormatter`: prompt templates, style prefixes, role tags. Its fields `prompt_templates`,
    `message_format` and `system_prompt` are named here as the model config names them (`cfg.formatting`).

    prompt_type: "uber_model" (released models) or "none" (stage-1 captioning).
    message_formatting: "role" ("User: ... Assistant:") or "none".
    system_prompt_kind: one of SYSTEM_PROMPT_KINDS.
    always_start_with_space: every message (not only the later ones) gets a leading space.
    default_inference_len: length hint of "style_and_length" prefixes at inference.
    select_answer: "best" (most frequent, random tie break) or "first" (smallest).
    debug: deterministic (first template, no random style prefixes).
    """
    prompt_type: str = "none"
    message_formatting: str | None = "none"
    system_prompt_kind: str | None = None
    always_start_with_space: bool = False
    default_inference_len: int | None = 65
    select_answer: str = "best"
    debug: bool = False

    def __post_init__(self):
        if self.prompt_type not in ("none", "uber_model"):
            raise ValueError(f"prompt_type={self.prompt_type!r}; allowed 'none', 'uber_model'")
        if self.message_formatting not in (None, "none", "role"):
            raise ValueError(f"message_formatting={self.message_formatting!r}; allowed None, 'none', 'role'")
        if self.system_prompt_kind not in SYSTEM_PROMPT_KINDS:
            raise ValueError(f"system_prompt_kind={self.system_prompt_kind!r}; allowed {SYSTEM_PROMPT_KINDS}")

    @classmethod
    def from_config(cls, cfg) -> "Formatter":
        return cls(**{name: cfg.formatting[name] for name in CONFIG_FIELDS})

    # -- answers -----------------------------------------------------------------------------

    @staticmethod
    def format_points(example: Mapping[str, Any]) -> str | None:
        """Answer text of a pointing / counting example (None without `points`)."""
        if "points" not in example:
            return None
        points, style = example["points"], example["style"]
        label = example["label"].lower() if "label" in example else example["question"]
        if len(points) == 0:
            if style in ("pointing", "point_count"):
                return NO_POINTS_TEXT
            raise NotImplementedError(f"empty points for style {style!r}")
        if "point_scale" in example:
            text = points_to_text(points, example["point_scale"], label, label)
        else:
            h, w = example["image"].shape[:2]
            text = points_to_text(points, [w / 100, h / 100], label, label)
        return count_text(text, len(points)) if style == "point_count" else text

    @staticmethod
    def format_annotated_text(answer: str, annotations: Sequence[Mapping[str, Any]]) -> str:
        """Replaces each `<|POINT|>` in order by the markup of one annotation (points in 0..100)."""
        for a in annotations:
            head, tail = answer.split(POINT_PLACEHOLDER, maxsplit=1)
            answer = head + points_to_text(a["points"], 100, a["inline_text"], a["alt_text"]) + tail
        return answer

    @staticmethod
    def format_options(example: Mapping[str, Any]):
        """(answer, prompt, metadata) of a multiple-choice example (`options` or `unlabelled_options`)."""
        if "options" in example:
            options = example["options"]
            option_text = "\n".join(f"{p}: {o}" for p, o in zip(OPTION_LETTERS, options))
            labels, names = OPTION_LETTERS, OPTION_LETTERS[:len(options)]
        else:
            options = example["unlabelled_options"]
            option_text = "\n".join(options)
            labels = names = options
        answer = labels[example["answer_idx"]] if "answer_idx" in example else None
        return answer, example["question"] + "\n" + option_text + "\n", dict(option_names=names)

    def select_vqa_answer(self, answers, rng):
        """The most frequent answer (ties: uniformly at random), or the smallest with "first"."""
        if answers is None or isinstance(answers, str):
            return answers
        if self.select_answer == "first":
            return min(answers)
        if self.select_answer != "best":
            raise NotImplementedError(self.select_answer)
        counts = Counter(answers)
        top = max(counts.values())
        candidates = [k for k, v in counts.items() if v == top]
        return candidates[rng.randint(0, len(candidates))]

    # -- prompts -------------------------------------------------------------------------------

    def format_messages(self, messages: Sequence[str]) -> list[str]:
        """Role tags on user (even) messages and the leading spaces."""
        out = []
        for i, message in enumerate(messages):
            if self.message_formatting == "role" and i % 2 == 0:
                message = "User: " + message + " Assistant:"
            if i != 0 or self.always_start_with_space:
                message = " " + message
            out.append(message)
        return out

    def get_system_prompt(self, style: str | None, for_inference: bool, messages: Sequence[str], rng) -> str:
        """The style prefix of the first user message ("" for none)."""
        style = EVAL_STYLE_ALIASES.get(style, style)
        kind = self.system_prompt_kind
        if kind == "style":
            return style + ":"
        if kind == "demo_or_style":
            if style in ("android_control", "demo"):
                return ""
            if style in DEMO_STYLES and rng.random() > 0.1 and not self.debug:
                return ""
            return style + ":"
        if kind == "style_and_length":
            if for_inference:
                n = None if self.default_inference_len is None else str(self.default_inference_len)
                return f"{style} {n}:" if n else style + " :"
            if rng.random() > 0.10:
                n = len(messages[-1]) + int(rng.normal(scale=25))
                return f"{style} {n // 15}:"
            return style + " :"
        raise NotImplementedError(kind)

    def _labelled_prompt(self, example: Mapping[str, Any], style: str, rng) -> str:
        if "question" in example:
            return example["question"]
        label = example["label"].lower() if "label" in example else example["label_cased"]
        if self.prompt_type == "none":
            return label
        return apply_keyword_prompt(GENERAL_PROMPTS_V1[style], dict(example, label=label), rng, self.debug)

    def get_user_prompt(self, example: Mapping[str, Any], is_training: bool = True,
                        for_inference: bool = False, rng=None):
        """(prompt, answer or None, metadata) of one example, as the official `get_user_prompt`."""
        style = example.get("style")
        answer = metadata = None
        has_options = "question" in example and ("options" in example or "unlabelled_options" in example)
        if "prompt" in example:
            prompt = example["prompt"]
        elif self.prompt_type == "uber_model" and not isinstance(style, str):
            answer, prompt, metadata = self.format_options(example)
        elif self.prompt_type == "uber_model" and style == "long_caption":
            prompt = apply_keyword_prompt(GENERAL_PROMPTS_V1["long_caption"], example, rng, self.debug)
        elif style in ("pointing", "point_count"):
            prompt = self._labelled_prompt(example, style, rng)
            answer = self.format_points(example)
        elif has_options:
            answer, prompt, metadata = self.format_options(example)
        else:
            prompt = example.get("question", "")

        if answer is None and not for_inference:
            answer = self._answer(example, rng)
        return prompt, answer, metadata

    def _answer(self, example: Mapping[str, Any], rng) -> str:
        if "answers" in example:
            return self.select_vqa_answer(example["answers"], rng)
        if "answer" in example:
            if "answer_annotations" in example:
                return self.format_annotated_text(example["answer"], example["answer_annotations"])
            return example["answer"]
        for key in ("answer_with_points", "text"):
            if key in example:
                return example[key]
        raise ValueError("example has no output (answers/answer/answer_with_points/text); "
                         "use for_inference=True for prompts without an answer")

    # -- examples ------------------------------------------------------------------------------

    def format_example(self, message, is_training: bool, for_inference: bool, rng):
        """(formatted messages, metadata) of one conversation: str, list of str or example dict."""
        metadata = {k: message[k] for k in ("answer_idx", "answers", "answer", "points", "options")
                    if isinstance(message, Mapping) and k in message}
        if isinstance(message, str):
            messages = [message]
        elif isinstance(message, list):
            messages = list(message)
        elif "messages" in message:
            messages = list(message["messages"])
        else:
            prompt, response, extra = self.get_user_prompt(message, is_training, for_inference, rng)
            metadata.update(extra or {})
            messages = [prompt] if for_inference else [prompt, response]

        if self.system_prompt_kind and self.system_prompt_kind != "none":
            style = message.get("style") if isinstance(message, Mapping) else None
            prefix = self.get_system_prompt(style, for_inference, messages, rng)
            if prefix and messages[0]:
                messages[0] = prefix + " " + messages[0]
            elif prefix:
                messages[0] = prefix
        return self.format_messages(messages), metadata

    def __call__(self, example: Mapping[str, Any], is_training: bool, for_inference: bool, rng):
        """(messages, metadata); `message_list` examples give one message list per conversation."""
        if "message_list" in example:
            return [self.format_example(m, is_training, for_inference, rng)[0]
                    for m in example["message_list"]], None
        if "messages" in example:
            return self.format_example(example["messages"], is_training, for_inference, rng)
        return self.format_example(example, is_training, for_inference, rng)
