"""`molmo-jax check-data` and `molmo-jax download`: a PixMo hub copy, checked and its images fetched
(registered in `molmo_jax.cli` via EXTENSIONS; the work is `data_pipelines.hub`).

    molmo-jax download pixmo --data-dir /data/pixmo --datasets pixmo-points pixmo-count --rate 5
    molmo-jax check-data pixmo --data-dir gs://bucket/pixmo
"""
from __future__ import annotations

import argparse
import sys

from molmo_jax.cli import Command, register


def _hub_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("collection", choices=["pixmo"], help="what to read (the PixMo hub repos)")
    parser.add_argument("--data-dir", required=True,
                        help="local or gs:// folder of hub repo copies (<data-dir>/pixmo-cap/data/train-*.parquet)")
    parser.add_argument("--image-dir", help="the image cache (default: <data-dir>/images, as training reads it)")


def _check_arguments(parser: argparse.ArgumentParser):
    _hub_arguments(parser)
    parser.add_argument("--datasets", nargs="+", default=(),
                        help="official dataset names (default: every one whose repo is in --data-dir)")


def _check(args) -> int:
    from data_pipelines import hub
    for result in hub.check(args.data_dir, args.image_dir, args.datasets):
        print(result.summary(), flush=True)
    return 0


def _download_arguments(parser: argparse.ArgumentParser):
    from data_pipelines import download
    defaults = download.DownloadOptions()
    _hub_arguments(parser)
    parser.add_argument("--datasets", nargs="+", default=(),
                        help="hub repos to fetch (pixmo-cap, pixmo-points, ...; default: every URL repo present)")
    parser.add_argument("--rate", type=float, default=defaults.per_host_rate,
                        help=f"most requests per second to one host (default {defaults.per_host_rate})")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help=f"concurrent fetches (default {defaults.workers})")


def _download(args) -> int:
    from data_pipelines import download, hub, pixmo
    options = download.DownloadOptions(workers=args.workers, per_host_rate=args.rate)
    try:
        reports = hub.download_repos(args.data_dir, args.image_dir, args.datasets, options)
    except KeyboardInterrupt:
        print("download interrupted: the images fetched so far are kept; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(hub.download_table(reports))
    names = [n for n, repo in pixmo.HUB_REPOS.items() if repo in reports]
    for result in hub.check(args.data_dir, args.image_dir, names):
        print(f"{result.name}: {100 * result.usable_share:.1f}% of {result.rows} rows usable")
    print("rerun the same command to resume: images already there are kept, failures are tried again")
    return 0


register(Command("check-data", "per PixMo dataset of a hub copy: rows, usable examples, drops by reason, images",
                 _check_arguments, _check))
register(Command("download", "fetch the images of PixMo hub copies (resumable, sha256-checked, rate-limited)",
                 _download_arguments, _download))
