"""The user API (`molmo_jax.load`, bundle.generate / predict, save / Orbax), points and the `molmo-jax` CLI.

Answers are checked against the official greedy generations of the reference fixture; the CLI runs
in-process (`cli.main`) except one subprocess run that checks the exit status and the one-line error.
"""
from __future__ import annotations

import ast
import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

import molmo_jax
from fixture_cases import HF_RELEASE_ROOT, ROOT, load_arrays
from molmo_jax import api, cli, config, decoding, io, points
from molmo_jax.preprocess import ImageError, Preprocessor

FIXTURE = ROOT / "qwen2_7b_d"
CASES = sorted(p.name for p in (FIXTURE / "cases").iterdir())
HF_VISION = json.loads((HF_RELEASE_ROOT / "molmo_7b_d" / "fixture_meta.json").read_text())["vision_backbone_used_here"]


@functools.lru_cache(maxsize=None)
def bundle() -> api.MolmoBundle:
    return molmo_jax.load(FIXTURE)


def case_inputs(case: str) -> tuple[Path | None, str, np.ndarray]:
    """(image path or None, prompt, official greedy ids) of a fixture case."""
    d = FIXTURE / "cases" / case
    image = d / "image.png"
    return image if image.exists() else None, (d / "prompt.txt").read_text(), load_arrays(FIXTURE.name, case)["generated_ids"]


def expected_text(ids: np.ndarray) -> str:
    return bundle().tokenizer.decode(ids)


def run(argv, capsys) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- predict

@pytest.mark.parametrize("case", CASES)
def test_predict_prints_the_official_greedy_answer(case, capsys):
    image, prompt, ids = case_inputs(case)
    argv = ["predict", "--checkpoint", FIXTURE, "--prompt", prompt, "--max-new-tokens", len(ids)]
    rc, out, _ = run(argv + (["--image", image] if image else []), capsys)
    assert rc == 0
    assert out.splitlines()[0] == expected_text(ids).strip()


def test_predict_draw_writes_png_of_the_image_size(tmp_path, capsys):
    image, prompt, ids = case_inputs("pointing")
    rc, _, _ = run(["predict", "--checkpoint", FIXTURE, "--image", image, "--prompt", prompt,
                    "--max-new-tokens", len(ids), "--draw", tmp_path / "out.png"], capsys)
    assert rc == 0
    with Image.open(tmp_path / "out.png") as drawn:
        assert drawn.format == "PNG" and drawn.size == Image.open(image).size


def test_hf_release_needs_its_vision_sizes(tmp_path, capsys):
    release = HF_RELEASE_ROOT / "molmo_7b_d"
    rc, _, err = run(["predict", "--checkpoint", release, "--prompt", "Hi"], capsys)
    assert rc == 1 and "missing tensors ['vision_backbone.image_vit" in err
    loaded = molmo_jax.load(release, vision=HF_VISION)
    jax.tree.map(np.testing.assert_array_equal, loaded.params, bundle().params)


# ----------------------------------------------------------------------------- errors

def broken_checkpoint(tmp_path: Path, drop: str | None = None, config_update: dict | None = None) -> Path:
    out = tmp_path / "ckpt"
    shutil.copytree(FIXTURE, out, ignore=shutil.ignore_patterns("cases", "base_tokenizer"))
    if drop:
        (out / drop).unlink()
    if config_update:
        d = json.loads((out / "config.json").read_text())
        (out / "config.json").write_text(json.dumps({**d, **config_update}))
    return out


@pytest.mark.parametrize("problem,message", [
    (dict(drop="weights.safetensors"), "config.json but no weights"),
    (dict(drop="tokenizer.json"), "tokenizer"),
    (dict(drop="config.json"), "no config.json"),
    (dict(config_update={"mlp_hidden_size": 512}), "w1.weight: checkpoint shape [(128, 64)] does not match"),
    (dict(config_update={"n_layers": 3}), "missing tensors ['transformer.blocks.2."),
])
def test_bad_checkpoint_is_one_line_error(tmp_path, capsys, problem, message):
    rc, out, err = run(["predict", "--checkpoint", broken_checkpoint(tmp_path, **problem), "--prompt", "Hi"], capsys)
    assert rc == 1 and not out
    assert len(err.strip().splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("content,message", [(b"", "empty file"), (b"\x89PNG\r\n\x1a\nnot really", "cannot read image"),
                                              (None, "file not found")])
def test_bad_image_is_one_line_error(tmp_path, capsys, content, message):
    path = tmp_path / "image.png"
    if content is not None:
        path.write_bytes(content)
    rc, _, err = run(["predict", "--checkpoint", FIXTURE, "--image", path, "--prompt", "Hi"], capsys)
    assert rc == 1 and len(err.strip().splitlines()) == 1 and message in err, err


def test_too_long_prompt_is_one_line_error(capsys):
    rc, _, err = run(["predict", "--checkpoint", FIXTURE, "--prompt", "cat " * 5000], capsys)
    assert rc == 1 and "max_sequence_length=4096" in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_exception(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageError):
        cli.main(["predict", "--checkpoint", str(FIXTURE), "--image", str(tmp_path / "bad.png"), "--prompt", "x",
                  "--debug"])


def test_console_script_exit_status_without_traceback(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    proc = subprocess.run([sys.executable, "-m", "molmo_jax.cli", "predict", "--checkpoint", str(FIXTURE),
                           "--image", str(tmp_path / "bad.jpg"), "--prompt", "x"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and not proc.stdout
    assert proc.stderr.strip().splitlines() == [f"molmo-jax predict: error: {tmp_path / 'bad.jpg'}: "
                                                "not a recognised image format"]


# ----------------------------------------------------------------------------- convert / Orbax

def test_convert_native_to_release_to_native_keeps_every_tensor(tmp_path, capsys):
    release, native = tmp_path / "release", tmp_path / "native"
    assert run(["convert", "--checkpoint", FIXTURE, "--to", "hf_release", "--out", release], capsys)[0] == 0
    assert run(["convert", "--checkpoint", release, "--to", "native", "--out", native], capsys)[0] == 0
    before, after = load_file(FIXTURE / "weights.safetensors"), load_file(native / "weights.safetensors")
    assert sorted(before) == sorted(after)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    assert run(["convert", "--checkpoint", FIXTURE, "--to", "native", "--out", native], capsys)[0] == 1


def test_orbax_export_loads_back(tmp_path, capsys):
    assert run(["convert", "--checkpoint", FIXTURE, "--to", "orbax", "--out", tmp_path / "orbax"], capsys)[0] == 0
    loaded = molmo_jax.load(tmp_path / "orbax")
    assert io.detect_format(tmp_path / "orbax") == "orbax"
    assert config.to_official(loaded.cfg) == config.to_official(bundle().cfg)
    assert loaded.tokenizer.eos_id == bundle().tokenizer.eos_id
    jax.tree.map(np.testing.assert_array_equal, loaded.params, bundle().params)


# ----------------------------------------------------------------------------- API

def test_generate_batch_equals_official_rows_and_stop_strings_cut():
    cases = ["pointing", "text_only"]
    images, prompts, ids = zip(*(case_inputs(c) for c in cases))
    texts = bundle().generate_batch(list(images), list(prompts), max_new_tokens=8)
    assert texts == [expected_text(i) for i in ids]
    cut = texts[0][3:6]
    assert bundle().generate(images[0], prompts[0], max_new_tokens=8, stop_strings=["zzz", cut]) == \
        texts[0][:texts[0].index(cut)]


def odd_images(tmp_path: Path) -> list[Path]:
    """Readable images of unusual modes, sizes and formats (PIL writes each)."""
    rng = np.random.default_rng(0)
    images = {"palette_1x1.png": Image.new("P", (1, 1), 3),
              "rgba_700x2.png": Image.new("RGBA", (700, 2), (10, 200, 30, 128)),
              "gray16.png": Image.fromarray((np.arange(1500).reshape(30, 50) * 40).astype(np.uint16)),
              "cmyk.jpg": Image.new("CMYK", (40, 20), (0, 100, 200, 0)),
              "bilevel_9x300.bmp": Image.new("1", (9, 300), 1),
              "float.tiff": Image.fromarray(rng.random((20, 20)).astype(np.float32)),
              "la.webp": Image.new("LA", (33, 17), (90, 255)).convert("RGBA")}
    for name, image in images.items():
        image.save(tmp_path / name)
    return [tmp_path / name for name in images]


def test_every_readable_image_gets_an_answer(tmp_path):
    for path in odd_images(tmp_path):  # all tiled 1 x 1: the compiled program of the "pointing" case
        answer = bundle().predict(path, "Point to it.", max_new_tokens=8)
        assert isinstance(answer.text, str) and answer.points.shape[1] == 2


def test_letterbox_and_points_map_back_to_original_pixels(tmp_path):
    image = np.full((4, 1000, 3), 7, np.uint8)
    view, (left, top) = api.letterbox(image, max_aspect=100)
    assert view.shape == (10, 1000, 3) and (left, top) == (0, 3)
    np.testing.assert_array_equal(view[top:top + 4], image)
    assert api.letterbox(view, max_aspect=100)[0] is view
    text = 'Counting the <points x1="10.0" y1="50.0" x2="90.0" y2="35.0" alt="dots">dots</points> shows 2.'
    np.testing.assert_allclose(points.pixel_points(text, (1000, 10), (left, top)), [[100, 2], [900, 0.5]])
    path = tmp_path / "drawn.png"
    points.save_drawing(np.zeros((30, 60, 3), np.uint8), np.array([[30.0, 15.0]]), path)
    with Image.open(path) as drawn:
        assert drawn.size == (60, 30) and np.asarray(drawn)[15, 30].tolist() == list(points.FILL)


def test_package_exports():
    assert molmo_jax.load is api.load and molmo_jax.Preprocessor is Preprocessor
    assert molmo_jax.generate is api.generate and molmo_jax.decoding.generate is decoding.generate
    with pytest.raises(AttributeError):
        molmo_jax.no_such_name


# ----------------------------------------------------------------------------- the CLI package

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    """Every module an `import` / `from ... import` statement of the file names (`package.name` too for
    `from package import name`). The packages use absolute imports only (checked)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_the_cli_package_parses_arguments_and_the_library_never_imports_it():
    """argparse lives in molmo_jax/cli (and the launchers in experiments/ and tools/); no other module of
    the installed packages imports argparse or molmo_jax.cli."""
    offenders = []
    for package in ("molmo_jax", "data_pipelines"):
        for path in sorted((REPO / package).rglob("*.py")):
            if path.is_relative_to(REPO / "molmo_jax" / "cli"):
                continue
            names = imported_modules(path)
            offenders += [f"{path.relative_to(REPO)}: {name}" for name in sorted(names)
                          if name.split(".")[0] == "argparse" or name.split(".")[:2] == ["molmo_jax", "cli"]]
    assert offenders == []
    assert "argparse" in imported_modules(REPO / "molmo_jax" / "cli" / "__init__.py")  # the scan sees imports


def test_every_command_is_one_module_of_the_literal_list():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    assert list(sub.choices) == [c.name for c in cli.COMMANDS]
    for command in cli.COMMANDS:
        assert command.module.__name__.startswith("molmo_jax.cli.")
        assert callable(command.module.add_arguments) and callable(command.module.run) and command.description
    assert not hasattr(cli, "EXTENSIONS") and not hasattr(cli, "register")
