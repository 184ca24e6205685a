"""`molmo-jax check-data`: per PixMo dataset of a hub copy, its rows, usable examples, drops by reason and
images (`data_pipelines.hub`); the flags it shares with `download`.

    molmo-jax check-data pixmo --data-dir gs://bucket/pixmo
"""
from __future__ import annotations

import argparse

HELP = "per PixMo dataset of a hub copy: rows, usable examples, drops by reason, images"


def add_hub_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("collection", choices=["pixmo"], help="what to read (the PixMo hub repos)")
    parser.add_argument("--data-dir", required=True,
                        help="local or gs:// folder of hub repo copies (<data-dir>/pixmo-cap/data/train-*.parquet)")
    parser.add_argument("--image-dir", help="the image cache (default: <data-dir>/images, as training reads it)")


def add_arguments(parser: argparse.ArgumentParser):
    add_hub_arguments(parser)
    parser.add_argument("--datasets", nargs="+", default=(),
                        help="official dataset names (default: every one whose repo is in --data-dir)")


def run(args: argparse.Namespace) -> int:
    from data_pipelines import hub
    for result in hub.check(args.data_dir, args.image_dir, args.datasets):
        print(result.summary(), flush=True)
    return 0
