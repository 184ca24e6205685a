"""Readers of the eight PixMo datasets from their Hugging Face hub parquet files.

Each dataset becomes a `Source`: `len(source)` examples and `source.get(index, rng)` -> one example dict
in the input format of `molmo_jax.formatting.Formatter`, built as the official `olmo/data/pixmo_datasets.py`
builds it: rows of one image are grouped into one example whose `message_list` holds one conversation
per annotation (Cap, Count and Docs are one row per image). Schemas: the hub cards' `dataset_info.features`
(`SCHEMAS`).

Files are read from a local copy of the hub repos (`huggingface-cli download allenai/pixmo-cap
--repo-type dataset --local-dir <data_dir>/pixmo-cap`); URL images from the downloader's cache
(`download.image_file(image_dir, url)`). Rows are checked by `pixmo_checks` (units, ranges, placeholders,
clock fields, count vs points, nulls); a bad row drops that annotation only. Examples whose image is not
in the cache are dropped, as the official code drops failed downloads. Each source's `stats` count the hub
rows it read, what it dropped (`drops`: reason -> rows) and the distinct images present / missing.
Rows with an `image_sha256` are read with the image's bytes and keep only the rows whose hash they match
(`pixmo_checks.matching_rows`); pixel points (pixmo-count) are checked against the image size then.

Two official bugs are fixed by default, each with a named option restoring the official behaviour:
  * PixMo-Points: the official reader inverts its `counting` flag (`counting=True` -> style "pointing");
    here `counting=True` -> "point_count" unless `official_counting_flag=True`.
  * PixMo-CapQA: the official "no pointing" prefix replaces a matching user turn with prefix + the FIRST
    turn; here the prefix goes on the matching turn unless `official_prefix_bug=True`.
Local validation splits (sets with only a hub `train` split) are carved with a seeded permutation
(seed 96817, the official seed) of all image groups, before bad rows and images missing from the cache
are dropped, so a split does not move when more images download; the official `datasets.train_test_split`
runs after the download filter and picks different examples. `n_val` (official: 2048, 1024 for
point-explanations) is capped at a tenth of the groups (at least one when there are two), so a small copy
keeps a train split.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import io
import logging
import os
import re
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from etils import epath
from PIL import Image

from data_pipelines import pixmo_checks
from data_pipelines.download import image_file
from data_pipelines.pixmo_checks import BadExample
from molmo_jax import paths

Rows = Mapping[str, list]  # column -> values over the rows of one example
Example = dict[str, Any]

VAL_SPLIT_SEED = 96817
CLOCK_PROMPT = "What time is being shown?"  # the official ClockBench prompt (style "clocks")
DOC_TYPES = ("charts", "tables", "diagrams", "other")
CAP_MODES = ("captions", "transcripts", "transcript_and_caption", "transcript1_and_caption")
POINT_KINDS = ("basic", "high_frequency", "both")

# Verbatim data from the official pixmo_datasets.py (duplicates and typos included: they set the odds).
NO_POINT_PREFIX = (
    "No pointing: ", "No pointing: ", "no pointing:\n", "No pointing:\n", "Not pointing:\n",
    "No Points: ", "No Points: ", "NO POINTING\n", "No pontiing\n", "No Points:\n ", "No pointing\n",
    "Do not point. ", "Refrain from pointing. ", "Avoid generating points . ",
    "For this question, do not use points. ", "Refrain from using points:\n",
    "Don't include points in your response. ", "Don't point. ", "Don't use points. ",
    "Please don't use points.\n\n", "Please don't use points.\n\n", "Respond without using points. ",
    "Respond without pointing:\n", "Do not generate ponits: ", "Do not point. ", "Do not point\n",
    "no pointing\n\n", "Answer without points: ", "Answer this question without pointing: ",
    "Answer without poiints. ", "answer without points: ", "answer with text only, do not points\n",
)

_XY = pa.struct([("x", pa.float64()), ("y", pa.float64())])

# Arrow schemas of the hub files (the `datasets` features of the hub cards as Arrow types).
SCHEMAS: dict[str, pa.Schema] = {
    "pixmo-cap": pa.schema([("image_url", pa.string()), ("caption", pa.string()),
                            ("transcripts", pa.list_(pa.string()))]),
    "pixmo-ask-model-anything": pa.schema([("image_url", pa.string()), ("image_sha256", pa.string()),
                                           ("question", pa.string()), ("answer", pa.string())]),
    "pixmo-cap-qa": pa.schema([("image_url", pa.string()), ("question", pa.string()),
                               ("answer", pa.string()), ("messages", pa.list_(pa.string()))]),
    "pixmo-points": pa.schema([("image_url", pa.string()), ("image_sha256", pa.string()),
                               ("points", pa.list_(_XY)), ("count", pa.int64()), ("label", pa.string()),
                               ("collection_method", pa.string())]),
    "pixmo-points-eval": pa.schema([("image_url", pa.string()), ("image_sha256", pa.string()),
                                    ("label", pa.string()), ("points", pa.list_(_XY)),
                                    ("masks", pa.list_(pa.list_(pa.list_(pa.bool_()))))]),
    "pixmo-point-explanations": pa.schema([
        ("image_url", pa.string()), ("image_sha256", pa.string()), ("question", pa.string()),
        ("response", pa.string()), ("parsed_response", pa.string()), ("alt_text", pa.list_(pa.string())),
        ("inline_text", pa.list_(pa.string())), ("points", pa.list_(pa.list_(pa.list_(pa.float64()))))]),
    "pixmo-docs": pa.schema([("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                             ("image_id", pa.string()),
                             ("questions", pa.struct([("question", pa.list_(pa.string())),
                                                      ("answer", pa.list_(pa.string()))]))]),
    "pixmo-clocks": pa.schema([
        ("example_id", pa.string()), ("watchface_id", pa.string()), ("watchface_name", pa.string()),
        ("watch_time", pa.string()), ("time_format", pa.string()), ("shows_seconds", pa.bool_()),
        ("hour_visible", pa.int32()), ("minute_visible", pa.int32()), ("second_visible", pa.int32()),
        ("text", pa.string())]),
    "pixmo-count": pa.schema([("image_url", pa.string()), ("image_sha256", pa.string()),
                              ("count", pa.int32()),
                              ("points", pa.struct([("x", pa.list_(pa.float32())), ("y", pa.list_(pa.float32()))])),
                              ("label", pa.string())]),
}


class EmptyAnnotationError(BadExample):
    """The rows of an example hold nothing to train on (no caption / transcript / question)."""

    def __init__(self, detail: str = ""):
        super().__init__("empty_annotation", detail)


class Source(Protocol):
    """A random-access dataset of formatter example dicts (the official `Dataset.get` contract)."""

    def __len__(self) -> int: ...

    def get(self, index: int, rng: np.random.RandomState) -> Example: ...


# ------------------------------------------------------------------------------------------------
# Rows -> example converters (shared with `synthetic`, which generates rows in these schemas)


def _how_many(question: str) -> bool:
    return re.fullmatch("how many.*", question.lower()) is not None


def _no_point_prefix(rng) -> str:
    return NO_POINT_PREFIX[rng.randint(0, len(NO_POINT_PREFIX))]


def xy_array(points) -> np.ndarray:
    """float[n, 2] of a list of {"x", "y"} dicts (pixmo-points) or a {"x": [...], "y": [...]} dict (count)."""
    if isinstance(points, Mapping):
        return np.stack([np.asarray(points["x"], np.float64), np.asarray(points["y"], np.float64)], -1)
    return np.array([[p["x"], p["y"]] for p in points], np.float64).reshape(-1, 2)


def cap_example(rows: Rows, rng, mode: str = "transcript_and_caption") -> Example:
    """PixMo-Cap: the caption (style long_caption) and/or transcripts (style transcript)."""
    caption = rows["caption"][0]
    transcripts = [t for t in rows["transcripts"][0] or () if pixmo_checks.is_text(t)]
    messages = []
    if mode != "transcripts":
        if not caption:
            raise EmptyAnnotationError("empty caption")
        messages.append(dict(text=caption, style="long_caption"))
    if mode != "captions":
        if not transcripts:
            raise EmptyAnnotationError("no transcripts")
        if mode == "transcript_and_caption":
            transcripts = [transcripts[rng.randint(0, len(transcripts))]]
        elif mode == "transcript1_and_caption":
            transcripts = transcripts[:1]
        messages += [dict(text=t, style="transcript") for t in transcripts]
    return dict(message_list=messages)


def ask_model_anything_example(rows: Rows, rng, prefix_how_many: bool = True) -> Example:
    """PixMo-AskModelAnything: one user_qa conversation per question; "how many" ones get a no-point prefix."""
    messages = [dict(question=q, answer=a, style="user_qa") for q, a in zip(rows["question"], rows["answer"])]
    if prefix_how_many:
        for m in messages:
            if _how_many(m["question"]):
                m["question"] = _no_point_prefix(rng) + m["question"]
    return dict(message_list=messages)


def cap_qa_example(rows: Rows, rng, prefix_how_many: bool = True, official_prefix_bug: bool = False) -> Example:
    """PixMo-CapQA: each `messages` list is one synthetic_qa conversation (even turns are the user's)."""
    convs = [dict(messages=list(m), style="synthetic_qa") for m in rows["messages"]]
    if prefix_how_many:
        for conv in convs:
            turns = conv["messages"]
            for ix in range(0, len(turns), 2):
                if _how_many(turns[ix]):
                    turns[ix] = _no_point_prefix(rng) + turns[0 if official_prefix_bug else ix]
    return dict(message_list=convs)


def points_style(counting: bool, official_counting_flag: bool = False) -> str:
    """Style of PixMo-Points examples: point_count when counting (inverted by the official reader)."""
    return "point_count" if counting != official_counting_flag else "pointing"


def points_example(rows: Rows, rng=None, counting: bool = False, official_counting_flag: bool = False) -> Example:
    """PixMo-Points: one pointing (or point_count) conversation per label; points in percent."""
    style = points_style(counting, official_counting_flag)
    return dict(message_list=[dict(label=label, points=xy_array(points), point_scale=100, style=style)
                              for label, points in zip(rows["label"], rows["points"])])


def point_explanations_example(rows: Rows, rng=None) -> Example:
    """PixMo-Point-Explanations: point_qa conversations whose `<|POINT|>`s become inline points."""
    columns = (rows[k] for k in ("question", "parsed_response", "alt_text", "inline_text", "points"))
    return dict(message_list=[
        dict(question=q, answer=r, style="point_qa",
             answer_annotations=[dict(points=p, inline_text=i, alt_text=a) for p, i, a in zip(pts, inl, alt)])
        for q, r, alt, inl, pts in zip(*columns)])


def docs_example(rows: Rows, rng=None, doc_type: str = "charts") -> Example:
    """PixMo-Docs: every question/answer pair of the document, style pixmo_docs_<type>."""
    pairs = pixmo_checks.good_pairs(rows["questions"][0])
    if not pairs:
        raise EmptyAnnotationError("no question with an answer")
    return dict(message_list=[dict(question=q, answer=a, style=f"pixmo_docs_{doc_type}") for q, a in pairs],
                metadata=dict(image_id=rows["image_id"][0]))


def clock_time(rows: Rows) -> dict[str, int]:
    """The time a PixMo-Clocks row shows, as the official `ClockEval` metadata: "hour", "minute", "second"
    of `watch_time` ("HH:MM:SS"), each -1 when its `*_visible` flag is 0."""
    values = pixmo_checks.clock_fields(rows["watch_time"][0])
    if values is None:
        raise BadExample("bad_clock_time", repr(rows["watch_time"][0]))
    return {name: value if rows[f"{name}_visible"][0] else -1
            for name, value in zip(("hour", "minute", "second"), values, strict=True)}


def clocks_example(rows: Rows, rng=None) -> Example:
    """PixMo-Clocks: "What time is being shown?" -> the row's `text` (style clocks, as ClockBench); the
    metadata holds the shown time (`clock_time`) for the clock scorer."""
    if not rows["text"][0]:
        raise EmptyAnnotationError("empty clock text")
    return dict(question=CLOCK_PROMPT, answer=rows["text"][0], style="clocks",
                metadata=dict(example_id=rows["example_id"][0], watch_time=rows["watch_time"][0], **clock_time(rows)))


def count_example(rows: Rows, rng=None, counting: bool = False, with_points: bool = True) -> Example:
    """PixMo-Count: point to (or count) `label`; points are pixels (the formatter scales by image size)."""
    out = dict(style="point_count" if counting else "pointing", label=rows["label"][0],
               metadata=dict(count=rows["count"][0]))
    if with_points:
        out["points"] = xy_array(rows["points"][0] or {"x": [], "y": []})
    return out


# ------------------------------------------------------------------------------------------------
# Parquet tables -> sources


@dataclasses.dataclass
class TableSource:
    """Examples made of row groups of an Arrow table (see `Source`).

    table: the hub rows; groups: row ids of each example; convert: (rows, rng) -> example without image;
    image: rows -> the image's bytes or file (read here, so examples hold encoded bytes); stats: what
    the reader read and dropped; pixel_points: check the example's points (pixels) against the image size
    when it is read.
    """
    table: pa.Table
    groups: Sequence[np.ndarray]
    convert: Callable[[Rows, Any], Example]
    image: Callable[[Rows], Any]
    stats: ReadStats = dataclasses.field(default_factory=lambda: ReadStats())
    pixel_points: bool = False

    def __len__(self) -> int:
        return len(self.groups)

    @property
    def drops(self) -> dict[str, int]:
        """The reader's drop table: reason -> hub rows (or Q/A pairs, transcripts: `pixmo_checks.PARTIAL`)."""
        return dict(self.stats.drops)

    def rows(self, index: int) -> dict[str, list]:
        return self.table.take(pa.array(self.groups[index])).to_pydict()

    def get(self, index: int, rng) -> Example:
        """Example `index`; raises BadExample when its image matches none of its rows' hashes or its
        pixel points fall outside the image."""
        return self.read(index, rng)[0]

    def read(self, index: int, rng) -> tuple[Example, int]:
        """(example `index`, how many of its rows were left out because the image bytes are not their hash)."""
        rows = self.rows(index)
        image = self.image(rows)
        image = image if isinstance(image, bytes) else read_bytes(image)  # local or gs:// cache
        n_rows = len(self.groups[index])
        if "image_sha256" in rows:
            rows = pixmo_checks.matching_rows(rows, image)
        example = self.convert(rows, rng)
        if self.pixel_points and "points" in example:
            pixmo_checks.check_inside(example["points"], *image_size(image))
        example["image"] = image
        if "image_url" in rows:
            example.setdefault("metadata", {})["image_url"] = rows["image_url"][0]
        return example, n_rows - len(next(iter(rows.values())))


@dataclasses.dataclass
class ReadStats:
    """What a reader saw: hub rows of its split (and kind), drops (reason -> rows, `pixmo_checks`), and the
    distinct images "present" / "missing" in the cache."""
    rows: int = 0
    drops: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    images: dict[str, int] = dataclasses.field(default_factory=dict)


def read_bytes(path) -> bytes:
    """The bytes of an image file; BadExample("image_missing") if it is gone."""
    try:
        return epath.Path(path).read_bytes()
    except FileNotFoundError as e:
        raise BadExample("image_missing", str(path)) from e


def image_size(image: bytes) -> tuple[int, int]:
    """(width, height) of an encoded image as displayed (EXIF rotation applied), from its header only."""
    try:
        with Image.open(io.BytesIO(image)) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # EXIF Orientation: a quarter turn
    except (OSError, SyntaxError, ValueError) as e:
        raise BadExample("bad_image", str(e)) from e
    return (h, w) if rotated else (w, h)


def parquet_files(pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Sorted files of a glob pattern (wildcards in the file name only), a file, or a list of them, local
    or gs://; raises FileNotFoundError on none."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files = sorted({f for p in patterns for f in paths.glob(p)})
    if not files:
        raise FileNotFoundError(f"no parquet files match {[os.fspath(p) for p in patterns]}")
    return files


def read_table(files, schema_name: str) -> pa.Table:
    """The hub files' rows (only the columns of `SCHEMAS[schema_name]`), raising on a missing column."""
    schema = SCHEMAS[schema_name]
    tables = []
    for path in parquet_files(files):
        with epath.Path(path).open("rb") as f:
            try:
                parquet = pq.ParquetFile(f)
                missing = [c for c in schema.names if c not in parquet.schema_arrow.names]
                if missing:
                    raise ValueError(f"{path}: not a {schema_name} file, it lacks the column(s) {missing}")
                tables.append(parquet.read(columns=schema.names))
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{path}: not a readable parquet file ({e})") from e
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as e:
        raise ValueError(f"{schema_name} files {files}: their column types disagree ({e})") from e


def image_items(files, schema_name: str, check_sha: bool = True) -> list[tuple[str, tuple[str, ...] | None]]:
    """Unique (image_url, its rows' distinct sha256 hashes or None) of a URL dataset's files, for
    `download.download`, in the order of first occurrence; rows without a usable URL are left out."""
    table = read_table(files, schema_name)
    urls = table.column("image_url").to_pylist()
    with_sha = check_sha and "image_sha256" in table.column_names
    shas = table.column("image_sha256").to_pylist() if with_sha else [None] * len(urls)
    items: dict[str, set[str] | None] = {}
    for url, sha in zip(urls, shas):
        if pixmo_checks.url_reasons({"image_url": url}):
            continue
        hashes = items.setdefault(url, set() if with_sha else None)
        if with_sha and not pixmo_checks.sha_reasons({"image_sha256": sha}):
            hashes.add(sha.lower())
    return [(url, None if hashes is None else tuple(sorted(hashes))) for url, hashes in items.items()]


def group_rows(keys: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Row ids of each distinct key, groups ordered by first occurrence (the official grouping by URL);
    null keys form one group (the row checks drop it)."""
    values = np.asarray(["" if k is None else k for k in keys.to_pylist()], dtype=object)
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    return [groups[g] for g in np.argsort(first)]


def single_rows(n: int) -> list[np.ndarray]:
    return [np.array([i]) for i in range(n)]


def val_size(n_groups: int, n_val: int) -> int:
    """Validation examples carved from `n_groups`: `n_val`, at most a tenth of them (at least one of two
    or more), so the train split is never emptied."""
    cap = max(n_groups // 10, 1 if n_groups > 1 else 0)
    if n_val > cap:
        logging.warning("n_val=%d of %d examples leaves too few to train on; carving %d", n_val, n_groups, cap)
    return min(n_val, cap)


def carve_split(groups: Sequence[np.ndarray], split: str, n_val: int | None) -> list[np.ndarray]:
    """The local train / validation split of a hub train set: `val_size` examples by seeded permutation."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}; this dataset has only 'train' and 'validation'")
    if not n_val:
        if split == "validation":
            raise ValueError("split='validation' needs n_val > 0")
        return list(groups)
    n = val_size(len(groups), n_val)
    perm = np.random.RandomState(VAL_SPLIT_SEED).permutation(len(groups))
    chosen = np.sort(perm[:n] if split == "validation" else perm[n:])
    return [groups[i] for i in chosen]


def _check_table(table: pa.Table) -> pa.Table:
    """The columns the row checks read; PixMo-Docs images reduced to whether they have bytes."""
    if "image" not in table.column_names:
        return table
    has_bytes = pc.fill_null(pc.greater(pc.binary_length(pc.struct_field(table.column("image"), "bytes")), 0),
                             False)
    return table.drop_columns(["image"]).append_column("image", has_bytes)


def check_groups(table: pa.Table, groups: Sequence[np.ndarray], check: Callable[[Rows], list[str]],
                 stats: ReadStats) -> list[np.ndarray]:
    """`groups` without the rows `check` rejects (groups left empty go), counting them and every reason
    in `stats`."""
    ids = np.concatenate(groups) if len(groups) else np.zeros(0, np.int64)
    rows = dict(zip(ids.tolist(), _check_table(table.take(pa.array(ids))).to_pylist()))
    out = []
    for group in groups:
        stats.rows += len(group)
        kept = []
        for r in group:
            reasons = check(rows[int(r)])
            stats.drops.update(reasons)
            if pixmo_checks.PARTIAL.issuperset(reasons):
                kept.append(r)
        if kept:
            out.append(np.asarray(kept))
    return out


def url_source(table: pa.Table, groups: Sequence[np.ndarray], convert, image_dir,
               stats: ReadStats, pixel_points: bool = False) -> TableSource:
    """A source whose images are cached downloads of `image_url`; groups without a cached image are dropped
    (their rows counted as "image_missing")."""
    urls = table.column("image_url").to_pylist()
    cached = paths.names(image_dir)
    present = {}
    for g in groups:
        url = urls[int(g[0])]
        if url not in present:
            present[url] = os.path.basename(image_file(image_dir, url)) in cached
    kept = [g for g in groups if present[urls[int(g[0])]]]
    stats.drops["image_missing"] += sum(len(g) for g in groups) - sum(len(g) for g in kept)
    stats.images = dict(present=sum(present.values()), missing=len(present) - sum(present.values()))
    return TableSource(table, kept, convert, _CachedImage(os.fspath(image_dir)), stats, pixel_points)


@dataclasses.dataclass(frozen=True)
class _CachedImage:
    """rows -> the downloader's cache file of their image_url (picklable: sources cross processes)."""
    image_dir: str

    def __call__(self, rows: Rows) -> str:
        return image_file(self.image_dir, rows["image_url"][0])


# ------------------------------------------------------------------------------------------------
# The eight datasets


def pixmo_cap(files, image_dir, split: str = "train", mode: str = "transcript_and_caption",
              n_val: int | None = 2048) -> TableSource:
    """PixMo-Cap, one example per row (official: not grouped)."""
    if mode not in CAP_MODES:
        raise ValueError(f"mode={mode!r}; allowed {CAP_MODES}")
    table = read_table(files, "pixmo-cap")
    check = functools.partial(pixmo_checks.cap, captions=mode != "transcripts", transcripts=mode != "captions")
    stats = ReadStats()
    groups = check_groups(table, carve_split(single_rows(len(table)), split, n_val), check, stats)
    return url_source(table, groups, functools.partial(cap_example, mode=mode), image_dir, stats)


def pixmo_ask_model_anything(files, image_dir, split: str = "train", prefix_how_many: bool = True,
                             n_val: int | None = 2048) -> TableSource:
    """PixMo-AskModelAnything, grouped per image."""
    table = read_table(files, "pixmo-ask-model-anything")
    stats = ReadStats()
    groups = check_groups(table, carve_split(group_rows(table.column("image_url")), split, n_val),
                          pixmo_checks.ask_model_anything, stats)
    return url_source(table, groups, functools.partial(ask_model_anything_example, prefix_how_many=prefix_how_many),
                      image_dir, stats)


def pixmo_cap_qa(files, image_dir, split: str = "train", prefix_how_many: bool = True,
                 official_prefix_bug: bool = False, n_val: int | None = 2048) -> TableSource:
    """PixMo-CapQA (reads `messages`), grouped per image."""
    table = read_table(files, "pixmo-cap-qa")
    stats = ReadStats()
    groups = check_groups(table, carve_split(group_rows(table.column("image_url")), split, n_val),
                          pixmo_checks.cap_qa, stats)
    convert = functools.partial(cap_qa_example, prefix_how_many=prefix_how_many,
                                official_prefix_bug=official_prefix_bug)
    return url_source(table, groups, convert, image_dir, stats)


def pixmo_points(files, image_dir, split: str = "train", kind: str = "basic", counting: bool = False,
                 official_counting_flag: bool = False, exclude_urls: Sequence[str] = (),
                 n_val: int | None = 2048) -> TableSource:
    """PixMo-Points: kind "basic" (collection_method pointing), "high_frequency" (counting) or "both".

    Each collection method is grouped per image and split separately (the official local sets);
    `exclude_urls` (the PixMo-Points-Eval images, see `load`) are removed first. Those rows, and rows of
    no known collection method (they belong to no kind), are counted by the train split of every kind.
    """
    if kind not in POINT_KINDS:
        raise ValueError(f"kind={kind!r}; allowed {POINT_KINDS}")
    table = read_table(files, "pixmo-points")
    stats = ReadStats()
    if exclude_urls:
        held_out = pc.fill_null(pc.is_in(table.column("image_url"), pa.array(list(exclude_urls))), False)
        if split == "train":
            stats.rows = stats.drops["held_out_for_eval"] = pc.sum(held_out).as_py() or 0
        table = table.filter(pc.invert(held_out))
    methods = {"basic": ["pointing"], "high_frequency": ["counting"], "both": ["counting", "pointing"]}[kind]
    column = table.column("collection_method").to_numpy(zero_copy_only=False)
    if split == "train":
        stats.drops["bad_collection_method"] = int(np.sum(~np.isin(column, pixmo_checks.POINT_METHODS)))
        stats.rows += stats.drops["bad_collection_method"]
    groups = []
    for method in methods:
        rows = np.flatnonzero(column == method)
        subset = group_rows(table.column("image_url").take(pa.array(rows)))
        groups += carve_split([rows[g] for g in subset], split, n_val)
    groups = check_groups(table, groups, pixmo_checks.points, stats)
    convert = functools.partial(points_example, counting=counting, official_counting_flag=official_counting_flag)
    return url_source(table, groups, convert, image_dir, stats)


def pixmo_point_explanations(files, image_dir, split: str = "train", split_groups: bool = True,
                             n_val: int | None = 1024) -> TableSource:
    """PixMo-Point-Explanations (rows lacking `parsed_response` are dropped, as officially); with
    `split_groups` an image's conversations are split into two examples (first ceil(n/2), then the rest),
    as the official code."""
    table = read_table(files, "pixmo-point-explanations")
    stats = ReadStats()
    groups = check_groups(table, carve_split(group_rows(table.column("image_url")), split, n_val),
                          pixmo_checks.point_explanations, stats)
    if split_groups:
        groups = [half for g in groups for half in ((g,) if len(g) < 2 else np.split(g, [(len(g) + 1) // 2]))]
    return url_source(table, groups, functools.partial(point_explanations_example), image_dir, stats)


def _embedded_image(rows: Rows) -> bytes:
    return rows["image"][0]["bytes"]


def pixmo_docs(files, doc_type: str) -> TableSource:
    """PixMo-Docs, one subset (charts, tables, diagrams, other) and hub split; images are embedded PNGs."""
    if doc_type not in DOC_TYPES:
        raise ValueError(f"doc_type={doc_type!r}; allowed {DOC_TYPES}")
    table = read_table(files, "pixmo-docs")
    stats = ReadStats()
    groups = check_groups(table, single_rows(len(table)), pixmo_checks.docs, stats)
    convert = functools.partial(docs_example, doc_type=doc_type)
    return TableSource(table, groups, convert, _embedded_image, stats)


def pixmo_clocks(files, image_dir) -> TableSource:
    """PixMo-Clocks. The hub ships metadata only; renderings must be `<image_dir>/<example_id>.png`
    (rows without one are dropped). `synthetic.ClockSource` draws its own clocks instead."""
    table = read_table(files, "pixmo-clocks")
    stats = ReadStats()
    groups = check_groups(table, single_rows(len(table)), pixmo_checks.clocks, stats)
    ids, rendered = table.column("example_id").to_pylist(), paths.names(image_dir)
    kept = [g for g in groups if f"{ids[g[0]]}.png" in rendered]
    stats.drops["image_missing"] += len(groups) - len(kept)
    stats.images = dict(present=len(kept), missing=len(groups) - len(kept))
    return TableSource(table, kept, functools.partial(clocks_example), _ClockImage(os.fspath(image_dir)), stats)


@dataclasses.dataclass(frozen=True)
class _ClockImage:
    image_dir: str

    def __call__(self, rows: Rows) -> str:
        return os.fspath(epath.Path(self.image_dir) / f"{rows['example_id'][0]}.png")


def pixmo_count(files, image_dir, counting: bool = False, with_points: bool = True) -> TableSource:
    """PixMo-Count, one hub split; pass `with_points=False` for validation/test (no points there)."""
    table = read_table(files, "pixmo-count")
    stats = ReadStats()
    groups = check_groups(table, single_rows(len(table)),
                          functools.partial(pixmo_checks.count, with_points=with_points), stats)
    convert = functools.partial(count_example, counting=counting, with_points=with_points)
    return url_source(table, groups, convert, image_dir, stats, pixel_points=with_points)


# ------------------------------------------------------------------------------------------------
# Loading by the official dataset names


def hub_files(data_dir, repo: str, split: str, config: str | None = None) -> str:
    """Glob of a hub split inside `<data_dir>/<repo>` (the hub layout: data/<split>-*.parquet)."""
    return os.fspath(epath.Path(data_dir) / repo / (config or "data") / f"{split}-*.parquet")


def _eval_urls(data_dir) -> list[str]:
    try:
        table = read_table(hub_files(data_dir, "pixmo-points-eval", "test"), "pixmo-points-eval")
    except FileNotFoundError:
        return []
    return [u for u in table.column("image_url").to_pylist() if u]


# Official mixture name -> the hub repo it reads (pixmo_docs_<type>: pixmo-docs, config <type>).
HUB_REPOS = {
    "pixmo_cap_with_transcripts": "pixmo-cap", "pixmo_cap": "pixmo-cap",
    "pixmo_ask_model_anything": "pixmo-ask-model-anything", "pixmo_cap_qa": "pixmo-cap-qa",
    "pixmo_points": "pixmo-points", "pixmo_points_counting": "pixmo-points",
    "pixmo_points_high_freq": "pixmo-points", "pixmo_points_high_freq_counting": "pixmo-points",
    "pixmo_pointing_explanations": "pixmo-point-explanations",
    "pixmo_count": "pixmo-count", "pixmo_count_counting": "pixmo-count", "pixmo_clocks": "pixmo-clocks",
    **{f"pixmo_docs_{t}": "pixmo-docs" for t in DOC_TYPES},
}
# Hub repos whose images are URLs (`download`), with the sha256 column or not.
URL_REPOS = ("pixmo-cap", "pixmo-ask-model-anything", "pixmo-cap-qa", "pixmo-points",
             "pixmo-point-explanations", "pixmo-count", "pixmo-points-eval")


def load(name: str, data_dir, image_dir, split: str = "train", n_val: int | None = None) -> TableSource:
    """A PixMo dataset by its official mixture name (`olmo/data/__init__.py:get_dataset_by_name`).

    n_val: examples carved into the local validation split of sets with only a hub train split (None:
    the official 2048, or 1024 for point explanations; capped by `val_size`)."""
    f = lambda repo, hub_split="train", config=None: hub_files(data_dir, repo, hub_split, config)  # noqa: E731
    val = {} if n_val is None else dict(n_val=n_val)
    points = lambda **kw: pixmo_points(f("pixmo-points"), image_dir, split,  # noqa: E731
                                       exclude_urls=_eval_urls(data_dir), **kw, **val)
    if name.startswith("pixmo_docs_") and name in HUB_REPOS:
        doc_type = name[len("pixmo_docs_"):]
        return pixmo_docs(f("pixmo-docs", split, doc_type), doc_type)
    builders = {
        "pixmo_cap_with_transcripts": lambda: pixmo_cap(f("pixmo-cap"), image_dir, split, "transcript_and_caption",
                                                        **val),
        "pixmo_cap": lambda: pixmo_cap(f("pixmo-cap"), image_dir, split, "captions", **val),
        "pixmo_ask_model_anything": lambda: pixmo_ask_model_anything(f("pixmo-ask-model-anything"), image_dir,
                                                                     split, **val),
        "pixmo_cap_qa": lambda: pixmo_cap_qa(f("pixmo-cap-qa"), image_dir, split, **val),
        "pixmo_points": lambda: points(kind="basic", counting=False),
        "pixmo_points_counting": lambda: points(kind="basic", counting=True),
        "pixmo_points_high_freq": lambda: points(kind="high_frequency", counting=False),
        "pixmo_points_high_freq_counting": lambda: points(kind="high_frequency", counting=True),
        "pixmo_pointing_explanations": lambda: pixmo_point_explanations(f("pixmo-point-explanations"),
                                                                        image_dir, split, **val),
        "pixmo_count": lambda: pixmo_count(f("pixmo-count", split), image_dir, False, split == "train"),
        "pixmo_count_counting": lambda: pixmo_count(f("pixmo-count", split), image_dir, True, split == "train"),
        "pixmo_clocks": lambda: pixmo_clocks(f("pixmo-clocks", split), image_dir),
    }
    if name not in builders:
        raise KeyError(f"unknown PixMo dataset {name!r}; known: {sorted(HUB_REPOS)}")
    return builders[name]()
