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

Image paths must stay inside the JSONL file's folder (`allow_outside_images=True`, the CLI's
--allow-outside-images, allows others), so a shared file cannot make training read arbitrary files.

Each row becomes one official-format example `{"image": ..., "message_list": [dialogue, points question]}`:
the dialogue as a `messages` conversation, the points as a pointing / point_count example with
`point_scale` (width / 100, height / 100), i.e. exactly the text the official formatter makes of pixel
points. `validate(path)` checks every row as the training pipeline would read it and reports each
problem with its line number, then goes on with the next row: lines that are not UTF-8 or not JSON,
wrong types (named as such: a number given as a string, a boolean as a coordinate), URL images not yet
downloaded (named by URL), images that do not decode completely (truncated files are refused here,
though training would fill them grey), points outside the image and, given the model's `process` and
`seq_len`, rows whose first answer token lies beyond the sequence length (nothing to learn from).
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import posixpath
import urllib.parse
from typing import Any, Callable, Iterator

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
    url: str | None = None  # the image's URL when `image` is its download cache file


def is_url(image: str) -> bool:
    return urllib.parse.urlparse(image).scheme in download.SCHEMES


def default_image_dir(path: epath.PathLike) -> epath.Path:
    """Where URL images of a JSONL file are cached unless told otherwise: `<its directory>/.image_cache`."""
    return paths.absolute(path).parent / ".image_cache"


def lines(path: epath.PathLike) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw bytes) of every non-blank line (decoded by `parse`, so one line that is
    not UTF-8 does not hide the others); local or gs://."""
    paths.require_bucket(path, "data file")
    for number, raw in enumerate(epath.Path(path).read_bytes().split(b"\n"), start=1):
        if raw.strip():
            yield number, raw


def _type(value) -> str:
    return {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------------------------
# Parsing and conversion


def _turns(conversations: Any, problems: list[str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(conversations, list):
        problems.append(f"conversations must be a list of turns, got {_type(conversations)}")
        return ()
    turns = []
    for i, turn in enumerate(conversations, start=1):
        if not isinstance(turn, dict) or set(turn) != {"user", "assistant"}:
            got = f"an object with the keys {sorted(turn)}" if isinstance(turn, dict) else _type(turn)
            problems.append(f"turn {i}: must be an object with exactly the keys user and assistant, got {got}")
            continue
        wrong = [f"{k} must be a string, got {_type(turn[k])}" for k in ("user", "assistant")
                 if not isinstance(turn[k], str)]
        empty = [k for k in ("user", "assistant") if isinstance(turn[k], str) and not turn[k].strip()]
        problems += [f"turn {i}: {w}" for w in wrong]
        if empty:
            problems.append(f"turn {i}: empty {' and '.join(empty)} text")
        turns.append((turn["user"], turn["assistant"]))
    return tuple(turns)


def _coordinate_problems(i: int, point: Any) -> list[str]:
    if not isinstance(point, list) or len(point) != 2:
        got = f"a list of {len(point)}" if isinstance(point, list) else _type(point)
        return [f"point {i}: must be [x, y], got {got}"]
    out = []
    for name, v in zip("xy", point):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            shown = f" ({json.dumps(v)})" if isinstance(v, str) else ""
            out.append(f"point {i}: {name} is {_type(v)}{shown}, not a number")
        elif not np.isfinite(v):
            out.append(f"point {i}: {name} is not finite")
    return out


def _points(row: dict, problems: list[str]) -> np.ndarray | None:
    if "points" not in row:
        if "label" in row:
            problems.append("label given without points")
        return None
    if not isinstance(row["points"], list):
        problems.append(f"points must be a list of [x, y] pixel coordinates, got {_type(row['points'])}")
        return None
    found = [p for i, point in enumerate(row["points"], start=1) for p in _coordinate_problems(i, point)]
    label = row.get("label")
    if label is None:
        found.append("points need a label (what they point at)")
    elif not isinstance(label, str):
        found.append(f"label must be a string, got {_type(label)}")
    elif not label.strip():
        found.append("empty label")
    problems += found
    return None if found else np.asarray(row["points"], np.float64).reshape(-1, 2)


def _image_problems(image: Any, base_dir, allow_outside: bool) -> list[str]:
    if image is None:
        return ["missing image (a path or an http(s) URL)"]
    if not isinstance(image, str):
        return [f"image must be a string (a path or an http(s) URL), got {_type(image)}"]
    if not image.strip():
        return ["empty image (a path or an http(s) URL)"]
    if is_url(image) or allow_outside:
        return []
    if paths.is_remote(base_dir):  # no symlinks in a bucket: the normalised path decides
        folder = os.fspath(base_dir).rstrip("/")
        rest = folder.split("://", 1)[1]  # normpath would fold the scheme's "//"
        inside = posixpath.normpath(f"/{rest}/{image}").startswith(f"/{rest}/")
    else:
        folder = pathlib.Path(base_dir).resolve()
        inside = (folder / image).resolve().is_relative_to(folder)
    if not inside:
        return [f"image {image} is outside the data file's folder {folder} (allow it with "
                f"--allow-outside-images / allow_outside_images=True)"]
    return []


def parse(raw: bytes | str, line: int, base_dir: str | os.PathLike, image_dir: str | os.PathLike,
          allow_outside_images: bool = False) -> Row:
    """One JSONL line -> Row; raises RowError listing every structural problem (the image is not read)."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as e:
        raise RowError(line, [f"not UTF-8 text (byte {e.start + 1} of the line is {raw[e.start:e.start + 1]!r})"]
                       ) from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        raise RowError(line, [f"bad JSON: {e}"]) from None
    if not isinstance(row, dict):
        raise RowError(line, [f"a row must be a JSON object, got {_type(row)}"])
    problems = [f"unknown field {k!r} (fields: {', '.join(FIELDS)})" for k in row if k not in FIELDS]
    image = row.get("image")
    problems += _image_problems(image, base_dir, allow_outside_images)
    turns = _turns(row.get("conversations", []), problems)
    points = _points(row, problems)
    if not turns and points is None and "points" not in row:
        problems.append("no conversations and no points: nothing to train on")
    style = row.get("style", DEFAULT_STYLE)
    if not isinstance(style, str):
        problems.append(f"style must be a string, got {_type(style)}")
    elif not style:
        problems.append("empty style")
    if problems:
        raise RowError(line, problems)
    url = image if is_url(image) else None
    path = download.image_file(image_dir, image) if url else os.fspath(epath.Path(base_dir) / image)
    return Row(line, path, turns, points, row.get("label"), style, url)


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


def read_image(row: Row, strict: bool = False) -> np.ndarray:
    """The row's image as training loads it (`preprocess.load_image` defaults; `strict`: a truncated file
    is an error instead of being filled grey); RowError if it cannot."""
    if row.url is not None and not epath.Path(row.image).exists():
        raise RowError(row.line, [f"image {row.url} is not downloaded (run `molmo-jax validate-data --download "
                                  f"FILE` to fetch the file's URL images)"])
    try:
        return preprocess.load_image(row.image, allow_truncated=not strict)
    except Exception as e:  # noqa: BLE001 -- PIL raises many types on corrupt data
        raise RowError(row.line, [f"unreadable image: {e}"]) from e


# ------------------------------------------------------------------------------------------------
# The source


class UserData:
    """A JSONL file as a `pixmo.Source`: example i is the i-th non-blank line.

    A bad row raises RowError (a ValueError; the training pipeline skips and counts it), an unreadable
    image ImageError; `validate` lists them all up front.
    """

    def __init__(self, path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
                 allow_outside_images: bool = False):
        self.path = epath.Path(path)
        self.image_dir = epath.Path(image_dir) if image_dir is not None else default_image_dir(path)
        self.allow_outside_images = allow_outside_images
        self.rows = list(lines(self.path))

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, index: int) -> Row:
        line, raw = self.rows[index]
        return parse(raw, line, paths.absolute(self.path).parent, self.image_dir, self.allow_outside_images)

    def get(self, index: int, rng=None) -> dict[str, Any]:
        row = self.row(index)
        return to_example(row, preprocess.load_image(row.image))

    def urls(self) -> list[str]:
        """The distinct image URLs of the file (rows that are not valid JSON are left out)."""
        found = {}
        for _, raw in self.rows:
            try:
                image = json.loads(raw).get("image")
            except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
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


def answer_start(arrays: dict[str, np.ndarray]) -> int | None:
    """Index of the first token with a loss of an encoded example (`preprocess` arrays), or None."""
    hits = np.flatnonzero(arrays["loss_masks"] > 0)
    return int(hits[0]) if len(hits) else None


def validate(path: str | os.PathLike, image_dir: str | os.PathLike | None = None,
             allow_outside_images: bool = False, process: Callable[[dict, Any], dict] | None = None,
             seq_len: int | None = None) -> Report:
    """Checks every row of a JSONL file as training reads it (structure, types, image decoded strictly,
    points inside the image and, with `process` (e.g. a `mixtures.ExampleProcessor` that keeps long
    examples) and `seq_len`, an answer token within the sequence length); never stops at a bad row."""
    data = UserData(path, image_dir, allow_outside_images)
    problems = []
    for index in range(len(data)):
        try:
            row = data.row(index)
            example = to_example(row, read_image(row, strict=True))
            if process is not None:
                _check_length(row, process(example, np.random.RandomState(0)), seq_len)
        except RowError as e:
            problems += [(e.line, p) for p in e.problems]
    return Report(str(path), len(data), problems)


def _check_length(row: Row, arrays: dict[str, np.ndarray], seq_len: int) -> None:
    start, total = answer_start(arrays), len(arrays["input_tokens"])
    if start is None or start >= seq_len:
        raise RowError(row.line, [f"no answer token within the sequence length {seq_len}: the image and the "
                                  f"first prompt take {start if start is not None else total} tokens "
                                  f"(the whole example {total}); shorten the prompt or raise --seq-len"])
