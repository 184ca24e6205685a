"""`molmo-jax export` (and its alias `convert`): any checkpoint, a training run included, as a model
directory in the native, HF release or Orbax format.

    molmo-jax export --checkpoint runs/s1 --to hf_release --out s1_hf
    molmo-jax convert --checkpoint DIR --to orbax --out EXPORT_DIR
"""
from __future__ import annotations

import argparse

from molmo_jax.cli import entry_points

HELP = "write the model of any checkpoint (a training run included) as a native, HF release or Orbax model directory"
EXPORT_FORMATS = ("native", "hf_release", "orbax")  # molmo_jax.io.EXPORT_FORMATS (not imported: keeps --help fast)


def add_arguments(parser: argparse.ArgumentParser):
    entry_points.add_checkpoint_arguments(parser)
    parser.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="output format")
    parser.add_argument("--out", required=True, help="new (or empty) output directory (local or gs://)")


def run(args: argparse.Namespace) -> int:
    from molmo_jax import io
    out = io.export(args.checkpoint, args.out, args.to, vision=entry_points.vision(args))
    print(f"wrote {args.to} model (config, weights, tokenizer) to {out}")
    return 0
