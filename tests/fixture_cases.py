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
