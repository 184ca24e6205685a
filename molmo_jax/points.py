"""Points in generated text -> pixel coordinates of the original image, and a drawing of them.

Molmo answers pointing and counting questions with markup such as `<point x="45.5" y="60.2" alt="cup">cup
</point>` or `<points x1=".." y1=".." x2=".." ...>`: coordinates are percentages of the image the model saw.
`pixel_points` turns them into pixels of the original image (`formatting.extract_points`, minus the offset
of the original inside a letterboxed view); `draw` marks them on the image with numbered circles.
"""
from __future__ import annotations

import numpy as np
from etils import epath
from PIL import Image, ImageDraw, ImageFont

from molmo_jax import formatting

FILL = (255, 40, 40)
OUTLINE = (255, 255, 255)


def pixel_points(text: str, view_size: tuple[int, int], offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """float64[n, 2] (x, y) pixels in the original image of every point in `text` (n may be 0).

    view_size: (width, height) of the image the model saw; offset: (left, top) of the original image inside
    that view (non-zero only when it was letterboxed, see `api.letterbox`).
    """
    return formatting.extract_points(text, *view_size) - np.asarray(offset, np.float64)


def draw(image: np.ndarray | Image.Image, points: np.ndarray, labels: list[str] | None = None) -> Image.Image:
    """A copy of `image` (uint8[H, W, 3] or PIL) with a circle and a label (default 1, 2, ...) at each point."""
    out = (image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))).convert("RGB")
    canvas = ImageDraw.Draw(out)
    radius = max(2, round(0.012 * max(out.size)))
    font = ImageFont.load_default(size=max(10, 3 * radius))
    labels = labels or [str(i + 1) for i in range(len(points))]
    for (x, y), label in zip(np.asarray(points, np.float64).reshape(-1, 2), labels):
        canvas.ellipse((x - radius, y - radius, x + radius, y + radius), fill=FILL, outline=OUTLINE,
                       width=max(1, radius // 3))
        canvas.text((x + radius + 1, y - radius), label, fill=FILL, font=font, stroke_width=max(1, radius // 4),
                    stroke_fill=OUTLINE)
    return out


def save_drawing(image: np.ndarray | Image.Image, points: np.ndarray, path: epath.PathLike,
                 labels: list[str] | None = None):
    """Writes `draw(image, points, labels)` as a PNG (local or gs://)."""
    with epath.Path(path).open("wb") as f:
        draw(image, points, labels).save(f, format="PNG")
