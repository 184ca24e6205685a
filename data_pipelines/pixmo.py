"""Readers of the eight PixMo datasets from their Hugging Face hub parquet files.

Each dataset becomes a `Source`: `len(source)` examples and `source.get(index, rng)` -> one example dict
in the input format of `molmo_jax.formatting.Formatter`, built as the official `olmo/data/pixmo_datasets.py`
builds it: rows of one image are grouped into one example whose `message_list` holds one conversation
per annotation (Cap, Count and Docs are one row per image). Schemas: shared/spec/PIXMO_SCHEMAS.md.

Files are read from a local copy of the hub repos (`huggingface-cli download allenai/pixmo-cap
--repo-type dataset --local-dir <data_dir>/pixmo-cap`); URL images from the downloader's cache
(`download.image_file(image_dir, url)`). Examples whose image is not in the cache are dropped, as the
official code drops failed downloads.

Two official bugs are fixed by default, each with a named option restoring the official behaviour:
  * PixMo-Points: the official reader inverts its `counting` flag (`counting=True` -> style "pointing");
    here `counting=True` -> "point_count" unless `official_counting_flag=True`.
  * PixMo-CapQA: the official "no pointing" prefix replaces a matching user turn with prefix + the FIRST
    turn; here the prefix goes on the matching turn unless `official_prefix_bug=True`.
Local validation splits (sets with only a hub `train` split) are carved with a seeded permutation
(seed 96817, the official seed) of all image groups, before images missing from the cache are dropped, so
a split does not move when more images download; the official `datasets.train_test_split` runs after the
download filter and picks different examples.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import re
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from etils import epath

from data_pipelines.download import image_file
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

# Arrow schemas of the hub files (`datasets` features -> Arrow, PIXMO_SCHEMAS.md section 0.1).
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


class EmptyAnnotationError(ValueError):
    """The rows of an example hold nothing to train on (no caption / transcript / question)."""


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
    caption, transcripts = rows["caption"][0], list(rows["transcripts"][0] or ())
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
    qas = rows["questions"][0]
    return dict(message_list=[dict(question=q, answer=a, style=f"pixmo_docs_{doc_type}")
                              for q, a in zip(qas["question"], qas["answer"])],
                metadata=dict(image_id=rows["image_id"][0]))


def clock_time(rows: Rows) -> dict[str, int]:
    """The time a PixMo-Clocks row shows, as the official `ClockEval` metadata: "hour", "minute", "second"
    of `watch_time` ("HH:MM:SS"), each -1 when its `*_visible` flag is 0."""
    values = [int(v) for v in rows["watch_time"][0].split(":")]
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
    image: rows -> what `Preprocessor.load` accepts (a path, bytes).
    """
    table: pa.Table
    groups: Sequence[np.ndarray]
    convert: Callable[[Rows, Any], Example]
    image: Callable[[Rows], Any]

    def __len__(self) -> int:
        return len(self.groups)

    def rows(self, index: int) -> dict[str, list]:
        return self.table.take(pa.array(self.groups[index])).to_pydict()

    def get(self, index: int, rng) -> Example:
        rows = self.rows(index)
        example = self.convert(rows, rng)
        example["image"] = self.image(rows)
        if "image_url" in rows:
            example.setdefault("metadata", {})["image_url"] = rows["image_url"][0]
        return example


def parquet_files(pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Sorted files of a glob pattern, a file, or a list of them; raises FileNotFoundError on none."""
    patterns = [pattern] if isinstance(pattern, (str, os.PathLike)) else list(pattern)
    files = sorted({f for p in patterns for f in paths.glob(p)})
    if not files:
        raise FileNotFoundError(f"no parquet files match {patterns}")
    return files


def read_table(files, schema_name: str) -> pa.Table:
    """The hub files' rows (only the columns of `SCHEMAS[schema_name]`), raising on a missing column."""
    schema = SCHEMAS[schema_name]
    tables = []
    for path in parquet_files(files):
        with epath.Path(path).open("rb") as f:
            parquet = pq.ParquetFile(f)
            missing = [c for c in schema.names if c not in parquet.schema_arrow.names]
            if missing:
                raise ValueError(f"{path}: not a {schema_name} file, it lacks the column(s) {missing}")
            tables.append(parquet.read(columns=schema.names))
    return pa.concat_tables(tables, promote_options="permissive")


def image_items(files, schema_name: str, check_sha: bool = True) -> list[tuple[str, str | None]]:
    """Unique (image_url, image_sha256 or None) pairs of a URL dataset's files, for `download.download`."""
    table = read_table(files, schema_name)
    urls = table.column("image_url").to_pylist()
    with_sha = check_sha and "image_sha256" in table.column_names
    shas = table.column("image_sha256").to_pylist() if with_sha else [None] * len(urls)
    return list(dict(zip(urls, shas)).items())


def group_rows(keys: pa.ChunkedArray | pa.Array) -> list[np.ndarray]:
    """Row ids of each distinct key, groups ordered by first occurrence (the official grouping by URL)."""
    values = np.asarray(keys.to_pylist(), dtype=object)
    _, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    return [groups[g] for g in np.argsort(first)]


def single_rows(n: int) -> list[np.ndarray]:
    return [np.array([i]) for i in range(n)]


def carve_split(groups: Sequence[np.ndarray], split: str, n_val: int | None) -> list[np.ndarray]:
    """The local train / validation split of a hub train set: `n_val` examples by seeded permutation."""
    if split not in ("train", "validation"):
        raise ValueError(f"split={split!r}; this dataset has only 'train' and 'validation'")
    if not n_val:
        if split == "validation":
            raise ValueError("split='validation' needs n_val > 0")
        return list(groups)
    perm = np.random.RandomState(VAL_SPLIT_SEED).permutation(len(groups))
    chosen = np.sort(perm[:n_val] if split == "validation" else perm[n_val:])
    return [groups[i] for i in chosen]


def url_source(table: pa.Table, groups: Sequence[np.ndarray], convert, image_dir) -> TableSource:
    """A source whose images are cached downloads of `image_url`; groups without a cached image are dropped."""
    urls = table.column("image_url")
    cached = paths.names(image_dir)
    kept = [g for g in groups if os.path.basename(image_file(image_dir, urls[int(g[0])].as_py())) in cached]
    return TableSource(table, kept, convert, _CachedImage(os.fspath(image_dir)))


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
    groups = carve_split(single_rows(len(table)), split, n_val)
    return url_source(table, groups, functools.partial(cap_example, mode=mode), image_dir)


def pixmo_ask_model_anything(files, image_dir, split: str = "train", prefix_how_many: bool = True,
                             n_val: int | None = 2048) -> TableSource:
    """PixMo-AskModelAnything, grouped per image."""
    table = read_table(files, "pixmo-ask-model-anything")
    groups = carve_split(group_rows(table.column("image_url")), split, n_val)
    return url_source(table, groups, functools.partial(ask_model_anything_example, prefix_how_many=prefix_how_many),
                      image_dir)


def pixmo_cap_qa(files, image_dir, split: str = "train", prefix_how_many: bool = True,
                 official_prefix_bug: bool = False, n_val: int | None = 2048) -> TableSource:
    """PixMo-CapQA (reads `messages`), grouped per image."""
    table = read_table(files, "pixmo-cap-qa")
    groups = carve_split(group_rows(table.column("image_url")), split, n_val)
    convert = functools.partial(cap_qa_example, prefix_how_many=prefix_how_many,
                                official_prefix_bug=official_prefix_bug)
    return url_source(table, groups, convert, image_dir)


def pixmo_points(files, image_dir, split: str = "train", kind: str = "basic", counting: bool = False,
                 official_counting_flag: bool = False, exclude_urls: Sequence[str] = (),
                 n_val: int | None = 2048) -> TableSource:
    """PixMo-Points: kind "basic" (collection_method pointing), "high_frequency" (counting) or "both".

    Each collection method is grouped per image and split separately (the official local sets);
    `exclude_urls` (the PixMo-Points-Eval images, see `load`) are removed first.
    """
    if kind not in POINT_KINDS:
        raise ValueError(f"kind={kind!r}; allowed {POINT_KINDS}")
    table = read_table(files, "pixmo-points")
    if exclude_urls:
        table = table.filter(pc.invert(pc.is_in(table.column("image_url"), pa.array(list(exclude_urls)))))
    methods = {"basic": ["pointing"], "high_frequency": ["counting"], "both": ["counting", "pointing"]}[kind]
    groups = []
    for method in methods:
        rows = np.flatnonzero(table.column("collection_method").to_numpy(zero_copy_only=False) == method)
        subset = group_rows(table.column("image_url").take(pa.array(rows)))
        groups += carve_split([rows[g] for g in subset], split, n_val)
    convert = functools.partial(points_example, counting=counting, official_counting_flag=official_counting_flag)
    return url_source(table, groups, convert, image_dir)


def pixmo_point_explanations(files, image_dir, split: str = "train", split_groups: bool = True,
                             n_val: int | None = 1024) -> TableSource:
    """PixMo-Point-Explanations without rows lacking `parsed_response`; with `split_groups` an image's
    conversations are split into two examples (first ceil(n/2), then the rest), as the official code."""
    table = read_table(files, "pixmo-point-explanations")
    table = table.filter(pc.is_valid(table.column("parsed_response")))
    groups = carve_split(group_rows(table.column("image_url")), split, n_val)
    if split_groups:
        groups = [half for g in groups for half in ((g,) if len(g) < 2 else np.split(g, [(len(g) + 1) // 2]))]
    return url_source(table, groups, functools.partial(point_explanations_example), image_dir)


def _embedded_image(rows: Rows) -> bytes:
    return rows["image"][0]["bytes"]


def pixmo_docs(files, doc_type: str) -> TableSource:
    """PixMo-Docs, one subset (charts, tables, diagrams, other) and hub split; images are embedded PNGs."""
    if doc_type not in DOC_TYPES:
        raise ValueError(f"doc_type={doc_type!r}; allowed {DOC_TYPES}")
    table = read_table(files, "pixmo-docs")
    convert = functools.partial(docs_example, doc_type=doc_type)
    return TableSource(table, single_rows(len(table)), convert, _embedded_image)


def pixmo_clocks(files, image_dir) -> TableSource:
    """PixMo-Clocks. The hub ships metadata only; renderings must be `<image_dir>/<example_id>.png`
    (rows without one are dropped). `synthetic.ClockSource` draws its own clocks instead."""
    table = read_table(files, "pixmo-clocks")
    rendered = paths.names(image_dir)
    ids = table.column("example_id").to_pylist()
    groups = [np.array([r]) for r, i in enumerate(ids) if f"{i}.png" in rendered]
    return TableSource(table, groups, functools.partial(clocks_example), _ClockImage(os.fspath(image_dir)))


@dataclasses.dataclass(frozen=True)
class _ClockImage:
    image_dir: str

    def __call__(self, rows: Rows) -> str:
        return os.path.join(self.image_dir, f"{rows['example_id'][0]}.png")


def pixmo_count(files, image_dir, counting: bool = False, with_points: bool = True) -> TableSource:
    """PixMo-Count, one hub split; pass `with_points=False` for validation/test (no points there)."""
    table = read_table(files, "pixmo-count")
    convert = functools.partial(count_example, counting=counting, with_points=with_points)
    return url_source(table, single_rows(len(table)), convert, image_dir)


# ------------------------------------------------------------------------------------------------
# Loading by the official dataset names


def hub_files(data_dir, repo: str, split: str, config: str | None = None) -> str:
    """Glob of a hub split inside `<data_dir>/<repo>` (the hub layout: data/<split>-*.parquet)."""
    return os.path.join(os.fspath(data_dir), repo, config or "data", f"{split}-*.parquet")


def _eval_urls(data_dir) -> list[str]:
    pattern = hub_files(data_dir, "pixmo-points-eval", "test")
    return read_table(pattern, "pixmo-points-eval").column("image_url").to_pylist() if paths.glob(pattern) else []


def load(name: str, data_dir, image_dir, split: str = "train") -> TableSource:
    """A PixMo dataset by its official mixture name (`olmo/data/__init__.py:get_dataset_by_name`)."""
    f = lambda repo, hub_split="train", config=None: hub_files(data_dir, repo, hub_split, config)  # noqa: E731
    points = lambda **kw: pixmo_points(f("pixmo-points"), image_dir, split,  # noqa: E731
                                       exclude_urls=_eval_urls(data_dir), **kw)
    if name.startswith("pixmo_docs_"):
        doc_type = name[len("pixmo_docs_"):]
        return pixmo_docs(f("pixmo-docs", split, doc_type), doc_type)
    builders = {
        "pixmo_cap_with_transcripts": lambda: pixmo_cap(f("pixmo-cap"), image_dir, split, "transcript_and_caption"),
        "pixmo_cap": lambda: pixmo_cap(f("pixmo-cap"), image_dir, split, "captions"),
        "pixmo_ask_model_anything": lambda: pixmo_ask_model_anything(f("pixmo-ask-model-anything"), image_dir, split),
        "pixmo_cap_qa": lambda: pixmo_cap_qa(f("pixmo-cap-qa"), image_dir, split),
        "pixmo_points": lambda: points(kind="basic", counting=False),
        "pixmo_points_counting": lambda: points(kind="basic", counting=True),
        "pixmo_points_high_freq": lambda: points(kind="high_frequency", counting=False),
        "pixmo_points_high_freq_counting": lambda: points(kind="high_frequency", counting=True),
        "pixmo_pointing_explanations": lambda: pixmo_point_explanations(f("pixmo-point-explanations"),
                                                                        image_dir, split),
        "pixmo_count": lambda: pixmo_count(f("pixmo-count", split), image_dir, False, split == "train"),
        "pixmo_count_counting": lambda: pixmo_count(f("pixmo-count", split), image_dir, True, split == "train"),
        "pixmo_clocks": lambda: pixmo_clocks(f("pixmo-clocks", split), image_dir),
    }
    if name not in builders:
        raise KeyError(f"unknown PixMo dataset {name!r}; known: {sorted(builders)} and "
                       f"{['pixmo_docs_' + t for t in DOC_TYPES]}")
    return builders[name]()
