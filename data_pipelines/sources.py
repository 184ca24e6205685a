"""Training datasets by their official names -> sources (`pixmo.Source`): PixMo ones from the hub files
(`pixmo.load`), academic ones from their tfds builds (`academic.load`), for `mixtures.stage1` / `stage2`.

    src = load("pixmo_cap_with_transcripts", data_dir, image_dir)     # stage 1
    srcs = stage2_sources(data_dir, image_dir, academic_dir, manual_dir)  # stage 2: name -> source

Layout: `data_dir/<hub repo>/data/<split>-*.parquet` (local copies of the hub repos), `image_dir` the
downloader's cache of their URL images, `academic_dir` the tfds data_dir of the academic builds and
`manual_dir/<builder>` the raw files of each academic set (`academic.SPECS[builder].instructions`).
"""
from __future__ import annotations

import logging
import os

from etils import epath

from data_pipelines import academic, mixtures, pixmo
from molmo_jax import paths

STAGE1_DATASET = "pixmo_cap_with_transcripts"  # PixMo-Cap as the official stage 1 reads it


def load(name: str, data_dir="", image_dir="", academic_dir="", manual_dir="", split: str = "train") -> pixmo.Source:
    """The dataset of an official mixture name; academic sets are built from `manual_dir/<builder>` first
    if `academic_dir` does not hold them yet."""
    if name in academic.LOADERS:
        return academic.load(name, academic_dir, _manual(name, manual_dir), split)
    if name.startswith("pixmo_"):
        return pixmo.load(name, data_dir, image_dir, split)
    raise KeyError(f"no reader for dataset {name!r}: known are the PixMo sets (pixmo.load) and "
                   f"{sorted(academic.LOADERS)}")


def _manual(name: str, manual_dir) -> str | None:
    return os.fspath(epath.Path(manual_dir, academic.LOADERS[name].builder)) if manual_dir else None


def academic_present(name: str, academic_dir, manual_dir="") -> bool:
    """Whether academic set `name` is built in `academic_dir` or has raw files in `manual_dir/<builder>`."""
    builder = academic.LOADERS[name].builder
    manual = _manual(name, manual_dir)
    built = (epath.Path(academic_dir, builder).exists()  # (tfds warns about a missing folder)
             and academic.builder_class(builder)(data_dir=os.fspath(academic_dir)).is_prepared())
    return built or bool(manual and paths.names(manual))


def stage2_sources(data_dir, image_dir, academic_dir, manual_dir="", names=()) -> dict[str, pixmo.Source]:
    """name -> source of the stage-2 mixture: `names`, or by default every PixMo set of
    `mixtures.STAGE2_MIXTURE` (their files must be there) and its academic sets that are present (the
    others are left out with a warning, as is android_control, which has no reader here)."""
    if names:
        return {n: load(n, data_dir, image_dir, academic_dir, manual_dir) for n in names}
    out = {}
    for name in (n for g in mixtures.STAGE2_MIXTURE for n in g.datasets):
        if name.startswith("pixmo_") or (name in academic.LOADERS and
                                         academic_present(name, academic_dir, manual_dir)):
            out[name] = load(name, data_dir, image_dir, academic_dir, manual_dir)
        else:
            logging.warning("stage 2: %s is not available (no reader, or not built in %s nor in %s); left out",
                            name, academic_dir, manual_dir or "a manual directory")
    return out
