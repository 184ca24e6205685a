"""Your own fine-tuning data: a JSONL file, one image per line, read as a `pixmo.Source`.

    {"image": "images/0001.jpg",
     "conversations": [{"user": "What is on the table?", "assistant": "A red mug."},
                       {"user": "What colour is it?", "assistant": "Red."}],
     "points": [[412, 230], [96.5, 310]], "label": "mug"}

Fields:
  image          a path (relative paths resolve against the JSONL file's directory) or an http(s) URL,
                 read from the download cache `image_dir` (fill it with `download_images`)
  conversations  the turns of ONE multi-turn dialogue about the image: user / assistant strings, both
                 non-empty
  points, label  optional: [x, y] pixels of the image as displayed (EXIF rotation applied), 0 <= x <= width,
                 0 <= y <= height, and what they point at. They add a pointing question about `label`
                 whose answer the formatter writes as Molmo's point markup (an empty list: "There are none.")
  style          optional: "point_count" answers the points question with the count sentence ("Counting
                 the <points ...> shows a total of 3."); the dialogue is formatted with this style
                 (default "demo", the style `molmo_jax.predict` uses, which adds no prefix)
A row needs a dialogue, points, or both. Blank lines are ignored.

Each row becomes one official-format example `{"image": ..., "message_list": [dialogue, points question]}`:
the dialogue as a `messages` conversation, the points as a pointing / point_count example with
`point_scale` (width / 100, height / 100), i.e. exactly the text the official formatter makes of pixel
points. `validate(path)` checks every row as the training pipeline would read it and reports each
problem with its line number.
"""
from __future__ import annotations

import dataclasses
import json
import os
import urllib.parse
from typing import Any, Iterator

import numpy as np
from etils import epath

from data_pipelines import download
from molmo_jax import paths, preprocess

FIELDS = ("image", "conversations", "points", "label", "style")
DEFAULT_STYLE = "demo"
POINT_STYLES = ("pointing", "point_count")


class RowError(ValueError):
    """A row cannot be used; `problems` lists every reason found."""

    def __init__(self, line: int, problems: list[str]):
        super().__init__(f"line {line}: " + "; ".join(problems))
        self.line, self.problems = line, problems


@dataclasses.dataclass(frozen=True)
class Row:
    """One parsed row: the image file to read, the dialogue turns, the optional points (pixels) and label."""
    line: int
    image: str
    turns: tuple[tuple[str, str], ...]
    points: np.ndarray | None
    label: str | None
    style: str


def is_url(image: str) -> bool:
    return urllib.parse.urlparse(image).scheme in download.SCHEMES


def default_image_dir(path: epath.PathLike) -> epath.Path:
    """Where URL images of a JSONL file are cached unless told otherwise: `<its directory>/.image_cache`."""
    return paths.absolute(path).parent / ".image_cache"


def lines(path: epath.PathLike) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of every non-blank line (local or gs://)."""
    paths.require_bucket(path, "data file")
    for number, text in enumerate(epath.Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if text.strip():
            yield number, text


# ------------------------------------------------------------------------------------------------
# Parsing and conversion


def _turns(conversations: Any, problems: list[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(conversations, list):
        problems.append(f"conversations must be a list of turns, got {type(conversations).__name__}")
        return ()
    turns = []
    for i, turn in enumerate(conversations, start=1):
        if not isinstance(turn, dict) or set(turn) != {"user", "assistant"}:
            problems.append(f"turn {i}: must be an object with exactly the keys user and assistant")
            continue
        empty = [k for k in ("user", "assistant") if not isinstance(turn[k], str) or not turn[k].strip()]
        if empty:
            problems.append(f"turn {i}: empty {' and '.join(empty)} text")
        turns.append((turn["user"], turn["assistant"]))
    return tuple(turns)


def _points(row: dict, problems: list[str]) -> np.ndarray | None:
    if "points" not in row:
        if "label" in row:
            problems.append("label given without points")
        return None
    try:
        points = np.asarray(row["points"], np.float64).reshape(-1, 2)
        if len(points) != len(row["points"]) or not np.isfinite(points).all():
            raise ValueError
    except (TypeError, ValueError):
        problems.append("points must be a list of [x, y] pixel coordinates")
        return None
    if not isinstance(row.get("label"), str) or not row["label"].strip():
        problems.append("points need a non-empty label (what they point at)")
    return points


def parse(text: str, line: int, base_dir: str | os.PathLike, image_dir: str | os.PathLike) -> Row:
    """One JSONL line -> Row; raises RowError listing every structural problem (the image is not read)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(line, [f"bad JSON: {e}"]) from None
    if not isinstance(row, dict):
        raise RowError(line, [f"a row must be a JSON object, got {type(row).__name__}"])
    problems = [f"unknown field {k!r} (fields: {', '.join(FIELDS)})" for k in row if k not in FIELDS]
    image = row.get("image")
    if not isinstance(image, str) or not image.strip():
        problems.append("missing image (a path or an http(s) URL)")
    turns = _turns(row.get("conversations", []), problems)
    points = _points(row, problems)
    if not turns and points is None:
        problems.append("no conversations and no points: nothing to train on")
    style = row.get("style", DEFAULT_STYLE)
    if not isinstance(style, str) or not style:
        problems.append("style must be a non-empty string")
    if problems:
        raise RowError(line, problems)
    path = download.image_file(image_dir, image) if is_url(image) else os.fspath(epath.Path(base_dir) / image)
    return Row(line, path, turns, points, row.get("label"), style)


def outside(points: np.ndarray, image: np.ndarray) -> list[str]:
    """A problem per point outside the image (pixels, 0 <= x <= width, 0 <= y <= height)."""
    h, w = image.shape[:2]
    return [f"point {i} ({x:g}, {y:g}) is outside the {w}x{h} image"
            for i, (x, y) in enumerate(points, start=1) if not (0 <= x <= w and 0 <= y <= h)]


def to_example(row: Row, image: np.ndarray) -> dict[str, Any]:
    """The official-format example of a row whose image is `image` (uint8[H, W, 3]); raises RowError
    for points outside it."""
    conversations = []
    if row.turns:
        conversations.append(dict(messages=[m for turn in row.turns for m in turn], style=row.style))
    if row.points is not None:
        problems = outside(row.points, image)
        if problems:
            raise RowError(row.line, problems)
        h, w = image.shape[:2]
        style = "point_count" if row.style == "point_count" else "pointing"
        conversations.append(dict(label=row.label, points=row.points, point_scale=[w / 100, h / 100], style=style))
    return dict(image=image, message_list=conversations)


def read_image(path: str, line: int) -> np.ndarray:
    """The image as training loads it (`preprocess.load_image` defaults); RowError if it cannot."""
    try:
        return preprocess.load_image(path)
    except Exception as e:  # noqa: BLE001 -- PIL raises many types on corrupt data
        raise RowError(line, [f"unreadable image: {e}"]) from e


# ------------------------------------------------------------------------------------------------
# The source


class UserData:
    """A JSONL file as a `pixmo.Source`: example i is the i-th non-blank line.

    A bad row raises RowError (a ValueError; the training pipeline skips and counts it), an unreadable
    image ImageError; `validate` lists them all up front.
    """

    def __init__(self, path: str | os.PathLike, image_dir: str | os.PathLike | None = None):
        self.path = epath.Path(path)
        self.image_dir = epath.Path(image_dir) if image_dir is not None else default_image_dir(path)
        self.rows = list(lines(self.path))

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> Row:
        line, text = self.rows[index]
        return parse(text, line, paths.absolute(self.path).parent, self.image_dir)

    def get(self, index: int, rng=None) -> dict[str, Any]:
        row = self.row(index)
        return to_example(row, preprocess.load_image(row.image))

    def urls(self) -> list[str]:
        """The distinct image URLs of the file (rows that are not valid JSON are left out)."""
        found = {}
        for _, text in self.rows:
            try:
                image = json.loads(text).get("image")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(image, str) and is_url(image):
                found[image] = None
        return list(found)


def download_images(data: UserData, options: download.DownloadOptions | None = None) -> download.Report:
    """Fetches the file's URL images into its `image_dir` (those already cached are skipped)."""
    return download.download([(url, None) for url in data.urls()], data.image_dir,
                             options or download.DownloadOptions())


# ------------------------------------------------------------------------------------------------
# Validation


@dataclasses.dataclass
class Report:
    """Validation outcome: how many rows were read and every problem as (line number, message)."""
    path: str
    rows: int
    problems: list[tuple[int, str]]

    @property
    def bad_lines(self) -> list[int]:
        return sorted({line for line, _ in self.problems})

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"{self.path}: {self.rows} rows, {len(self.bad_lines)} bad"
        return "\n".join([head] + [f"  line {line}: {message}" for line, message in self.problems])


def validate(path: str | os.PathLike, image_dir: str | os.PathLike | None = None) -> Report:
    """Checks every row of a JSONL file as training reads it (structure, image, points inside the image);
    never stops at the first bad row."""
    data = UserData(path, image_dir)
    problems = []
    for index in range(len(data)):
        try:
            row = data.row(index)
            to_example(row, read_image(row.image, row.line))
        except RowError as e:
            problems += [(e.line, p) for p in e.problems]
    return Report(str(path), len(data), problems)
