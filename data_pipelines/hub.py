"""A local (or gs://) copy of the PixMo hub repos: what of it can train, and fetching its images.

    molmo-jax check-data pixmo --data-dir D            # per dataset: rows, usable, drops by reason, images
    molmo-jax download pixmo --data-dir D --datasets pixmo-points pixmo-count --rate 5

`check` reads every dataset of the official mixture names (`pixmo.HUB_REPOS`) whose repo is in
`data_dir`, whole hub train split (no validation carve-out), as training reads it: the reader's row
checks and missing images (`pixmo.TableSource.stats`), then every example (sha256 against its rows, pixel
points against the image size, the image header decodable). `download` fetches the URL images of the
hub repos with `download.download` and reports, per repo, fetched / already there / 404 / hash mismatch /
other, then the usable share of each dataset that reads the repo.
"""
from __future__ import annotations

import collections
import dataclasses
import os
from typing import Sequence

import numpy as np
import tqdm
from etils import epath

from data_pipelines import download, pixmo
from data_pipelines.pixmo_checks import BadExample


@dataclasses.dataclass
class DatasetCheck:
    """One dataset of a hub copy: hub rows read, rows and examples that would train, drops (reason ->
    rows) and distinct images present / missing (URL sets and clocks)."""
    name: str
    repo: str
    rows: int
    usable_rows: int
    examples: int
    drops: dict[str, int]
    images: dict[str, int]

    @property
    def usable_share(self) -> float:
        return self.usable_rows / self.rows if self.rows else 0.0

    def summary(self) -> str:
        images = (f"; images {self.images['present']} present, {self.images['missing']} missing"
                  if self.images else "")
        head = (f"{self.name} ({self.repo}): {self.rows} rows, {self.usable_rows} usable "
                f"({100 * self.usable_share:.1f}%) in {self.examples} examples{images}")
        drops = sorted(((n, r) for r, n in self.drops.items() if n), key=lambda d: (-d[0], d[1]))
        return "\n".join([head] + [f"  dropped {n} x {r}" for n, r in drops])


def present_names(data_dir, names: Sequence[str] = ()) -> list[str]:
    """`names` (checked to be known), or every official name whose hub repo is in `data_dir`."""
    unknown = sorted(set(names) - set(pixmo.HUB_REPOS))
    if unknown:
        raise KeyError(f"unknown PixMo dataset(s) {unknown}; known: {sorted(pixmo.HUB_REPOS)}")
    found = [n for n in names or pixmo.HUB_REPOS if _has_train_files(data_dir, n)]
    if not found:
        repos = sorted(set(pixmo.HUB_REPOS.values()))
        raise FileNotFoundError(f"{data_dir}: holds none of the PixMo hub repos {repos}"
                                f" (download them with `huggingface-cli download allenai/<repo> --repo-type "
                                f"dataset --local-dir {data_dir}/<repo>`)")
    return found


def _has_train_files(data_dir, name: str) -> bool:
    config = name[len("pixmo_docs_"):] if name.startswith("pixmo_docs_") else None
    try:
        return bool(pixmo.parquet_files(pixmo.hub_files(data_dir, pixmo.HUB_REPOS[name], "train", config)))
    except FileNotFoundError:
        return False


def check_dataset(name: str, data_dir, image_dir, progress: bool = True) -> DatasetCheck:
    """Reads every example of dataset `name` as training would and counts what is dropped and why."""
    source = pixmo.load(name, data_dir, image_dir, "train", n_val=0)
    drops = collections.Counter(source.stats.drops)
    usable_rows, examples, rng = 0, 0, np.random.RandomState(0)
    for index in tqdm.trange(len(source), desc=name, unit="ex", disable=not progress):
        rows = len(source.groups[index])
        try:
            example, mismatched = source.read(index, rng)
            pixmo.image_size(example["image"])  # the header decodes
        except BadExample as e:
            drops[e.reason] += rows
            continue
        drops["sha256_mismatch"] += mismatched
        usable_rows += rows - mismatched
        examples += 1
    return DatasetCheck(name, pixmo.HUB_REPOS[name], source.stats.rows, usable_rows, examples,
                        dict(drops), dict(source.stats.images))


def check(data_dir, image_dir=None, names: Sequence[str] = ()) -> list[DatasetCheck]:
    """`check_dataset` of `names` (default: every dataset whose repo is in `data_dir`)."""
    image_dir = image_dir or default_image_dir(data_dir)
    return [check_dataset(n, data_dir, image_dir) for n in present_names(data_dir, names)]


def default_image_dir(data_dir) -> str:
    """The image cache the trainer reads by default: `<data_dir>/images`."""
    return os.fspath(epath.Path(data_dir) / "images")


def download_repos(data_dir, image_dir=None, repos: Sequence[str] = (),
                   options: download.DownloadOptions = download.DownloadOptions()) -> dict[str, download.Report]:
    """repo -> download report of the URL images of every split of `repos` (default: every URL repo in
    `data_dir`); hashes are checked wherever the hub gives them."""
    unknown = sorted(set(repos) - set(pixmo.URL_REPOS))
    if unknown:
        raise KeyError(f"{unknown}: not PixMo repos with image URLs; those are {list(pixmo.URL_REPOS)}")
    image_dir = image_dir or default_image_dir(data_dir)
    repos = [r for r in repos or pixmo.URL_REPOS if epath.Path(data_dir, r).exists()]
    if not repos:
        raise FileNotFoundError(f"{data_dir}: holds none of the PixMo repos with image URLs {list(pixmo.URL_REPOS)}")
    return {repo: download.download(pixmo.image_items(pixmo.hub_files(data_dir, repo, "*"), repo), image_dir,
                                    options, desc=repo)
            for repo in repos}


def download_table(reports: dict[str, download.Report]) -> str:
    """One line per repo: its URL outcomes."""
    lines = []
    for repo, report in reports.items():
        outcomes = report.outcomes()
        lines.append(f"{repo}: {sum(outcomes.values())} images: "
                     + ", ".join(f"{n} {kind}" for kind, n in outcomes.items()))
    return "\n".join(lines)
