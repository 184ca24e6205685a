"""Bad and unusual image inputs, generated on the fly: clear ImageErrors or the official behaviour."""
import json
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from molmo_jax import config as config_lib
from molmo_jax import preprocess, tokenizer
from molmo_jax.preprocess import ImageError, load_image

FIXTURES = os.environ.get("MOLMO_FIXTURES", os.path.join(os.path.dirname(__file__), "fixtures", "molmo_ref"))
FIXTURE = os.path.join(FIXTURES, sorted(os.listdir(FIXTURES))[0])


@pytest.fixture(scope="module")
def pre():
    with open(os.path.join(FIXTURE, "config.json")) as f:
        cfg = config_lib.from_official(json.load(f))
    return preprocess.Preprocessor(cfg, tokenizer.load_tokenizer(os.path.join(FIXTURE, "tokenizer.json"),
                                                                 cfg.llm.vocab_size))


def _photo(h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    return np.stack([(x * 3 + y) % 256, (y * 4) % 256, rng.integers(0, 256, (h, w))], -1).astype(np.uint8)


def _save(tmp_path, image, name, **kw):
    path = tmp_path / name
    image.save(path, **kw)
    return str(path)


def _pil_reference(path):
    """What the official loader does: convert("RGB") then EXIF transpose."""
    with Image.open(path) as im, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(ImageOps.exif_transpose(im.convert("RGB")))


def _check_model_inputs(pre, image):
    out = pre(image, "Describe this image.")
    assert np.isfinite(out["images"]).all()
    assert out["images"].shape[1:] == (576, 588) and out["image_masks"].shape == out["images"].shape[:2]
    return out


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found") as e:
        load_image(tmp_path / "nope.jpg")
    assert "nope.jpg" in str(e.value)


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match="empty image data"):
        load_image(b"")


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_bytes(b"this is plain text, not a JPEG\n" * 10)
    with pytest.raises(ImageError, match=r"notes\.jpg: not a recognised image format"):
        load_image(tmp_path / "notes.jpg")


def test_truncated_jpeg(tmp_path, pre):
    path = _save(tmp_path, Image.fromarray(_photo(200, 300)), "full.jpg", quality=95)
    data = open(path, "rb").read()
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) // 2])
    # Official behaviour (LOAD_TRUNCATED_IMAGES=True): decoded, missing rows filled.
    image = load_image(tmp_path / "cut.jpg")
    assert image.shape == (200, 300, 3)
    _check_model_inputs(pre, str(tmp_path / "cut.jpg"))
    with pytest.raises(ImageError, match=r"cut\.jpg: cannot decode.*truncated"):
        load_image(tmp_path / "cut.jpg", allow_truncated=False)
    from PIL import ImageFile
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global is restored


def test_one_pixel_image(tmp_path, pre):
    path = _save(tmp_path, Image.fromarray(np.full((1, 1, 3), 77, np.uint8)), "dot.png")
    out = _check_model_inputs(pre, path)
    assert out["images"].shape[0] == 2  # 1x1 tiling + global view, as the official numpy semantics give
    pixels = out["images"][0].reshape(-1, 3)
    assert np.all(pixels == pixels[0])  # upsampled single colour, no padding


def test_extremely_elongated_image(tmp_path, pre):
    path = _save(tmp_path, Image.fromarray(np.full((1, 5000, 3), 9, np.uint8)), "line.png")
    with pytest.raises(ImageError, match=r"line\.png.*1x5000 image is too elongated"):
        pre(path, "Describe this image.")


@pytest.mark.parametrize("mode,convert", [("I;16", None), ("CMYK", None), ("P", "transparency"), ("RGBA", None),
                                          ("L", None), ("LA", None), ("1", None)])
def test_modes_match_official_conversion(tmp_path, pre, mode, convert):
    rgb = Image.fromarray(_photo())
    if mode == "I;16":
        image = Image.fromarray((np.asarray(rgb)[..., 0].astype(np.uint16) * 257))
        name = "deep.png"
    elif mode == "P":
        image = rgb.quantize(16)
        image.info["transparency"] = 3
        name = "palette.png"
    else:
        image = rgb.convert(mode)
        name = "cmyk.jpg" if mode == "CMYK" else f"{mode}.png"
    path = _save(tmp_path, image, name)
    with Image.open(path) as im:
        assert im.mode == mode
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == (60, 80, 3)
    np.testing.assert_array_equal(loaded, _pil_reference(path))
    if mode in ("L", "LA", "1"):
        assert (loaded == loaded[..., :1]).all()
    _check_model_inputs(pre, path)


def test_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(tmp_path, Image.fromarray(_photo(40, 70)), "rotated.jpg", exif=exif.tobytes())
    loaded = load_image(path)
    assert loaded.shape == (70, 40, 3)
    np.testing.assert_array_equal(loaded, _pil_reference(path))


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((20, 30, 3), v, np.uint8)) for v in (10, 200, 90)]
    path = str(tmp_path / "anim.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    loaded = load_image(path)
    assert loaded.shape == (20, 30, 3)
    np.testing.assert_array_equal(loaded, _pil_reference(path))
    assert abs(int(loaded.mean()) - 10) <= 2  # the first frame's colour (GIF palette rounding aside)


def _png_header_only(width, height):
    """A PNG whose header claims width x height (no real pixel data needed to trip the size check)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_decompression_bomb(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_header_only(12000, 10000))
    with pytest.raises(ImageError, match=r"bomb\.png: 12000x10000 = 120000000 pixels exceeds max_pixels=10"):
        load_image(tmp_path / "bomb.png", max_pixels=10 ** 8)
    (tmp_path / "huge.png").write_bytes(_png_header_only(60000, 50000))  # beyond PIL's own hard limit
    with pytest.raises(ImageError, match=r"huge\.png: refused as a decompression bomb"):
        load_image(tmp_path / "huge.png")
    path = _save(tmp_path, Image.fromarray(_photo()), "small.png")
    with pytest.raises(ImageError, match="max_pixels=1000"):
        load_image(path, max_pixels=1000)
    assert load_image(path, max_pixels=None).shape == (60, 80, 3)


def test_bytes_and_array_inputs(tmp_path):
    path = _save(tmp_path, Image.fromarray(_photo()), "p.png")
    np.testing.assert_array_equal(load_image(open(path, "rb").read()), load_image(path))
    with pytest.raises(ImageError, match=r"uint8\[H, W, 3\]"):
        load_image(np.zeros((5, 5), np.uint8))
    with pytest.raises(ImageError, match=r"uint8\[H, W, 3\]"):
        load_image(np.zeros((5, 5, 3), np.float32))


def test_prompt_longer_than_budget(pre):
    tight = preprocess.Preprocessor(pre.cfg, pre.tokenizer, max_sequence_length=20)
    with pytest.raises(preprocess.SequenceLengthError, match=r"has \d+ tokens .* max_sequence_length=20"):
        tight(_photo(), "Describe this image.")
    out = pre(_photo(), "word " * 50)
    cut = preprocess.collate([out], seq_len=100)  # the official collator truncates silently
    np.testing.assert_array_equal(cut["input_ids"][0], out["input_tokens"][:100])
