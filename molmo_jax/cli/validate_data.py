"""`molmo-jax validate-data`: check every row of a fine-tuning JSONL file (exit status 1 if any is bad).

    molmo-jax validate-data data.jsonl [--download] [--checkpoint Molmo-7B-D-0924]
"""
from __future__ import annotations

import argparse

from etils import epath

from molmo_jax.cli import finetune as finetune_command

HELP = "check every row of a fine-tuning JSONL file (exit status 1 if any is bad)"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("file", type=epath.Path,
                        help="JSONL file in the user data format (data_pipelines/user_data.py)")
    finetune_command.add_data_arguments(parser)
    parser.add_argument("--download", action="store_true", help="fetch URL images missing from the cache first")
    parser.add_argument("--checkpoint", type=epath.Path,
                        help="the checkpoint to fine-tune: also checks that every row has an answer token "
                             "within --seq-len")


def run(args: argparse.Namespace) -> int:
    from data_pipelines import user_data
    if args.download:
        finetune_command.fetch_urls(user_data.UserData(args.file, args.image_dir))
    if args.checkpoint:
        from molmo_jax.recipes import finetune
        cfg = finetune_command.data_config(finetune.get_config(str(args.checkpoint)), args, args.file)
        report = finetune_command.validate_with_model(cfg)
    else:
        report = user_data.validate(args.file, args.image_dir, args.allow_outside_images)
    print(report.summary())
    return 0 if report.ok else 1
