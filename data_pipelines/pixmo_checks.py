"""Row checks of the PixMo hub datasets: which annotations may train, and why the others are dropped.

Real hub copies are dirty (dead URLs, changed images, points off the image). `pixmo` reads only the rows
these checks pass; every other row is dropped and counted under a reason, the keys of a drop table
(reason -> count). `row_reasons(dataset, row)` lists the reasons of one hub row (a dict of its columns).

Decisions:
  * Unit. A hub row is one annotation (one label's points, one Q/A, one caption); a bad row drops that
    annotation only, the good annotations of its image still train. PixMo-Docs holds all Q/A pairs of a
    document in one row: a blank pair is dropped alone (reason "empty_qa_pair", the row keeps its other
    pairs); so are blank transcripts of PixMo-Cap ("empty_transcript"). Reader drop tables count rows (or
    those pairs); the training pipeline's drop table (`mixtures`) counts examples.
  * Units of points (the official `point_scale`): pixmo-points and pixmo-point-explanations are percent,
    0 <= x, y <= 100; pixmo-count is pixels, 0 <= x <= width and 0 <= y <= height, checked once the
    image's size is known (`points_outside_image`, when the example is read).
  * Count vs points. The official reader ignores `count`. Here a row whose `count` is given and differs
    from its number of points is dropped ("count_mismatch"): its text would state a number (point_count
    style) or a set of points ("There are none." for a positive count) that its own data contradicts. A
    null `count` defers to the points. Eval splits of pixmo-count (no points) need only `count` >= 0.
  * sha256. A row with an `image_sha256` trains only with image bytes whose SHA-256 is that hash, checked
    when the example is read (`matching_rows`), whatever order the rows come in and whatever is in the
    cache; the rows of one URL whose hash the bytes do not match are dropped ("sha256_mismatch"). This is
    stricter than the official `check_sha=False` of pixmo-count; pixmo-cap and pixmo-cap-qa have no hash.
"""
from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Callable, Mapping, Sequence

POINT_PLACEHOLDER = "<|POINT|>"
POINT_METHODS = ("pointing", "counting")
# Reasons that drop part of a row (the converter leaves those items out); every other reason drops the row.
PARTIAL = frozenset({"empty_qa_pair", "empty_transcript"})

Row = Mapping[str, Any]


class BadExample(ValueError):
    """An example (or every annotation of it) cannot be used; `reason` is its drop-table key."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def is_text(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_URL = re.compile(r"https?://[^/?#\s]+", re.IGNORECASE)


def url_reasons(row: Row) -> list[str]:
    url = row["image_url"]
    return [] if isinstance(url, str) and _URL.match(url) else ["bad_image_url"]


def sha_reasons(row: Row) -> list[str]:
    sha = row["image_sha256"]
    return [] if isinstance(sha, str) and re.fullmatch("[0-9a-fA-F]{64}", sha) else ["bad_sha256"]


def xy_reasons(points: Sequence[Sequence[Any]], high: float | None) -> list[str]:
    """Problems of (x, y) pairs: "bad_point" (not two finite numbers), "point_out_of_range" (below 0 or,
    when `high` is given, above it)."""
    if any(len(p) != 2 or not all(map(_number, p)) for p in points):
        return ["bad_point"]
    if any(v < 0 or (high is not None and v > high) for p in points for v in p):
        return ["point_out_of_range"]
    return []


def _count_reasons(count, n_points: int) -> list[str]:
    if count is None:
        return []
    if not _number(count) or count < 0:
        return ["bad_count"]
    return [] if count == n_points else ["count_mismatch"]


# ------------------------------------------------------------------------------------------------
# Per dataset: row -> reasons


def cap(row: Row, captions: bool = True, transcripts: bool = True) -> list[str]:
    out = url_reasons(row)
    if captions and not is_text(row["caption"]):
        out.append("empty_caption")
    if transcripts:
        texts = row["transcripts"] or []
        if not any(map(is_text, texts)):
            out.append("no_transcripts")
        elif not all(map(is_text, texts)):
            out.append("empty_transcript")
    return out


def ask_model_anything(row: Row) -> list[str]:
    ok = is_text(row["question"]) and is_text(row["answer"])
    return url_reasons(row) + sha_reasons(row) + ([] if ok else ["empty_question_or_answer"])


def cap_qa(row: Row) -> list[str]:
    turns = row["messages"]
    ok = turns is not None and len(turns) >= 2 and len(turns) % 2 == 0 and all(map(is_text, turns))
    return url_reasons(row) + ([] if ok else ["bad_messages"])


def points(row: Row) -> list[str]:
    out = url_reasons(row) + sha_reasons(row)
    if not is_text(row["label"]):
        out.append("empty_label")
    if row["collection_method"] not in POINT_METHODS:
        out.append("bad_collection_method")
    if row["points"] is None or any(p is None for p in row["points"]):
        return out + ["null_points"]
    xy = [(p["x"], p["y"]) for p in row["points"]]
    return out + (xy_reasons(xy, 100.0) or _count_reasons(row["count"], len(xy)))


def point_explanations(row: Row) -> list[str]:
    out = url_reasons(row) + sha_reasons(row)
    if row["parsed_response"] is None:
        return out + ["no_parsed_response"]  # the official reader drops these too
    if not is_text(row["question"]):
        out.append("empty_question")
    columns = [row[k] for k in ("alt_text", "inline_text", "points")]
    if any(c is None for c in columns):
        return out + ["null_annotation_list"]
    if len({len(c) for c in columns} | {row["parsed_response"].count(POINT_PLACEHOLDER)}) != 1:
        return out + ["placeholder_mismatch"]
    refs = row["points"]
    if any(not r or any(p is None for p in r) for r in refs):
        return out + ["bad_point"]
    return out + xy_reasons([p for r in refs for p in r], 100.0)


def docs(row: Row) -> list[str]:
    image = row["image"]  # the hub struct, or (as `pixmo` passes it) whether it has bytes
    has_bytes = image.get("bytes") if isinstance(image, Mapping) else image
    out = [] if has_bytes else ["no_image"]
    qas = row["questions"]
    if qas is None or qas["question"] is None or qas["answer"] is None:
        return out + ["no_questions"]
    if len(qas["question"]) != len(qas["answer"]):
        return out + ["ragged_questions"]
    good = len(good_pairs(qas))
    if not good:
        return out + ["no_questions"]
    return out + ["empty_qa_pair"] * (len(qas["question"]) - good)


def good_pairs(qas: Mapping[str, Sequence]) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a PixMo-Docs row with both texts non-blank."""
    return [(q, a) for q, a in zip(qas["question"], qas["answer"]) if is_text(q) and is_text(a)]


_TIME = re.compile(r"(\d{1,2}):(\d{2}):(\d{2})")


def clock_fields(watch_time) -> tuple[int, int, int] | None:
    """(hour, minute, second) of an "H:MM:SS" time in range (hour 0-23, minute and second 0-59), or None."""
    match = _TIME.fullmatch(watch_time) if isinstance(watch_time, str) else None
    if not match:
        return None
    h, m, s = map(int, match.groups())
    return (h, m, s) if h < 24 and m < 60 and s < 60 else None


def clocks(row: Row) -> list[str]:
    out = [] if is_text(row["example_id"]) else ["no_example_id"]
    if clock_fields(row["watch_time"]) is None:
        out.append("bad_clock_time")
    flags = [row[f"{n}_visible"] for n in ("hour", "minute", "second")]
    if not isinstance(row["shows_seconds"], bool) or any(f not in (0, 1) or isinstance(f, float) for f in flags):
        out.append("bad_visibility_flag")
    if not is_text(row["text"]):
        out.append("empty_answer")
    return out


def count(row: Row, with_points: bool = True) -> list[str]:
    out = url_reasons(row) + sha_reasons(row)
    if not is_text(row["label"]):
        out.append("empty_label")
    if not with_points:  # eval splits: the count is the target
        return out + ([] if _number(row["count"]) and row["count"] >= 0 else ["bad_count"])
    pts = row["points"]
    if pts is None or pts["x"] is None or pts["y"] is None:
        return out + ["null_points"]
    if len(pts["x"]) != len(pts["y"]):
        return out + ["ragged_points"]
    xy = list(zip(pts["x"], pts["y"]))
    return out + (xy_reasons(xy, None) or _count_reasons(row["count"], len(xy)))


# ------------------------------------------------------------------------------------------------
# Example-time checks (need the image)


def matching_rows(rows: Mapping[str, list], data: bytes) -> dict[str, list]:
    """The rows whose `image_sha256` is the SHA-256 of `data`; BadExample("sha256_mismatch") if none."""
    digest = hashlib.sha256(data).hexdigest()
    keep = [i for i, sha in enumerate(rows["image_sha256"]) if sha.lower() == digest]
    if not keep:
        raise BadExample("sha256_mismatch", f"the image bytes hash to {digest[:12]}..., no row has that hash")
    return {k: [v[i] for i in keep] for k, v in rows.items()}


def check_inside(points, width: int, height: int) -> None:
    """BadExample("points_outside_image") unless every pixel point (float[n, 2]) is inside the image."""
    bad = [(x, y) for x, y in points if not (0 <= x <= width and 0 <= y <= height)]
    if bad:
        raise BadExample("points_outside_image", f"{len(bad)} point(s), e.g. {bad[0]}, outside {width}x{height}")


CHECKS: dict[str, Callable[..., list[str]]] = {
    "pixmo-cap": cap, "pixmo-ask-model-anything": ask_model_anything, "pixmo-cap-qa": cap_qa,
    "pixmo-points": points, "pixmo-point-explanations": point_explanations, "pixmo-docs": docs,
    "pixmo-clocks": clocks, "pixmo-count": count,
}
