"""`molmo-jax download`: fetch the images of PixMo hub copies (`data_pipelines.hub`), resumable,
sha256-checked and rate-limited.

    molmo-jax download pixmo --data-dir /data/pixmo --datasets pixmo-points pixmo-count --rate 5
"""
from __future__ import annotations

import argparse
import sys

from molmo_jax.cli import check_data

HELP = "fetch the images of PixMo hub copies (resumable, sha256-checked, rate-limited)"


def add_arguments(parser: argparse.ArgumentParser):
    from data_pipelines import download
    defaults = download.DownloadOptions()
    check_data.add_hub_arguments(parser)
    parser.add_argument("--datasets", nargs="+", default=(),
                        help="hub repos to fetch (pixmo-cap, pixmo-points, ...; default: every URL repo present)")
    parser.add_argument("--rate", type=float, default=defaults.per_host_rate,
                        help=f"most requests per second to one host (default {defaults.per_host_rate})")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help=f"concurrent fetches (default {defaults.workers})")


def run(args: argparse.Namespace) -> int:
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
