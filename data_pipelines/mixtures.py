"""grain training pipelines: stage-1 captioning and the stage-2 mixture -> fixed-shape numpy batches.

    tok = load_tokenizer(path, cfg.llm.vocab_size)
    opts = PipelineOptions(batch_size=256, seq_len=2304, seed=50189,
                           process_index=jax.process_index(), process_count=jax.process_count())
    ds = stage2({name: pixmo.load(name, data_dir, image_dir) for name in names}, cfg, tok, opts)
    it = iter(ds)
    batch = next(it)                       # dict of numpy arrays, see `collate`
    state = it.get_state(); it.set_state(state)   # exact resume (JSON-able dict)
    it.skipped                             # {"bad_image": 3, "too_long": 1, ...} since the start
    it.drops                               # {"pixmo_count/points_outside_image": 2, ...} per dataset

What the official recipe does (`olmo/data/` loaders, `launch_scripts/train_multitask_model.py`) and this:
  * each dataset is walked through a fresh permutation every epoch; example rng =
    RandomState(seed + index + len * epoch) drives both the reader and the formatter (official
    `DeterministicDataset`); multi-conversation examples have their conversations shuffled (stage 2);
  * datasets are mixed with rates from `mixture_rates` (groups with rates, sqrt-size weights inside a
    group). The official loader draws each example's dataset i.i.d.; grain's `MapDataset.mix` interleaves
    deterministically with the same rates (exact in every window, so no sampling noise) and keeps the
    pipeline random-access, i.e. parallel over threads and cheap to checkpoint;
  * host h of H takes global examples h, h + H, h + 2H, ... (disjoint, together complete) and makes
    batches of batch_size / H;
  * an example that cannot be used (undecodable image, empty annotation, too long, an image that matches
    none of its rows' sha256, pixel points outside the image, malformed row) is skipped and counted per
    dataset and reason in `iterator.drops` ("<dataset>/<reason>" -> examples; `iterator.skipped` sums
    them per reason), part of the checkpointed state and of the trainer's metrics; the same table holds
    the hub rows each reader dropped ("<dataset>/reader/<reason>" -> rows, `pixmo.TableSource.drops`);
  * not official, off by default: `pack_crops` packs several examples into each row (sequence packing;
    attention and positions stay per example, so the loss is that of the unpacked examples).

Batches (B = batch_size / process_count, S = seq_len, T = max crops incl. the global view (pack_crops
when packing), P = patches per crop, D = 3 * patch_size**2, K = pooled tokens per crop), padding -1:
  input_ids int64[B, S], labels int64[B, S], loss_masks float32[B, S], position_ids int64[B, S],
  subsegment_ids int64[B, S], images float32[B, T, P, D], image_masks float32[B, T, P] (models with an
  image padding embedding), image_input_idx int32[B, T, K].
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from data_pipelines import packing, pixmo, pixmo_checks
from molmo_jax import config as config_lib
from molmo_jax import preprocess
from molmo_jax.tokenizer import MolmoTokenizer


@dataclasses.dataclass(frozen=True)
class Group:
    """Datasets sharing one mixture rate; each weighted by sqrt(size), size = len or the override."""
    name: str
    rate: float
    datasets: Mapping[str, int | None]


# train_multitask_model.py, mixture "3.2-synthetic" (academic datasets: `academic.load`).
STAGE2_MIXTURE = (
    Group("demo", 0.15, {"pixmo_ask_model_anything": None, "pixmo_cap": 50_000, "pixmo_cap_qa": None,
                         "pixmo_pointing_explanations": None}),
    Group("aux", 0.50, {
        "coco_2014_vqa_multi": None, "text_vqa": None, "okvqa": None, "chart_qa_weighted": None, "doc_qa": None,
        "info_qa": None, "ai2_diagram_v2_mix_transparent": None, "a_okvqa_mc": None, "a_okvqa_da": None,
        "android_control": None, "science_qa_img": None, "tabwmp_da": None, "st_qa": None, "tally_qa": None,
        "pixmo_docs_charts": None, "pixmo_docs_tables": None, "pixmo_docs_other": None,
        "pixmo_docs_diagrams": None, "dv_qa": 10_000, "figure_qa": 10_000, "plot_qa": 20_000}),
    Group("pointing", 0.35, {"pixmo_points": None, "pixmo_count": None, "pixmo_points_high_freq": None,
                             "pixmo_points_counting": None, "pixmo_points_high_freq_counting": None,
                             "pixmo_count_counting": None}),
)

# The same recipe over `synthetic.sources()` (PixMo-lite), for tiny models.
SYNTHETIC_MIXTURE = (
    Group("demo", 0.15, {"synthetic_cap": None, "synthetic_cap_qa": None}),
    Group("aux", 0.50, {"synthetic_clocks": None, "synthetic_docs_charts": None, "synthetic_docs_tables": None}),
    Group("pointing", 0.35, {"synthetic_points": None, "synthetic_points_counting": None, "synthetic_count": None}),
)

EPOCH_SHUFFLE_SALT = 1771  # official: permutation seed of epoch e = seed + e * 1771

SKIP_REASONS = ("bad_image", "empty_annotation", "too_long", "error")  # always in `skipped`; readers add more


def mixture_rates(sizes: Mapping[str, int], groups: Sequence[Group] = STAGE2_MIXTURE) -> dict[str, float]:
    """Sampling rate of each dataset of `sizes` (name -> len), as the official root-size mixture.

    Inside a group, weight = sqrt(size override or len) normalised over the group's available datasets,
    times the group rate; then everything is renormalised. Datasets of the table missing from `sizes` are
    left out (their share goes to the others); a name of `sizes` that is in no group raises KeyError.
    """
    known = {name for g in groups for name in g.datasets}
    unknown = sorted(set(sizes) - known)
    if unknown:
        raise KeyError(f"datasets {unknown} are in no mixture group; groups hold {sorted(known)}")
    rates = {}
    for g in groups:
        weights = {n: math.sqrt(size if size is not None else sizes[n]) for n, size in g.datasets.items()
                   if n in sizes}
        total = sum(weights.values())
        rates.update({n: w / total * g.rate for n, w in weights.items()})
    total = sum(rates.values())
    if not total:
        raise ValueError("no dataset of the mixture is available")
    return {n: rates[n] / total for n in sorted(rates)}


# ------------------------------------------------------------------------------------------------
# Examples


@dataclasses.dataclass(frozen=True)
class Skipped:
    """Placeholder for an example of `dataset` that could not be used; `SkipAndBatch` drops and counts it."""
    dataset: str
    reason: str


def _skip_reason(error: Exception) -> str:
    if isinstance(error, pixmo_checks.BadExample):
        return error.reason
    if isinstance(error, (preprocess.ImageError, OSError)):
        return "bad_image"
    if isinstance(error, preprocess.SequenceLengthError):
        return "too_long"
    return "error"


def _check_answers(messages) -> None:
    """Raises EmptyAnnotationError without conversations or with a blank assistant message."""
    convs = [messages] if messages and isinstance(messages[0], str) else messages
    if not convs or any(len(c) < 2 or not all(m.strip() for m in c[1::2]) for c in convs):
        raise pixmo.EmptyAnnotationError("no conversation or an empty answer")


@dataclasses.dataclass
class ExampleProcessor:
    """Formatter example dict -> model arrays (the official training `Preprocessor.__call__`).

    The image is loaded once and given to the formatter (pixel points need its size); multi-conversation
    examples are shuffled when `shuffle_messages`; every output has `subsegment_ids` (all ones for a
    single conversation, which attends exactly as without them) so batches keep one structure.
    """
    preprocessor: preprocess.Preprocessor
    shuffle_messages: bool

    def __call__(self, example: Mapping[str, Any], rng: np.random.RandomState) -> dict[str, np.ndarray]:
        image = self.preprocessor.load(example["image"])
        messages, _ = self.preprocessor.formatter(dict(example, image=image), True, False, rng)
        _check_answers(messages)
        if self.shuffle_messages and isinstance(messages[0], list):
            rng.shuffle(messages)
        out = self.preprocessor.encode([image], messages, example.get("weight"))
        out.setdefault("subsegment_ids", np.ones(len(out["input_tokens"]), np.int32))
        return out


@dataclasses.dataclass(frozen=True)
class _EpochIndex:
    """Position k of an endlessly repeated dataset of n examples -> (example index, epoch)."""
    n: int

    def __call__(self, k: int, index: int) -> tuple[int, int]:
        return int(index), k // self.n


@dataclasses.dataclass(frozen=True)
class _Load:
    """(index, epoch) -> processed example, or `Skipped` if the source or the processor fails."""
    name: str
    source: pixmo.Source
    process: Callable[[Mapping[str, Any], np.random.RandomState], Any]
    seed: int

    def __call__(self, item: tuple[int, int]):
        index, epoch = item
        rng = np.random.RandomState((self.seed + index + len(self.source) * epoch) % 2**32)
        try:
            return self.process(self.source.get(index, rng), rng)
        except Exception as e:  # noqa: BLE001 -- a bad example must never stop training
            reason = _skip_reason(e)
            if reason == "error":
                logging.warning("skipping example %d of %s: %s: %s", index, self.name, type(e).__name__, e)
            return Skipped(self.name, reason)


def source_stream(name: str, source: pixmo.Source, process, seed: int) -> grain.MapDataset:
    """Endless random-access stream of one dataset: a new permutation every epoch, then `process`."""
    drops = getattr(source, "drops", None)
    if drops and any(drops.values()):
        logging.info("%s: %d examples; the reader dropped %s", name, len(source),
                     ", ".join(f"{n} rows {r}" for r, n in sorted(drops.items()) if n))
    if len(source) == 0:
        raise ValueError(f"dataset {name} is empty (reader drops: {drops or 'none'})")
    return (grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
            .map_with_index(_EpochIndex(len(source))).map(_Load(name, source, process, seed)))


def mixture(sources: Mapping[str, pixmo.Source], rates: Mapping[str, float] | None, process,
            seed: int) -> grain.MapDataset:
    """The global example stream: each source's stream, mixed with `rates` (sorted by name)."""
    names = sorted(sources)
    streams = [source_stream(n, sources[n], process, seed + i * EPOCH_SHUFFLE_SALT) for i, n in enumerate(names)]
    if len(streams) == 1:
        return streams[0]
    if rates is None or sorted(rates) != names:
        raise ValueError(f"rates {None if rates is None else sorted(rates)} do not match the sources {names}")
    return grain.MapDataset.mix(streams, [rates[n] for n in names])


# ------------------------------------------------------------------------------------------------
# Batching


@dataclasses.dataclass(frozen=True)
class RowBudget:
    """What one batch row may hold: up to `examples` examples with at most `tokens` tokens and `crops`
    crops in all (examples > 1: sequence packing). An empty row takes any example; the collator then cuts
    what is too long, as the official one does."""
    tokens: int
    crops: int
    examples: int = 1

    def fits(self, row: Sequence[Mapping[str, np.ndarray]], example: Mapping[str, np.ndarray]) -> bool:
        if not row:
            return True
        return (len(row) < self.examples
                and sum(map(_tokens, row)) + _tokens(example) <= self.tokens
                and sum(map(_crops, row)) + _crops(example) <= self.crops)


def _tokens(example: Mapping[str, np.ndarray]) -> int:
    return len(example["input_tokens"])


def _crops(example: Mapping[str, np.ndarray]) -> int:
    return len(example["images"]) if "images" in example else 0


def reader_drops(sources: Mapping[str, pixmo.Source]) -> dict[str, int]:
    """"<dataset>/reader/<reason>" -> hub rows its reader dropped (sources with a `drops` table)."""
    return {f"{name}/reader/{reason}": n for name, source in sorted(sources.items())
            for reason, n in sorted(getattr(source, "drops", {}).items()) if n}


class _BatchIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, rows: int, budget: RowBudget, batch_fn,
                 reader: Mapping[str, int]):
        super().__init__(parent)
        self._rows, self._budget, self._batch_fn, self._reader = rows, budget, batch_fn, dict(reader)
        self.drops: dict[str, int] = dict(reader)  # "<dataset>/<reason>" -> examples skipped, + reader rows
        self._pending = None  # (example, resume state) read but left for the next batch

    @property
    def skipped(self) -> dict[str, int]:
        """Examples skipped per reason, over all datasets (the readers' row drops left out)."""
        out = dict.fromkeys(SKIP_REASONS, 0)
        for key, n in self.drops.items():
            if key in self._reader:
                continue
            reason = key.rsplit("/", 1)[-1]
            out[reason] = out.get(reason, 0) + n
        return out

    def _state(self) -> dict[str, Any]:
        return {"parent": self._parent.get_state(), "drops": dict(self.drops)}

    def _read(self) -> tuple[Mapping[str, np.ndarray], dict[str, Any] | None]:
        """The next usable example and (when packing) the state from which it is read again."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            return pending
        while True:
            resume = self._state() if self._budget.examples > 1 else None
            item = next(self._parent)
            if not isinstance(item, Skipped):
                return item, resume
            key = f"{item.dataset}/{item.reason}"
            self.drops[key] = self.drops.get(key, 0) + 1

    def __next__(self):
        rows: list[list] = [[] for _ in range(self._rows)]
        while not all(len(row) == self._budget.examples for row in rows):
            example, resume = self._read()
            row = next((r for r in rows if self._budget.fits(r, example)), None)
            if row is None:  # first fit failed: the batch is done and this example opens the next one
                self._pending = example, resume
                break
            row.append(example)
        return self._batch_fn(rows)

    def get_state(self) -> dict[str, Any]:
        return self._pending[1] if self._pending is not None else self._state()

    def set_state(self, state: Mapping[str, Any]) -> None:
        self._parent.set_state(state["parent"])
        self.drops = {**self._reader, **state["drops"]}
        self._pending = None


class SkipAndBatch(grain.IterDataset):
    """Drops `Skipped` items (counting them in `iterator.drops`, which starts from `reader`, the readers'
    drop table) and fills `rows` rows per batch with the rest, first fit under `budget`; `batch_fn` turns
    the rows (lists of examples) into a batch."""

    def __init__(self, parent: grain.IterDataset, rows: int, budget: RowBudget, batch_fn: Callable[[list], Any],
                 reader: Mapping[str, int] | None = None):
        super().__init__(parent)
        self._rows, self._budget, self._batch_fn, self._reader = rows, budget, batch_fn, dict(reader or {})

    def __iter__(self) -> _BatchIterator:
        return _BatchIterator(self._parent.__iter__(), self._rows, self._budget, self._batch_fn, self._reader)


@dataclasses.dataclass(frozen=True)
class Collate:
    """Rows of examples -> one batch: each row `packing.pack`ed, then `preprocess.collate`d to fixed
    `seq_len` and `max_crops` (static shapes for jit)."""
    seq_len: int
    max_crops: int

    def __call__(self, rows: list[list[dict[str, np.ndarray]]]) -> dict[str, np.ndarray]:
        return preprocess.collate([packing.pack(row) for row in rows], seq_len=self.seq_len,
                                  max_crops=self.max_crops)


# ------------------------------------------------------------------------------------------------
# Pipelines


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    """batch_size: global batch in rows (divisible by process_count); seq_len: tokens per row (image
    included); pack_crops: 0 = one example per row (official), else examples are packed into the rows
    (first fit, `packing.pack`) up to seq_len tokens and pack_crops crops per row; too_long: "skip"
    longer examples or "truncate" them (the official collator cuts); num_workers: grain worker processes
    (0: threads only, best on few cores); num_threads: grain read threads per process; seed: data seed
    (the recipes set the official one of each stage)."""
    batch_size: int
    seq_len: int
    seed: int
    process_index: int = 0
    process_count: int = 1
    too_long: str = "skip"
    pack_crops: int = 0
    num_workers: int = 0
    num_threads: int = 2
    prefetch_buffer_size: int = 8

    def __post_init__(self):
        if self.batch_size % self.process_count:
            raise ValueError(f"batch_size={self.batch_size} is not divisible by process_count={self.process_count}")
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index={self.process_index} not in [0, {self.process_count})")
        if self.too_long not in ("skip", "truncate"):
            raise ValueError(f"too_long={self.too_long!r}; allowed 'skip', 'truncate'")
        if self.pack_crops < 0:
            raise ValueError(f"pack_crops={self.pack_crops} must be >= 0 (0: no packing)")


def pipeline(examples: grain.MapDataset, cfg, options: PipelineOptions,
             reader: Mapping[str, int] | None = None) -> grain.IterDataset:
    """Global example stream -> this host's slice -> threads / workers -> skip, (pack) and batch;
    `reader`: the readers' drop table (`reader_drops`), the start of the iterator's `drops`."""
    ds = examples[options.process_index::options.process_count]
    ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=options.num_threads,
                                              prefetch_buffer_size=options.prefetch_buffer_size))
    if options.num_workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.num_workers))
    crops = config_lib.max_total_crops(cfg)
    if options.pack_crops and options.pack_crops < crops:
        raise ValueError(f"pack_crops={options.pack_crops} is less than the {crops} crops one example may have")
    budget = (RowBudget(options.seq_len, options.pack_crops, examples=options.seq_len) if options.pack_crops
              else RowBudget(options.seq_len, crops))
    return SkipAndBatch(ds, options.batch_size // options.process_count, budget,
                        Collate(options.seq_len, budget.crops), reader)


def example_processor(cfg, tokenizer: MolmoTokenizer, options: PipelineOptions,
                      shuffle_messages: bool) -> ExampleProcessor:
    max_len = options.seq_len if options.too_long == "skip" else None
    return ExampleProcessor(preprocess.Preprocessor(cfg, tokenizer, max_sequence_length=max_len), shuffle_messages)


def stage1(source: pixmo.Source, cfg, tokenizer: MolmoTokenizer, options: PipelineOptions) -> grain.IterDataset:
    """Stage-1 captioning: one dataset (PixMo-Cap, mode transcript_and_caption), conversations in order,
    formatted as `cfg.formatting` says (the stage-1 recipe's: `molmo_jax.recipes.common.STAGE1_FORMATTING`)."""
    process = example_processor(cfg, tokenizer, options, shuffle_messages=False)
    return pipeline(source_stream("stage1", source, process, options.seed), cfg, options,
                    reader_drops({"stage1": source}))


def stage2(sources: Mapping[str, pixmo.Source], cfg, tokenizer: MolmoTokenizer, options: PipelineOptions,
           groups: Sequence[Group] = STAGE2_MIXTURE) -> grain.IterDataset:
    """Stage-2 multitask mixture of `sources` (name -> source) with `mixture_rates(groups)`, formatted as
    `cfg.formatting` says."""
    rates = mixture_rates({n: len(s) for n, s in sources.items()}, groups)
    logging.info("mixture rates: %s", ", ".join(f"{n} {100 * r:.2f}%" for n, r in rates.items()))
    process = example_processor(cfg, tokenizer, options, shuffle_messages=True)
    return pipeline(mixture(sources, rates, process, options.seed), cfg, options, reader_drops(sources))
