"""Discovery of the official reference fixtures (../shared/fixtures format) for parametrised tests.

The root is $MOLMO_FIXTURES (default tests/fixtures/molmo_ref): one directory per tiny model with
config.json, weights.safetensors and cases/<case>/arrays.npz. Test ids read "<fixture>/<case>".
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

ROOT = Path(os.environ.get("MOLMO_FIXTURES", Path(__file__).parent / "fixtures" / "molmo_ref"))
HF_RELEASE_ROOT = Path(__file__).parent / "fixtures" / "hf_release"


def fixture_dirs() -> list[Path]:
    return sorted(p for p in ROOT.iterdir() if (p / "config.json").exists())


def cases(predicate=lambda arrays: True) -> list[tuple[str, str]]:
    """(fixture, case) pairs whose arrays satisfy `predicate`."""
    out = []
    for fx in fixture_dirs():
        for case in sorted((fx / "cases").iterdir()):
            if predicate(load_arrays(fx.name, case.name)):
                out.append((fx.name, case.name))
    return out


def case_id(pair) -> str:
    return f"{pair[0]}/{pair[1]}"


@functools.lru_cache(maxsize=None)
def load_arrays(fixture: str, case: str) -> dict[str, np.ndarray]:
    with np.load(ROOT / fixture / "cases" / case / "arrays.npz") as z:
        return {k: z[k] for k in z.files}


# Arrays of a case that do not depend on the padding embedding: the preprocessor's and the ViT's.
PADDING_FREE_PREFIXES = ("input_tokens", "target_tokens", "loss_masks", "position_ids", "images",
                         "image_input_idx", "vit_hidden_layer", "train_input_tokens", "train_target_tokens",
                         "train_loss_masks", "train_position_ids", "train_image_input_idx")


def no_mask_variant(fixture: str, dest: Path) -> Path:
    """A copy of `fixture` as a model without image masks, made through the official config field
    `image_padding_embed = None` (the official `build_mm_preprocessor` then emits no "image_masks" and
    the official connector has no `pad_embed`): weights without `vision_backbone.pad_embed`, each case
    with only the arrays that stay official for the variant (`PADDING_FREE_PREFIXES`)."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    src = ROOT / fixture
    dest.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((src / "config.json").read_text())
    cfg["image_padding_embed"] = None
    (dest / "config.json").write_text(json.dumps(cfg))
    weights = load_file(src / "weights.safetensors")
    del weights["vision_backbone.pad_embed"]
    save_file(weights, dest / "weights.safetensors")
    shutil.copy(src / "tokenizer.json", dest / "tokenizer.json")
    for case in (src / "cases").iterdir():
        shutil.copytree(case, dest / "cases" / case.name, ignore=shutil.ignore_patterns("arrays.npz"))
        with np.load(case / "arrays.npz") as z:
            kept = {k: z[k] for k in z.files if k.startswith(PADDING_FREE_PREFIXES)}
        np.savez(dest / "cases" / case.name / "arrays.npz", **kept)
    return dest
