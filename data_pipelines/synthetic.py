"""PixMo-lite: an offline synthetic stand-in for PixMo, deterministic by seed.

Small images (default 112 px) of things a tiny model learns in minutes, with few classes, short answers
and a small vocabulary:

  clocks           analog clock faces, "What time is being shown?" -> "3:25"          (PixMo-Clocks)
  points           coloured circles / squares / triangles, point to each shape kind   (PixMo-Points)
  points_counting  the same scenes, "How many circles?" -> points + count             (PixMo-Points)
  count            one shape kind per example, points in pixels                       (PixMo-Count)
  cap / cap_with_transcripts  "There are 2 red circles and 1 blue square." + transcripts (PixMo-Cap)
  cap_qa           "How many circles are there?" -> "2", "What color is the square?"  (PixMo-CapQA)
  docs_charts      bar charts: "What is the value of B?" -> "7"                       (PixMo-Docs)
  docs_tables      two-column tables, same questions                                  (PixMo-Docs)

Each task first generates the rows of its real dataset's hub schema (`pixmo.SCHEMAS`, e.g. points in
percent as list<struct<x, y>>, count points in pixels as struct<x: list, y: list>) and then runs the same
row -> example converter as the real reader (`pixmo.*_example`), so a `SyntheticSource` yields exactly the
example dicts `pixmo.TableSource` yields, with the image as a uint8 [H, W, 3] array.

Example `i` of a task depends only on (seed, task, i): `source.get(i, rng)` is random access; `rng` only
drives the converter's own choices (e.g. which transcript), as in the official readers.
"""
from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from data_pipelines import pixmo

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 220), "yellow": (230, 190, 20)}
BAR_LABELS = "ABCD"
BACKGROUND = (245, 245, 245)


@dataclasses.dataclass(frozen=True)
class SceneStyle:
    """How scenes are drawn: shape radii uniform in `radius` (fractions of the image side) and 0..max_per_kind
    shapes of each kind. Shapes that find no free place in 200 tries are left out (a crowded scene of big
    shapes has fewer objects than drawn counts; its rows and masks describe the shapes placed).

    `kind_colors`: all shapes of a kind share one colour, each kind of the scene another (random per scene),
    and the pointing and counting labels name it ("red circles"), so that finding the asked shapes needs
    the colour, not the outline; else every shape has a random colour and labels name the kind only."""
    radius: tuple[float, float] = (1 / 16, 1 / 11)
    max_per_kind: int = 4
    kind_colors: bool = False

    def __post_init__(self):
        lo, hi = self.radius
        if not 0 < lo <= hi < 0.5 or self.max_per_kind < 1:
            raise ValueError(f"scene style {self}: radius needs 0 < low <= high < 0.5 (fractions of the image "
                             "side) and max_per_kind >= 1")


@dataclasses.dataclass(frozen=True)
class Shape:
    """One object of a scene: kind, colour name, centre (x, y) and radius in pixels."""
    kind: str
    color: str
    x: float
    y: float
    r: float


def task_rng(seed: int, task: str, index: int) -> np.random.Generator:
    """The generator of example `index` of `task`: independent of every other example."""
    return np.random.default_rng([seed, zlib.crc32(task.encode()), index])


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(8, size))


def _canvas(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    image = Image.new("RGB", (size, size), BACKGROUND)
    return image, ImageDraw.Draw(image)


# ------------------------------------------------------------------------------------------------
# Drawing


def random_scene(rng: np.random.Generator, size: int, style: SceneStyle = SceneStyle(),
                 max_tries: int = 200) -> list[Shape]:
    """Non-overlapping shapes inside the image (their boxes 2 px apart): 0..style.max_per_kind of each kind
    (at least one shape), radii in style.radius, random colours (one per kind with style.kind_colors)."""
    counts = rng.integers(0, style.max_per_kind + 1, size=len(SHAPES))
    if counts.sum() == 0:
        counts[rng.integers(len(SHAPES))] = 1
    palette = rng.permutation(list(COLORS))[:len(SHAPES)] if style.kind_colors else None
    shapes: list[Shape] = []
    for k, (kind, n) in enumerate(zip(SHAPES, counts)):
        for _ in range(n):
            for _ in range(max_tries):
                r = rng.uniform(*(f * size for f in style.radius))
                x, y = rng.uniform(r + 1, size - r - 1, size=2)
                # Each shape lies in its box of half-side r: boxes 2 px apart keep square and triangle
                # corners (r * sqrt(2) from the centre) off their neighbours.
                if all(max(abs(x - s.x), abs(y - s.y)) > r + s.r + 2 for s in shapes):
                    color = palette[k] if style.kind_colors else rng.choice(list(COLORS))
                    shapes.append(Shape(kind, str(color), float(x), float(y), float(r)))
                    break
    return shapes


def draw_scene(shapes: list[Shape], size: int) -> np.ndarray:
    image, draw = _canvas(size)
    for s in shapes:
        box = (s.x - s.r, s.y - s.r, s.x + s.r, s.y + s.r)
        fill = COLORS[s.color]
        if s.kind == "circle":
            draw.ellipse(box, fill=fill)
        elif s.kind == "square":
            draw.rectangle(box, fill=fill)
        else:
            draw.polygon([(s.x, s.y - s.r), (s.x - s.r, s.y + s.r), (s.x + s.r, s.y + s.r)], fill=fill)
    return np.asarray(image)


def draw_clock(hour: int, minute: int, size: int) -> np.ndarray:
    """A plain analog clock: face, 12 ticks, short thick hour hand, long thin minute hand."""
    image, draw = _canvas(size)
    c, radius = size / 2, size * 0.45
    draw.ellipse((c - radius, c - radius, c + radius, c + radius), fill=(255, 255, 255), outline=(0, 0, 0),
                 width=max(1, size // 40))

    def at(angle_deg: float, length: float) -> tuple[float, float]:
        a = np.deg2rad(angle_deg)
        return c + length * np.sin(a), c - length * np.cos(a)

    for k in range(12):
        draw.line([at(30 * k, radius * 0.82), at(30 * k, radius * 0.95)], fill=(0, 0, 0), width=max(1, size // 50))
    draw.line([(c, c), at(30 * (hour % 12) + minute / 2, radius * 0.5)], fill=(0, 0, 0), width=max(2, size // 18))
    draw.line([(c, c), at(6 * minute, radius * 0.85)], fill=(0, 0, 0), width=max(1, size // 45))
    return np.asarray(image)


def draw_bar_chart(values: list[int], size: int) -> np.ndarray:
    """Bars labelled A, B, ... with heights value / 10 of the plot and the values above them."""
    image, draw = _canvas(size)
    font = _font(size // 9)
    n, base, top = len(values), size * 0.85, size * 0.1
    width = size * 0.8 / n
    for k, v in enumerate(values):
        x0 = size * 0.1 + k * width
        y0 = base - (base - top) * v / 10
        draw.rectangle((x0 + width * 0.15, y0, x0 + width * 0.85, base), fill=(70, 110, 200))
        draw.text((x0 + width / 2, base + 2), BAR_LABELS[k], fill=(0, 0, 0), font=font, anchor="mt")
        draw.text((x0 + width / 2, y0 - 2), str(v), fill=(0, 0, 0), font=font, anchor="mb")
    draw.line([(size * 0.08, base), (size * 0.92, base)], fill=(0, 0, 0), width=1)
    return np.asarray(image)


def draw_table(values: list[int], size: int) -> np.ndarray:
    """A two-column grid: a header row (Name, Value), then one row per label."""
    image, draw = _canvas(size)
    font = _font(size // 9)
    rows = [("Name", "Value")] + [(BAR_LABELS[k], str(v)) for k, v in enumerate(values)]
    h = size * 0.9 / len(rows)
    for r, cells in enumerate(rows):
        for col, text in enumerate(cells):
            x0, y0 = size * (0.05 + 0.45 * col), size * 0.05 + r * h
            draw.rectangle((x0, y0, x0 + size * 0.45, y0 + h), outline=(0, 0, 0), width=1)
            draw.text((x0 + size * 0.225, y0 + h / 2), text, fill=(0, 0, 0), font=font, anchor="mm")
    return np.asarray(image)


# ------------------------------------------------------------------------------------------------
# Rows in the hub schemas (column -> list over the rows of one example)


def _plural(kind: str, n: int) -> str:
    return kind if n == 1 else kind + "s"


def _groups(shapes: list[Shape]) -> list[tuple[str, str, int]]:
    """(color, kind, count) of the scene, ordered by the leftmost shape of each group."""
    order: dict[tuple[str, str], list[float]] = {}
    for s in sorted(shapes, key=lambda s: s.x):
        order.setdefault((s.color, s.kind), []).append(s.x)
    return [(color, kind, len(xs)) for (color, kind), xs in order.items()]


def describe(shapes: list[Shape]) -> str:
    """"There are 2 red circles and 1 blue square." (groups left to right)."""
    groups = _groups(shapes)
    parts = [f"{n} {color} {_plural(kind, n)}" for color, kind, n in groups]
    listing = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    verb = "is" if len(groups) == 1 and groups[0][2] == 1 else "are"
    return f"There {verb} {listing}."


def transcripts(shapes: list[Shape]) -> list[str]:
    """Spoken-style variants of `describe` (lower case, no punctuation)."""
    parts = [f"{n} {color} {_plural(kind, n)}" for color, kind, n in _groups(shapes)]
    return ["i see " + " and ".join(parts), "so there are " + " and ".join(reversed(parts))]


def scene(rng: np.random.Generator, size: int, style: SceneStyle) -> tuple[np.ndarray, list[Shape]]:
    """A random scene and its picture."""
    shapes = random_scene(rng, size, style)
    return draw_scene(shapes, size), shapes


def label(kind: str, shapes: list[Shape], style: SceneStyle, rng: np.random.Generator) -> str:
    """The pointing / counting label of `kind` in a scene: "circles", or with style.kind_colors "red circles",
    the colour of the scene's circles (for an absent kind a colour no shape of the scene has, drawn by `rng`)."""
    if not style.kind_colors:
        return kind + "s"
    colors = {s.color for s in shapes if s.kind == kind}
    color = colors.pop() if colors else str(rng.choice(sorted(set(COLORS) - {s.color for s in shapes})))
    return f"{color} {kind}s"


def points_rows(shapes: list[Shape], size: int, method: str, style: SceneStyle = SceneStyle(),
                rng: np.random.Generator | None = None) -> dict[str, list]:
    """pixmo-points rows: one per shape kind (absent kinds too: "There are none."), points in percent; labels
    as `label` gives them (`rng` is needed with style.kind_colors)."""
    rows: dict[str, list] = {"label": [], "points": [], "count": [], "collection_method": []}
    for kind in SHAPES:
        pts = [dict(x=100 * s.x / size, y=100 * s.y / size) for s in shapes if s.kind == kind]
        rows["label"].append(label(kind, shapes, style, rng))
        rows["points"].append(pts)
        rows["count"].append(len(pts))
        rows["collection_method"].append(method)
    return rows


def count_rows(shapes: list[Shape], rng: np.random.Generator, style: SceneStyle = SceneStyle()) -> dict[str, list]:
    """One pixmo-count row: a present shape kind (its `label`), points in pixels as a struct of x and y lists."""
    kind = str(rng.choice(sorted({s.kind for s in shapes})))
    pts = [s for s in shapes if s.kind == kind]
    return {"label": [label(kind, shapes, style, rng)], "count": [len(pts)],
            "points": [{"x": [s.x for s in pts], "y": [s.y for s in pts]}]}


def cap_qa_rows(shapes: list[Shape], rng: np.random.Generator) -> dict[str, list]:
    """pixmo-cap-qa rows: one conversation per row (`messages`), a count and (when unique) a colour question."""
    kind = str(rng.choice(SHAPES))
    n = sum(s.kind == kind for s in shapes)
    conversations = [[f"How many {kind}s are there?", str(n)]]
    colors = {s.kind: {t.color for t in shapes if t.kind == s.kind} for s in shapes}
    single = sorted(k for k, c in colors.items() if len(c) == 1)
    if single:
        k = str(rng.choice(single))
        conversations.append([f"What color is the {k}?" if sum(s.kind == k for s in shapes) == 1
                              else f"What color are the {k}s?", next(iter(colors[k]))])
    return {"messages": conversations}


def docs_rows(values: list[int], index: int, rng: np.random.Generator) -> dict[str, list]:
    """pixmo-docs row: image_id and a struct of question / answer lists."""
    k = int(rng.integers(len(values)))
    questions = [f"What is the value of {BAR_LABELS[k]}?", "Which is the largest?"]
    answers = [str(values[k]), BAR_LABELS[int(np.argmax(values))]]
    return {"image_id": [f"synthetic-{index}"], "questions": [{"question": questions, "answer": answers}]}


def _distinct_values(rng: np.random.Generator) -> list[int]:
    n = int(rng.integers(3, len(BAR_LABELS) + 1))
    return [int(v) for v in rng.choice(np.arange(1, 10), size=n, replace=False)]


# ------------------------------------------------------------------------------------------------
# Tasks: (rng, size, index, scene style) -> (image, rows) and the real reader's converter


def _clock(rng, size, index, style):
    hour, minute = int(rng.integers(1, 13)), 5 * int(rng.integers(12))
    rows = {"example_id": [f"synthetic-{index}"], "watchface_id": ["synthetic"], "watchface_name": ["plain"],
            "watch_time": [f"{hour:02d}:{minute:02d}:00"], "time_format": ["12"], "shows_seconds": [False],
            "hour_visible": [1], "minute_visible": [1], "second_visible": [0], "text": [f"{hour}:{minute:02d}"]}
    return draw_clock(hour, minute, size), rows


def _points(method):
    def make(rng, size, index, style):
        image, shapes = scene(rng, size, style)
        return image, points_rows(shapes, size, method, style, rng)
    return make


def _count(rng, size, index, style):
    image, shapes = scene(rng, size, style)
    return image, count_rows(shapes, rng, style)


def _cap(rng, size, index, style):
    image, shapes = scene(rng, size, style)
    return image, {"caption": [describe(shapes)], "transcripts": [transcripts(shapes)]}


def _cap_qa(rng, size, index, style):
    image, shapes = scene(rng, size, style)
    return image, cap_qa_rows(shapes, rng)


def _docs(draw):
    def make(rng, size, index, style):
        values = _distinct_values(rng)
        return draw(values, size), docs_rows(values, index, rng)
    return make


@dataclasses.dataclass(frozen=True)
class Task:
    make: Callable[[np.random.Generator, int, int, SceneStyle], tuple[np.ndarray, dict[str, list]]]
    convert: Callable[[dict[str, list], Any], dict[str, Any]]
    schema: str  # the `pixmo.SCHEMAS` entry its rows follow


TASKS: dict[str, Task] = {
    "clocks": Task(_clock, pixmo.clocks_example, "pixmo-clocks"),
    "points": Task(_points("pointing"), functools.partial(pixmo.points_example, counting=False), "pixmo-points"),
    "points_counting": Task(_points("counting"), functools.partial(pixmo.points_example, counting=True),
                            "pixmo-points"),
    "count": Task(_count, functools.partial(pixmo.count_example, counting=True), "pixmo-count"),
    "cap": Task(_cap, functools.partial(pixmo.cap_example, mode="captions"), "pixmo-cap"),
    "cap_with_transcripts": Task(_cap, functools.partial(pixmo.cap_example, mode="transcript_and_caption"),
                                 "pixmo-cap"),
    "cap_qa": Task(_cap_qa, pixmo.cap_qa_example, "pixmo-cap-qa"),
    "docs_charts": Task(_docs(draw_bar_chart), functools.partial(pixmo.docs_example, doc_type="charts"),
                        "pixmo-docs"),
    "docs_tables": Task(_docs(draw_table), functools.partial(pixmo.docs_example, doc_type="tables"),
                        "pixmo-docs"),
}


STAGE1_TASK = "cap_with_transcripts"  # PixMo-Cap as stage 1 reads it
STAGE2_TASKS = tuple(t for t in TASKS if t != STAGE1_TASK)  # the tasks of `mixtures.SYNTHETIC_MIXTURE`


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
    """`size` examples of one task (a `pixmo.Source`); images are `image_size` px squares, scenes drawn in
    `style`."""
    task: str
    size: int = 10_000
    seed: int = 0
    image_size: int = 112
    style: SceneStyle = SceneStyle()

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"unknown synthetic task {self.task!r}; known: {sorted(TASKS)}")

    def __len__(self) -> int:
        return self.size

    def rows(self, index: int) -> tuple[np.ndarray, dict[str, list]]:
        """The image and the hub-schema rows of example `index`."""
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        return TASKS[self.task].make(task_rng(self.seed, self.task, index), self.image_size, index, self.style)

    def get(self, index: int, rng) -> dict[str, Any]:
        image, rows = self.rows(index)
        example = TASKS[self.task].convert(rows, rng)
        example["image"] = image
        return example

    def object_masks(self, index: int, image: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]] | None:
        """(float[n, 2] centres (x, y), bool[size, size] masks) of the n shapes of scene example `index`,
        regenerated from its seed (scene tasks draw the scene first): the pixels the generator paints for
        each, the pointing eval's object masks. None when the scene does not redraw `image` exactly (a
        task without a scene)."""
        shapes = self._shapes(index)
        if not np.array_equal(draw_scene(shapes, self.image_size), image):
            return None
        centres = np.array([[s.x, s.y] for s in shapes]).reshape(-1, 2)
        return centres, [self._painted(s) for s in shapes]

    def kinds_at(self, index: int, points: np.ndarray) -> list[str | None]:
        """The kind of the scene shape painted under each point (float[n, 2] pixel (x, y)) of scene example
        `index`; None where a point falls on the background."""
        painted = [(s.kind, self._painted(s)) for s in self._shapes(index)]
        cells = np.clip(np.asarray(points, np.float64).reshape(-1, 2).astype(int), 0, self.image_size - 1)
        return [next((kind for kind, mask in painted if mask[y, x]), None) for x, y in cells]

    def _shapes(self, index: int) -> list[Shape]:
        return random_scene(task_rng(self.seed, self.task, index), self.image_size, self.style)

    def _painted(self, shape: Shape) -> np.ndarray:
        """bool[size, size]: the pixels the generator paints for `shape`."""
        return (draw_scene([shape], self.image_size) != BACKGROUND).any(-1)


def sources(size: int = 10_000, seed: int = 0, image_size: int = 112, tasks: tuple[str, ...] = STAGE2_TASKS,
            style: SceneStyle = SceneStyle()) -> dict[str, SyntheticSource]:
    """One source per task, named `synthetic_<task>` (the names `mixtures.SYNTHETIC_MIXTURE` uses)."""
    return {f"synthetic_{t}": SyntheticSource(t, size, seed, image_size, style) for t in tasks}


def config_style(data_cfg) -> SceneStyle:
    """The scene style of a config's data section (`data.pixmo_lite_shape_radius`, `pixmo_lite_max_per_kind`,
    `pixmo_lite_kind_colors`)."""
    return SceneStyle(tuple(data_cfg.pixmo_lite_shape_radius), data_cfg.pixmo_lite_max_per_kind,
                      data_cfg.pixmo_lite_kind_colors)


def config_sources(data_cfg, tasks: tuple[str, ...] = STAGE2_TASKS) -> dict[str, SyntheticSource]:
    """`sources` of `tasks` as a config's PixMo-lite data section draws them (`data.pixmo_lite_size`,
    `pixmo_lite_seed`, `pixmo_lite_image_size` and the scene style)."""
    return sources(data_cfg.pixmo_lite_size, data_cfg.pixmo_lite_seed, data_cfg.pixmo_lite_image_size, tasks,
                   config_style(data_cfg))


HELD_OUT_SEED = 12345  # generator seed of the held-out sets (training uses the recipes' `data.pixmo_lite_seed`)
HELD_OUT_SIZE = 1000  # examples of a held-out set


def held_out_source(name: str, image_size: int = 112, style: SceneStyle = SceneStyle()) -> SyntheticSource:
    """The held-out PixMo-lite set `name` ("synthetic_<task>") drawn at `image_size` px in `style`; the eval
    runner's tasks of that name draw it as a config says (`config_held_out_source`)."""
    task = name.removeprefix("synthetic_")
    if not name.startswith("synthetic_") or task not in TASKS:
        raise KeyError(f"unknown PixMo-lite set {name!r}; known: {sorted('synthetic_' + t for t in TASKS)}")
    return SyntheticSource(task, HELD_OUT_SIZE, HELD_OUT_SEED, image_size, style)


def config_held_out_source(name: str, data_cfg) -> SyntheticSource:
    """The held-out set `name` drawn as a config's PixMo-lite data is (its image size and scene style)."""
    return held_out_source(name, data_cfg.pixmo_lite_image_size, config_style(data_cfg))
