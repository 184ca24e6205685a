"""Image + text pre-processing identical to the official Molmo (allenai/molmo).

Reproduces `olmo/data/model_preprocessor.py` (load_image, resize_and_pad, select_tiling, the
overlap-and-resize-c2 crops, MultiModalPreprocessor.__call__) and `olmo/data/collator.py:MMCollator`
in vectorised numpy (the HF release's `image_preprocessing_molmo.py` runs the same algorithm); prompt
formatting is `molmo_jax.formatting`.

One call:

    pre = Preprocessor(cfg, load_tokenizer(path, cfg.llm.vocab_size))
    ex = pre(image, "Point to the cup.")                 # inference
    ex = pre(image, "Point to the cup.", answer="...")    # training format (loss on answer + EOS)
    batch = collate([ex, ...])

Shapes (T = crops incl. the global view, S = sequence length, P = patches per crop = 576,
D = pixels per patch = 14*14*3, K = pooled tokens per crop = 144):
  input_tokens int[S], target_tokens int[S], loss_masks float32[S], position_ids int64[S],
  images float32[T, P, D] (pixel order (dy, dx, c) in a patch), image_masks float32[T, P],
  image_input_idx int32[T, K] (sequence position receiving each pooled token, -100 = dropped).

Deliberate deviations from the official code (documented, none reached by single-image inputs of the
released models): `crop_mode="resize"` emits per-patch mask fractions (T=1, P) instead of the official
un-averaged (P, 196) booleans; with several images or an `<|image|>` placeholder the indices point at the
right block (the official code forgets the offset of earlier image blocks and shifts -100 entries).
Parity quirks that ARE reproduced: the image_masks off-by-one crop (`MultiModalPreprocessor.
image_to_patches_and_tokens` appends the row of -1 after the crops' masks, so the global view gets the
first crop's mask and the last crop -1) and the text-only
branch, which emits `input_tokens == target_tokens` without BOS and no position_ids.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import math
import os
import threading
import warnings
from typing import Any, Callable, Mapping, Sequence, Union

import numpy as np
from etils import epath
from PIL import Image, ImageFile, ImageOps

from molmo_jax import config as config_lib
from molmo_jax import formatting, paths
from molmo_jax.tokenizer import MolmoTokenizer

# PIL refuses images above 2 * Image.MAX_IMAGE_PIXELS by default; keep ours at that size so PIL's own
# check never fires first. The official code disables both (`MAX_IMAGE_PIXELS = None`).
DEFAULT_MAX_PIXELS = 178_956_970

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IGNORE_INDEX = -100  # image_input_idx entry of a pooled token that is dropped (overlap margin)
PAD = -1  # collation padding of ids, positions, masks and crops
IMAGE_AT_START_SUBSEGMENT = 10000

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class ImageError(ValueError):
    """An image input cannot be used; the message names the input and the problem."""


class SequenceLengthError(ValueError):
    """The tokenised example is longer than the model's sequence budget."""


# ------------------------------------------------------------------------------------------------
# Image loading


_TRUNCATED_LOCK = threading.Lock()


@contextlib.contextmanager
def _load_truncated_images():
    """Temporarily sets PIL's process-global LOAD_TRUNCATED_IMAGES (what the official code sets for good)."""
    with _TRUNCATED_LOCK:
        old, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, True
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = old


def _pil_to_rgb_array(image: Image.Image) -> np.ndarray:
    """`convert("RGB")` then EXIF transpose, in the official order; uint8[H, W, 3]."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # palette-transparency warnings, as the official code
        image = image.convert("RGB")
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # the official loader ignores broken EXIF data too
        pass
    return np.asarray(image)


def _open(source, name: str, max_pixels: int | None) -> Image.Image:
    """Opens an image lazily, refusing huge ones before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: refused as a decompression bomb by PIL before max_pixels={max_pixels} "
                         f"was checked ({e})") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(f"{name}: not a recognised image format") from e
    w, h = image.size
    if max_pixels is not None and w * h > max_pixels:
        image.close()
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds max_pixels={max_pixels} "
                         "(decompression bomb guard; raise max_pixels to accept it)")
    return image


def _decode(image: Image.Image, name: str, allow_truncated: bool) -> np.ndarray:
    """Decodes the pixels; every PIL failure becomes an ImageError naming the input."""
    try:
        try:
            image.load()
        except OSError as e:
            if not (allow_truncated and "truncated" in str(e)):
                raise
            with _load_truncated_images():
                image.load()
        return _pil_to_rgb_array(image)
    except Exception as e:
        hint = "" if allow_truncated else "; truncated files load only with allow_truncated=True"
        raise ImageError(f"{name}: cannot decode image ({type(e).__name__}: {e}){hint}") from e


def load_image(source: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               allow_truncated: bool = True) -> np.ndarray:
    """Loads an image as the official `load_image`: uint8[H, W, 3] RGB after EXIF transpose.

    Args:
      source: a path (local or gs://), the encoded bytes, a PIL image or an uint8[H, W, 3] array (used as is).
      max_pixels: refuse larger images (None: no limit, the official behaviour).
      allow_truncated: decode truncated files with the missing rows filled grey, as the official code
        does through `ImageFile.LOAD_TRUNCATED_IMAGES = True`; False raises ImageError instead.

    Palette/RGBA/grey/CMYK/16-bit images go through PIL's `convert("RGB")` exactly as officially
    (alpha dropped without compositing, 16-bit values clipped to 255); animated images give frame 0.
    """
    if isinstance(source, np.ndarray):
        if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
            raise ImageError(f"array image must be uint8[H, W, 3], got {source.dtype}{list(source.shape)}")
        return source
    if isinstance(source, Image.Image):
        return _pil_to_rgb_array(source)
    if isinstance(source, (bytes, bytearray)):
        return _load_bytes(source, f"<{len(source)} bytes>", max_pixels, allow_truncated)
    name = os.fspath(source)
    if paths.is_remote(name):
        if not epath.Path(name).is_file():
            raise ImageError(f"{name}: file not found")
        return _load_bytes(epath.Path(name).read_bytes(), name, max_pixels, allow_truncated)
    if not os.path.exists(name):
        raise ImageError(f"{name}: file not found")
    if os.path.isdir(name):
        raise ImageError(f"{name}: is a directory, not an image file")
    if os.path.getsize(name) == 0:
        raise ImageError(f"{name}: empty file (0 bytes)")
    with _open(name, name, max_pixels) as image:
        return _decode(image, name, allow_truncated)


def _load_bytes(data: bytes, name: str, max_pixels: int | None, allow_truncated: bool) -> np.ndarray:
    if not data:
        raise ImageError(f"{name}: empty image data")
    with _open(io.BytesIO(data), name, max_pixels) as image:
        return _decode(image, name, allow_truncated)


# ------------------------------------------------------------------------------------------------
# torchvision-identical resizing (torch.nn.functional.interpolate, align_corners=False, CPU)
#
# Two evaluations of the same separable filters: `_resample_banded` (fast: banded blocks of the weight
# matrix as BLAS matmuls, ~1e-7 from torch) for the default mode, and `_resample_exact` (torch's
# tap order with its fused multiply-adds: bit-identical in most cases, e.g. upsampling and plain
# bilinear) where results are rounded to uint8, so that .5 rounding boundaries are rarely crossed.


def _fma(a, b, c) -> np.ndarray:
    """float32 a*b + c rounded once, like the FMA instructions torch's CPU kernels are compiled to."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def _triangle(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1, np.float32(1) - x, np.float32(0))


def _keys_cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a=-0.5 (torch's antialiased bicubic filter)."""
    a, x = np.float32(-0.5), np.abs(x)
    near = _fma(_fma(a + 2, x, -(a + 3)) * x, x, np.float32(1))
    far = _fma(_fma(_fma(a, x, -5 * a), x, 8 * a), x, -4 * a)
    return np.where(x < 1, near, np.where(x < 2, far, np.float32(0)))


_AA_FILTERS = {"bilinear": (_triangle, 1.0), "bicubic": (_keys_cubic, 2.0)}  # filter, half support


@functools.lru_cache(maxsize=512)
def _antialias_taps(in_size: int, out_size: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices int[out, K] and weights float32[out, K] of torch's antialiased resampling.

    The filter is widened by the downscale factor; weights are normalised per output pixel. Scalars
    follow torch's float/double mix. Taps past the end carry weight 0 (their index is clipped).
    """
    filt, half = _AA_FILTERS[method]
    scale = np.float32(in_size) / np.float32(out_size)
    support = np.float32(half * float(scale)) if scale >= 1 else np.float32(half)
    invscale = np.float32(1.0 / float(scale)) if scale >= 1 else np.float32(1.0)
    taps = int(math.ceil(support)) * 2 + 1
    center = (np.float64(scale) * (np.arange(out_size) + 0.5)).astype(np.float32)
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)
    xsize = np.clip(np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin, 0, taps)
    j = np.arange(taps)
    src = xmin[:, None] + j
    dist = ((src.astype(np.float32) - center[:, None]).astype(np.float64) + 0.5) * invscale
    w = np.where(j < xsize[:, None], filt(dist.astype(np.float32)), np.float32(0))
    total = np.zeros(out_size, np.float32)
    for k in range(taps):  # sequential float32 sum, as torch
        total += w[:, k]
    w = np.where(total[:, None] != 0, w / np.where(total == 0, 1, total)[:, None], w)
    return np.minimum(src, in_size - 1), w.astype(np.float32)


@functools.lru_cache(maxsize=512)
def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices int[out, 2] and weights float32[out, 2] of torch's plain (non-antialiased) bilinear."""
    scale = np.float32(in_size) / np.float32(out_size)
    real = np.maximum(_fma(scale, np.arange(out_size) + 0.5, np.float32(-0.5)), np.float32(0))
    i0 = np.minimum(real.astype(np.int64), in_size - 1)
    lam = np.clip(real - i0.astype(np.float32), 0, 1).astype(np.float32)
    return np.stack([i0, np.minimum(i0 + 1, in_size - 1)], 1), np.stack([np.float32(1) - lam, lam], 1)


def _taps(in_size: int, out_size: int, method: str, antialias: bool):
    return _antialias_taps(in_size, out_size, method) if antialias else _bilinear_taps(in_size, out_size)


def _resample_exact(x: np.ndarray, idx: np.ndarray, w: np.ndarray, axis: int, antialias: bool) -> np.ndarray:
    """out[.., o, ..] = sum_k w[o, k] x[.., idx[o, k], ..] in torch's order of fused multiply-adds.

    The antialiased kernel accumulates taps first to last; the plain bilinear one last to first.
    """
    shape = [1] * x.ndim
    shape[axis] = -1
    order = range(idx.shape[1]) if antialias else range(idx.shape[1] - 1, -1, -1)
    out = None
    for k in order:
        term = np.take(x, idx[:, k], axis=axis)
        wk = w[:, k].reshape(shape)
        out = term * wk if out is None else _fma(term, wk, out)
    return out


@functools.lru_cache(maxsize=512)
def _band_blocks(in_size: int, out_size: int, method: str, antialias: bool, channels: int = 0,
                 rows: int = 8) -> tuple:
    """Dense blocks of `rows` outputs of the weight matrix float32[out, in]: ((o, start, stop, W_blk)...).

    channels=0: W_blk is [rows, stop-start] for a left product over axis 0. channels=C: W_blk is
    kron(W_blk^T, I_C) [C(stop-start), C rows], a right product over a (width, channel)-interleaved axis.
    """
    idx, w = _taps(in_size, out_size, method, antialias)
    blocks = []
    for o in range(0, out_size, rows):
        bi, bw = idx[o:o + rows], w[o:o + rows]
        start, stop = int(bi.min()), int(bi.max()) + 1
        dense = np.zeros((len(bi), stop - start), np.float32)
        np.add.at(dense, (np.arange(len(bi))[:, None], bi - start), bw)
        if channels:
            dense = np.kron(dense.T, np.eye(channels, dtype=np.float32))
        blocks.append((o, start, stop, dense))
    return tuple(blocks)


def _resample_rows(x: np.ndarray, out_size: int, method: str, antialias: bool) -> np.ndarray:
    """x[N, M] (any real dtype) -> float32[out_size, M], resampled along axis 0."""
    out = np.empty((out_size, x.shape[1]), np.float32)
    for o, start, stop, dense in _band_blocks(x.shape[0], out_size, method, antialias):
        np.matmul(dense, x[start:stop].astype(np.float32, copy=False), out=out[o:o + len(dense)])
    return out


def _resample_columns(x: np.ndarray, out_size: int, channels: int, method: str, antialias: bool) -> np.ndarray:
    """x[N, W*C] (pixels, channels interleaved) -> float32[N, out_size*C], resampled along W."""
    out = np.empty((x.shape[0], out_size * channels), np.float32)
    c = channels
    for o, start, stop, dense in _band_blocks(x.shape[1] // c, out_size, method, antialias, c):
        out[:, o * c:o * c + dense.shape[1]] = x[:, start * c:stop * c].astype(np.float32, copy=False) @ dense
    return out


def torch_resize(image: np.ndarray, size: tuple[int, int], method: str = "bilinear",
                 antialias: bool = True, exact: bool = False) -> np.ndarray:
    """[H, W, C] -> float32[h, w, C] as `torch.nn.functional.interpolate` on the float32 values.

    `method` is "bilinear" or "bicubic" (bicubic only antialiased, as Molmo uses it). `exact` follows
    torch's evaluation order (width pass then height pass, fused multiply-adds): slower, mostly
    bit-identical. Otherwise both passes are banded matmuls, height first (differences ~1e-7).
    """
    h, w = size
    if h <= 0 or w <= 0:
        raise ImageError(f"cannot resize a {image.shape[0]}x{image.shape[1]} image to {h}x{w}")
    if exact:
        x = np.asarray(image, np.float32)
        for axis, n in ((1, w), (0, h)):
            if x.shape[axis] != n:
                x = _resample_exact(x, *_taps(x.shape[axis], n, method, antialias), axis, antialias)
        return x
    H, W, C = image.shape
    x = image.reshape(H, W * C)
    if H != h:
        x = _resample_rows(x, h, method, antialias)
    if W != w:
        x = _resample_columns(x, w, C, method, antialias)
    return x.astype(np.float32, copy=False).reshape(h, w, C)


def _uint8_roundtrip(resized: np.ndarray) -> np.ndarray:
    """What torchvision does after resizing a uint8 tensor: clamp, round half-even, cast; then /255."""
    return np.round(np.clip(resized, 0, 255)).astype(np.uint8).astype(np.float32) / np.float32(255)


# ------------------------------------------------------------------------------------------------
# Resize modes: uint8[H, W, 3] -> (float32[h, w, 3] in [0, 1], bool[h, w] real-pixel mask)


def scaled_size(h: int, w: int, out_h: int, out_w: int) -> tuple[int, int]:
    """Aspect-preserving size inside (out_h, out_w): float32 scale, truncated (official)."""
    f32 = np.float32
    scale = min(f32(out_w) / f32(w), f32(out_h) / f32(h))
    return int(f32(h) * scale), int(f32(w) * scale)


def resize_and_pad(image: np.ndarray, out_size: tuple[int, int], pad_value: float = 0.0):
    """The default "torch-bilinear" mode: antialiased bilinear to the scaled size, centred padding."""
    out_h, out_w = out_size
    h, w = image.shape[:2]
    sh, sw = scaled_size(h, w, out_h, out_w)
    if sh == 0 or sw == 0:
        raise ImageError(f"a {h}x{w} image is too elongated to fit {out_h}x{out_w}: it would be resized "
                         f"to {sh}x{sw} (the official preprocessor fails on it too)")
    resized = np.clip(torch_resize(image, (sh, sw)) / np.float32(255), 0, 1)
    top, left = (out_h - sh) // 2, (out_w - sw) // 2
    pad = ((top, out_h - sh - top), (left, out_w - sw - left))
    mask = np.pad(np.ones((sh, sw), bool), pad)
    return np.pad(resized, pad + ((0, 0),), constant_values=np.float32(pad_value)), mask


def _squash_resize(image: np.ndarray, out_size: tuple[int, int], method: str, antialias: bool):
    """metaclip / dino (bicubic, antialiased) and siglip (bilinear, plain): no aspect ratio, no pad."""
    resized = torch_resize(image, tuple(out_size), method, antialias, exact=True)
    return _uint8_roundtrip(resized), np.ones(tuple(out_size), bool)


_RESIZE_MODES: dict[str, Callable] = {
    "metaclip": functools.partial(_squash_resize, method="bicubic", antialias=True),
    "dino": functools.partial(_squash_resize, method="bicubic", antialias=True),
    "siglip": functools.partial(_squash_resize, method="bilinear", antialias=False),
}

NORM_STATS = {"openai": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD), "dino": (IMAGENET_MEAN, IMAGENET_STD)}


def normalize(pixels: np.ndarray, kind: str) -> np.ndarray:
    """float32[H, W, C] in [0, 1] -> ViT input, in place: (x - mean) / std, or 2x - 1 for siglip."""
    flat = pixels.reshape(pixels.shape[0], -1)  # a length-3 broadcast axis would make numpy crawl
    if kind == "siglip":
        flat *= np.float32(2)
        flat += np.float32(-1)
    else:
        mean, std = NORM_STATS[kind]
        flat -= np.tile(np.float32(mean), pixels.shape[1])
        flat /= np.tile(np.float32(std), pixels.shape[1])
    return pixels


# ------------------------------------------------------------------------------------------------
# Crops


def select_tiling(h: float, w: float, window: int, max_crops: int) -> tuple[int, int]:
    """(rows, cols) of crops for an image of (h, w) pixels (margins already removed), official rule.

    Candidates (i, j) with i*j <= max_crops are sorted by (i*j, i); if every one needs downscaling the
    least downscaling wins, else the least upscaling >= 1. Non-positive sizes follow numpy semantics.
    """
    cands = sorted(((i, j) for i in range(1, max_crops + 1) for j in range(1, max_crops // i + 1)),
                   key=lambda t: (t[0] * t[1], t[0]))
    cands = np.array(cands, np.int32)
    with np.errstate(divide="ignore"):
        scales = (cands * window).astype(np.float32) / np.array([h, w], np.float32)
    scale = scales.min(axis=1)
    if np.all(scale < 1):
        ix = np.argmax(scale)
    else:
        ix = np.argmin(np.where(scale < 1, np.float32(10e9), scale))
    return int(cands[ix, 0]), int(cands[ix, 1])


def crop_patches(pixels: np.ndarray, grid: tuple[int, int], n: tuple[int, int], stride: tuple[int, int],
                 patch: int) -> np.ndarray:
    """View [ny, nx, gh, gw, p, p, C] of the crops of pixels[H, W, C] (no copy).

    Crop (i, j) is the (gh x gw)-patch window starting at patch (i*stride[0], j*stride[1]).
    """
    s0, s1, s2 = pixels.strides
    return np.lib.stride_tricks.as_strided(
        pixels, shape=(*n, *grid, patch, patch, pixels.shape[2]),
        strides=(stride[0] * patch * s0, stride[1] * patch * s1, patch * s0, patch * s1, s0, s1, s2),
        writeable=False)


def _patch_fraction(mask: np.ndarray, patch: int) -> np.ndarray:
    """bool[H, W] -> float32[H/p * W/p]: fraction of real pixels per patch, patches row-major."""
    h, w = mask.shape
    counts = mask.reshape(h // patch, patch, w // patch, patch).sum((1, 3), dtype=np.float32)
    return (counts / np.float32(patch * patch)).reshape(-1)


@dataclasses.dataclass(frozen=True)
class CropLayout:
    """Geometry of the overlapping crops in patches / pooled tokens along one axis."""
    n: int  # crops along the axis
    first: np.ndarray  # int[n]: first kept pooled index inside each crop
    count: np.ndarray  # int[n]: kept pooled tokens of each crop
    offset: np.ndarray  # int[n]: position of each crop's first kept token in the global token grid

    @property
    def tokens(self) -> int:
        return int(self.count.sum())


def crop_layout(n: int, crop_patches: int, margins: tuple[int, int], pool: int) -> CropLayout:
    """Which pooled tokens of `n` overlapping crops along one axis are kept (official bookkeeping)."""
    left, right = margins
    i = np.arange(n)
    first = np.where(i == 0, 0, left // pool)
    kept_patches = crop_patches - left - right + np.where(i == 0, left, 0) + np.where(i == n - 1, right, 0)
    count = -(-kept_patches // pool)
    return CropLayout(n, first, count, np.concatenate([[0], np.cumsum(count)[:-1]]))


def _block_tokens(rows: int, cols: int, ids, use_col: bool) -> np.ndarray:
    """<im_start> rows x (cols x <im_patch> [<im_col>]) <im_end>."""
    row = [ids.im_patch] * cols + ([ids.im_col] if use_col else [])
    return np.array([ids.im_start] + row * rows + [ids.im_end], np.int64)


def _patch_positions(rows: int, cols: int, start: int, use_col: bool) -> np.ndarray:
    """int[rows, cols]: positions of the <im_patch> tokens of a block starting at `start`."""
    r, c = np.mgrid[:rows, :cols]
    return start + 1 + r * (cols + use_col) + c


def _crop_input_idx(ly: CropLayout, lx: CropLayout, grid: tuple[int, int], positions: np.ndarray):
    """int32[ny*nx, gh*gw]: for each crop's pooled token, its position in the high-res block or -100."""
    gh, gw = grid
    y, x = np.arange(gh), np.arange(gw)
    ry = y[None, :] - ly.first[:, None]  # [ny, gh] row inside the kept region
    rx = x[None, :] - lx.first[:, None]
    ok_y = (ry >= 0) & (ry < ly.count[:, None])
    ok_x = (rx >= 0) & (rx < lx.count[:, None])
    gy = np.clip(ly.offset[:, None] + ry, 0, positions.shape[0] - 1)
    gx = np.clip(lx.offset[:, None] + rx, 0, positions.shape[1] - 1)
    pos = positions[gy[:, None, :, None], gx[None, :, None, :]]  # [ny, nx, gh, gw]
    ok = ok_y[:, None, :, None] & ok_x[None, :, None, :]
    return np.where(ok, pos, IGNORE_INDEX).reshape(ly.n * lx.n, gh * gw).astype(np.int32)


@dataclasses.dataclass
class ImageFeatures:
    """One image turned into model inputs (positions relative to the start of its token block)."""
    crops: np.ndarray  # float32[T, P, D]
    tokens: np.ndarray  # int[N] the image's token block
    input_idx: np.ndarray  # int32[T, K]
    masks: np.ndarray | None  # float32[T, P]


class ImageProcessor:
    """Official multi-crop image processing for one model config (`image_to_patches_and_tokens`)."""

    def __init__(self, cfg, special_ids):
        p = cfg.preprocess
        self.crop_mode = p.crop_mode
        self.max_crops = p.max_crops
        self.margins = tuple(p.overlap_margins)
        self.use_col = bool(p.use_col_tokens)
        self.pad_value = p.pad_value
        self.resize_mode = p.resize_mode
        self.vit_kind = cfg.vit.kind
        self.base = tuple(cfg.vit.image_size)
        self.patch = cfg.vit.patch_size
        self.pool = (cfg.connector.pooling_h, cfg.connector.pooling_w)
        self.pooled = config_lib.pooled_grid(cfg)
        self.patch_grid = config_lib.patch_grid(cfg)
        self.with_masks = cfg.connector.padding_embed is not None
        self.ids = special_ids
        if self.crop_mode not in config_lib.CROP_MODES:
            raise ValueError(f"crop_mode={self.crop_mode!r} not supported; allowed {config_lib.CROP_MODES}")
        if any(m % q for m in self.margins for q in self.pool):
            raise ValueError(f"overlap_margins {self.margins} must be multiples of the pooling {self.pool}")

    def resize(self, image: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """uint8[H, W, 3] -> (normalised float32[h, w, 3], bool[h, w]) in the configured resize mode."""
        if self.resize_mode in _RESIZE_MODES:
            pixels, mask = _RESIZE_MODES[self.resize_mode](image, size)
        else:
            pixels, mask = resize_and_pad(image, size, self.pad_value)
        return normalize(pixels, self.vit_kind), mask

    def tiling(self, h: int, w: int) -> tuple[int, int]:
        margin_px = self.patch * sum(self.margins)
        window = (self.patch_grid[0] - sum(self.margins)) * self.patch
        return select_tiling(h - margin_px, w - margin_px, window, self.max_crops)

    def _global_tokens(self) -> tuple[np.ndarray, np.ndarray]:
        """Token block int[G] of the global view and its input_idx int32[1, K]."""
        th, tw = self.pooled
        tokens = _block_tokens(th, tw, self.ids, self.use_col)
        return tokens, _patch_positions(th, tw, 0, self.use_col).reshape(1, -1).astype(np.int32)

    def __call__(self, image: np.ndarray) -> ImageFeatures:
        grid, p = self.patch_grid, self.patch
        n_patches, patch_dim = grid[0] * grid[1], p * p * 3
        glob_tokens, glob_idx = self._global_tokens()
        if self.crop_mode == "resize":
            pixels, mask = self.resize(image, self.base)
            masks = _patch_fraction(mask, p)[None] if self.with_masks else None
            crops = crop_patches(pixels, grid, (1, 1), grid, p).reshape(1, n_patches, patch_dim)
            return ImageFeatures(crops, glob_tokens.astype(np.int32), glob_idx, masks)

        rows, cols = self.tiling(*image.shape[:2])
        win = (np.array(grid) - sum(self.margins)) * p
        margin_px = p * sum(self.margins)
        canvas = (int(rows * win[0] + margin_px), int(cols * win[1] + margin_px))
        pixels, mask = self.resize(image, canvas)
        crops = np.empty((1 + rows * cols, n_patches, patch_dim), np.float32)
        crops[1:].reshape(rows, cols, *grid, p, p, 3)[...] = crop_patches(
            pixels, grid, (rows, cols), tuple(win // p), p)
        glob_pixels = pixels if canvas == self.base else self.resize(image, self.base)[0]  # 1x1 tiling
        crops[0].reshape(*grid, p, p, 3)[...] = crop_patches(glob_pixels, grid, (1, 1), grid, p)[0, 0]

        ly = crop_layout(rows, grid[0], self.margins, self.pool[0])
        lx = crop_layout(cols, grid[1], self.margins, self.pool[1])
        hires_tokens = _block_tokens(ly.tokens, lx.tokens, self.ids, self.use_col)
        positions = _patch_positions(ly.tokens, lx.tokens, len(glob_tokens), self.use_col)
        crop_idx = _crop_input_idx(ly, lx, self.pooled, positions)

        masks = None
        if self.with_masks:
            fractions = _patch_fraction(mask, p).reshape(mask.shape[0] // p, mask.shape[1] // p, 1)
            crop_masks = crop_patches(fractions, grid, (rows, cols), tuple(win // p), 1)
            # Official off-by-one: rows are [crop_1 .. crop_N, -1] while images are [global, crops].
            masks = np.concatenate([crop_masks.reshape(rows * cols, n_patches),
                                    np.full((1, n_patches), PAD, np.float32)])
        return ImageFeatures(crops, np.concatenate([glob_tokens, hires_tokens]),
                             np.concatenate([glob_idx, crop_idx]), masks)


# ------------------------------------------------------------------------------------------------
# Sequence assembly (MultiModalPreprocessor.__call__)


def _encode_conversation(tokenizer: MolmoTokenizer, messages: Sequence[str], weight=None):
    """Tokens int32[n] and loss masks float32[n] of alternating user/assistant messages.

    EOS follows every assistant (odd) message; the loss covers assistant tokens and their EOS.
    """
    ids, masks = [], []
    for i, message in enumerate(messages):
        has_loss = i % 2 == 1
        msg_ids = tokenizer.encode(message) + ([tokenizer.eos_id] if has_loss else [])
        ids += msg_ids
        masks += [(1.0 if weight is None else weight) if has_loss else 0.0] * len(msg_ids)
    return np.array(ids, np.int32), np.array(masks, np.float32)


def _encode_messages(tokenizer, messages, weight, loss_weighting):
    """(tokens, loss_masks, subsegments or None) for one conversation or a list of conversations."""
    if not messages:
        raise ValueError("no messages given")
    if not isinstance(messages[0], str) and len(messages) == 1:
        messages = messages[0]
    if isinstance(messages[0], str):
        return (*_encode_conversation(tokenizer, messages, weight), None)
    if weight is not None:
        raise NotImplementedError("weights with multi-annotation message lists (not supported officially)")
    parts = [_encode_conversation(tokenizer, conv) for conv in messages]
    tokens = np.concatenate([t for t, _ in parts])
    masks = np.concatenate([m for _, m in parts])
    subsegments = np.concatenate([np.full(len(t), k + 1, np.int32) for k, (t, _) in enumerate(parts)])
    if loss_weighting == "root_subsegments":
        masks *= np.float32(math.sqrt(1 / len(messages)))
    elif loss_weighting is not None:
        raise NotImplementedError(f"multi_annotation_weighting={loss_weighting!r}")
    return tokens, masks, subsegments


def _subsegment_positions(subsegments: np.ndarray) -> np.ndarray:
    """int64[S]: each subsegment's positions count only tokens of subsegments >= its own id."""
    ids = np.unique(subsegments)
    visible = subsegments[None, :] >= ids[:, None]  # [n_ids, S]
    per_id = np.cumsum(visible, axis=1) - 1
    return per_id[np.searchsorted(ids, subsegments), np.arange(len(subsegments))].astype(np.int64)


def build_example(tokenizer: MolmoTokenizer, image_processor: ImageProcessor | None,
                  images: Sequence[np.ndarray] | None, messages, weight=None,
                  loss_weighting: str | None = None) -> dict[str, np.ndarray]:
    """Interleaves image and text tokens into model inputs (`MultiModalPreprocessor.__call__`).

    Images go where `<|image|>` tokens are (one per image), else all at the start of the text.
    Training data (ends with EOS): input = [BOS] + tokens[:-1], target = tokens. Inference: input =
    [BOS] + tokens and target / loss_masks padded with one -1.
    """
    tokens, loss_masks, subsegments = _encode_messages(tokenizer, messages, weight, loss_weighting)
    bos = tokenizer.bos_id or tokenizer.eos_id
    if not images:
        out = {"input_tokens": tokens, "loss_masks": loss_masks, "target_tokens": tokens}
        if subsegments is not None:  # official key name in the text-only branch (the collator drops it)
            out["subsegments"] = np.concatenate([subsegments[:1], subsegments[:-1]])
        return out

    slots = np.flatnonzero(tokens == tokenizer.special.image_prompt)
    if len(slots) and len(slots) != len(images):
        raise ValueError(f"{len(slots)} <|image|> tokens in the text but {len(images)} images")
    at_start = len(slots) == 0
    bounds = np.concatenate([[0], slots + 1]) if not at_start else np.zeros(len(images) + 1, np.int64)
    ends = slots if not at_start else np.zeros(len(images), np.int64)

    seq_tok, seq_mask, seq_sub, crops, idx, masks = [], [], [], [], [], []
    length = 0
    for k, image in enumerate(images):
        feat = image_processor(image)
        text = slice(bounds[k], ends[k])
        seq_tok += [tokens[text], feat.tokens]
        seq_mask += [loss_masks[text], np.zeros(len(feat.tokens), np.float32)]
        if subsegments is not None:
            image_sub = IMAGE_AT_START_SUBSEGMENT if at_start else int(ends[k])
            seq_sub += [subsegments[text], np.full(len(feat.tokens), image_sub, np.int32)]
        length += ends[k] - bounds[k]
        crops.append(feat.crops)
        idx.append(np.where(feat.input_idx >= 0, feat.input_idx + length + 1, feat.input_idx))
        masks.append(feat.masks)
        length += len(feat.tokens)
    rest = slice(bounds[-1], None)
    seq_tok.append(tokens[rest])
    seq_mask.append(loss_masks[rest])
    if subsegments is not None:
        seq_sub.append(subsegments[rest])

    target = np.concatenate(seq_tok)
    all_masks = np.concatenate(seq_mask)
    ends_with_eos = target[-1] == tokenizer.eos_id
    if not ends_with_eos and loss_masks[-1]:
        raise RuntimeError("the last message has a loss but does not end with EOS")
    inputs = np.concatenate([[bos], target[:-1] if ends_with_eos else target]).astype(target.dtype)
    if not ends_with_eos:
        all_masks = np.pad(all_masks, (0, 1), constant_values=PAD)
        target = np.pad(target, (0, 1), constant_values=PAD)
    out = {"input_tokens": inputs, "images": np.concatenate(crops),
           "image_input_idx": np.concatenate(idx).astype(np.int32),
           "loss_masks": all_masks, "target_tokens": target}
    if image_processor.with_masks:
        out["image_masks"] = np.concatenate(masks)
    if subsegments is None:
        out["position_ids"] = np.arange(len(inputs), dtype=np.int64)
    else:
        sub = np.concatenate(seq_sub)
        sub = np.concatenate([sub[:1], sub[:-1] if ends_with_eos else sub])
        out["subsegment_ids"] = sub
        out["position_ids"] = _subsegment_positions(sub)
    return out


# ------------------------------------------------------------------------------------------------
# Public API


class Preprocessor:
    """Official Molmo pre-processing for one model config: image + prompt -> model input arrays.

    Args:
      cfg: model ConfigDict (`molmo_jax.config`).
      tokenizer: from `molmo_jax.tokenizer.load_tokenizer(path, cfg.llm.vocab_size)`.
      max_sequence_length: examples longer than this raise SequenceLengthError (default
        cfg.llm.max_sequence_length; None disables). The official code does not check here; its
        collator silently cuts the sequence (`collate(..., seq_len=)` reproduces that).
      max_pixels, allow_truncated: image loading limits, see `load_image`.
    """

    def __init__(self, cfg, tokenizer: MolmoTokenizer, max_sequence_length: int | None = -1,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, allow_truncated: bool = True):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.images = ImageProcessor(cfg, tokenizer.special)
        self.formatter = formatting.Formatter.from_config(cfg)
        self.max_sequence_length = (cfg.llm.max_sequence_length if max_sequence_length == -1
                                    else max_sequence_length)
        self.max_pixels = max_pixels
        self.allow_truncated = allow_truncated
        self.loss_weighting = cfg.formatting.multi_annotation_weighting

    def load(self, image: ImageInput) -> np.ndarray:
        return load_image(image, self.max_pixels, self.allow_truncated)

    def encode(self, images: Sequence[ImageInput] | ImageInput | None, messages,
               weight: float | None = None) -> dict[str, np.ndarray]:
        """Already formatted messages (list of str, or list of conversations) -> model inputs."""
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        return self._build([self.load(im) for im in images or ()], messages, weight, _describe(images))

    def _build(self, images: list[np.ndarray], messages, weight, name: str) -> dict[str, np.ndarray]:
        try:
            out = build_example(self.tokenizer, self.images, images, messages, weight, self.loss_weighting)
        except ImageError as e:
            raise ImageError(f"{name}: {e}") from e
        n = len(out["input_tokens"])
        if self.max_sequence_length is not None and n > self.max_sequence_length:
            raise SequenceLengthError(
                f"example has {n} tokens (image blocks included) but the sequence budget is "
                f"max_sequence_length={self.max_sequence_length}; shorten the prompt, lower "
                "preprocess.max_crops, or collate(seq_len=...) to cut it as the official collator does")
        return out

    def from_example(self, example: Mapping[str, Any], for_inference: bool, is_training: bool = False,
                     rng: np.random.RandomState | None = None) -> dict[str, np.ndarray]:
        """An official dataset example dict (image, style, question/answer/points/message_list...)."""
        rng = np.random if rng is None else rng
        example = dict(example)
        source = example.get("image")
        images = [self.load(source)] if "image" in example else []
        if images:
            example["image"] = images[0]
        messages, _ = self.formatter(example, is_training, for_inference, rng)
        return self._build(images, messages, example.get("weight"), _describe([source] if images else None))

    def __call__(self, image: ImageInput | None, prompt: str, answer: str | None = None,
                 style: str = "demo", rng: np.random.RandomState | None = None) -> dict[str, np.ndarray]:
        """One user prompt (and for training its answer) about one image (or none) -> model inputs."""
        example = {"prompt": prompt, "style": style}
        if answer is not None:
            example["text"] = answer
        if image is not None:
            example["image"] = image
        return self.from_example(example, for_inference=answer is None, rng=rng)


def _describe(images) -> str:
    names = [os.fspath(im) if isinstance(im, (str, os.PathLike)) else type(im).__name__ for im in images or ()]
    return ", ".join(names) or "<no image>"


# ------------------------------------------------------------------------------------------------
# Collation (MMCollator)

TEXT_KEYS = ("input_tokens", "target_tokens", "loss_masks", "subsegment_ids", "position_ids")
IMAGE_KEYS = ("images", "image_masks", "image_input_idx")


def _pad_stack(arrays: Sequence[np.ndarray | None], length: int | None, dtype=None) -> np.ndarray:
    """Right-pads (or truncates) arrays along axis 0 to `length` with -1 and stacks; None -> all -1."""
    ref = next(a for a in arrays if a is not None)
    n = length if length is not None else max(0 if a is None else len(a) for a in arrays)
    out = np.full((len(arrays), n) + ref.shape[1:], PAD, dtype=dtype or ref.dtype)
    for row, a in zip(out, arrays):
        if a is not None:
            row[:min(n, len(a))] = a[:n]
    return out


def collate(examples: Sequence[Mapping[str, np.ndarray]], seq_len: int | None = None,
            max_crops: int | None = None) -> dict[str, np.ndarray]:
    """Batches examples as the official `MMCollator`; returns `input_ids` (+ `labels`) etc.

    Text arrays (int64, loss_masks float32) and image arrays are right-padded with -1 to the longest
    example, or to exactly `seq_len` / `max_crops` when given (longer examples are cut: the official
    truncation). An example without images gets all -1 crops.
    """
    if not examples:
        raise ValueError("collate() got an empty batch")
    out = {}
    if any("subsegment_ids" in ex for ex in examples):
        examples = [ex if "subsegment_ids" in ex else {**ex, "subsegment_ids": np.ones_like(ex["input_tokens"])}
                    for ex in examples]
    for key in TEXT_KEYS:
        if any(key in ex for ex in examples):
            dtype = np.float32 if key == "loss_masks" else np.int64
            out[key] = _pad_stack([ex.get(key) for ex in examples], seq_len, dtype)
    for key in IMAGE_KEYS:
        if any(key in ex for ex in examples):
            out[key] = _pad_stack([ex.get(key) for ex in examples], max_crops)
    out["input_ids"] = out.pop("input_tokens")
    if "target_tokens" in out:
        out["labels"] = out.pop("target_tokens")
    return out
