"""`molmo-jax finetune`: fine-tune a checkpoint on a JSONL file (full or LoRA) and export it; the data
flags it shares with `validate-data`.

    molmo-jax finetune --checkpoint Molmo-7B-D-0924 --data data.jsonl --workdir runs/ft --lora-rank 8
"""
from __future__ import annotations

import argparse
import sys

from etils import epath

from molmo_jax.cli import entry_points
from molmo_jax.config import COMPONENTS

HELP = "fine-tune a checkpoint on a JSONL file (full or LoRA) and export it"


def add_data_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--image-dir", type=epath.Path,
                        help="download cache of the file's URL images (default: .image_cache next to the file)")
    parser.add_argument("--allow-outside-images", action="store_true",
                        help="accept image paths outside the data file's folder (refused by default)")
    parser.add_argument("--seq-len", type=int, help="tokens per example, image tokens included (default 2304)")


def fetch_urls(data) -> None:
    """Downloads the URL images of `data` (a `user_data.UserData`) missing from its cache."""
    from data_pipelines import user_data
    if data.urls():
        print(user_data.download_images(data).summary())


def validate_with_model(cfg, tokenizer=None):
    """The fine-tuning config's data checked with its model's tokenizer (`factory.validate_user_data`;
    `tokenizer`: the checkpoint's, loaded here unless given)."""
    from data_pipelines import factory
    from molmo_jax.tokenizer import load_tokenizer
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.init_from, cfg.model.llm.vocab_size)
    return factory.validate_user_data(cfg, tokenizer)


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--checkpoint", required=True, type=epath.Path,
                        help="checkpoint to start from: native, HF release, Orbax export or training run directory "
                             "(a released model is the HF hub repo allenai/<name>, e.g. allenai/Molmo-7B-D-0924)")
    parser.add_argument("--data", required=True, type=epath.Path, help="JSONL file in the user data format")
    parser.add_argument("--workdir", required=True, type=epath.Path,
                        help="checkpoints, metrics and export/{hf_release,orbax}; rerunning resumes")
    add_data_arguments(parser)
    parser.add_argument("--lora-rank", type=int, default=0, help="LoRA rank (default 0: full fine-tuning)")
    parser.add_argument("--lora-targets", help="regex of the adapted Dense modules' param paths "
                                               "(default: llm/blocks/attention/(query|value))")
    parser.add_argument("--freeze", action="append", choices=COMPONENTS,
                        help="component kept fixed (repeatable; default: none, all three with LoRA)")
    parser.add_argument("--mix-pixmo-lite", type=float, default=0.0,
                        help="fraction of each batch drawn from PixMo-lite (default 0)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--checkpoint-every", type=int,
                        help="steps between checkpoints (default: steps / 10, at most 100; 0: by time only)")
    parser.add_argument("--checkpoint-every-minutes", type=float, default=0.0,
                        help="also checkpoint once this many minutes passed since the last one (default 0: off)")
    parser.add_argument("--lr", type=float, help="peak learning rate of every component (default: the recipe's)")
    parser.add_argument("--batch-size", type=int, help="global batch (default 16)")
    parser.add_argument("--mesh", help="device mesh, e.g. fsdp=8 or data=2,fsdp=16,tensor=4 (as `molmo-jax plan` "
                                       "takes it; default: fsdp over every device)")
    parser.add_argument("--eval-every", type=int, default=0,
                        help="score the --eval-task sets every N steps into the log and <workdir>/eval/<step>/")
    parser.add_argument("--eval-task", action="append", default=[],
                        help="a `molmo-jax eval` task for --eval-every (repeatable)")
    parser.add_argument("--eval-examples", type=int, default=100, help="examples of each eval task (default 100)")
    parser.add_argument("--eval-data-dir", type=epath.Path, help="where the eval tasks' sets are")
    parser.add_argument("--export-every", type=int, default=0,
                        help="also export every N steps to <workdir>/export_steps/<step>/ (default 0: never)")


def data_config(cfg, args, path):
    """`cfg` with the data flags shared by validate-data and finetune."""
    cfg.data.path = str(path)
    cfg.data.image_dir = str(args.image_dir or "")
    cfg.data.allow_outside_images = args.allow_outside_images
    if args.seq_len is not None:
        cfg.data.seq_len = args.seq_len
    return cfg


def _config(args):
    from molmo_jax import plan
    from molmo_jax.recipes import finetune
    cfg = data_config(finetune.get_config(str(args.checkpoint), args.lora_rank, args.steps), args, args.data)
    cfg.data.mix_pixmo_lite = args.mix_pixmo_lite
    if args.lora_targets:
        cfg.lora.targets = args.lora_targets
    if args.freeze is not None:
        cfg.freeze = tuple(args.freeze)
    if args.lr is not None:
        cfg.optim.lr.update({c: args.lr for c in COMPONENTS})
    if args.batch_size is not None:
        cfg.data.global_batch = args.batch_size
    if args.mesh:
        cfg.mesh = tuple(plan.parse_mesh(args.mesh).values())
    if args.checkpoint_every is not None:
        cfg.checkpoint.every = args.checkpoint_every
    cfg.checkpoint.every_minutes = args.checkpoint_every_minutes
    return cfg


def run(args: argparse.Namespace) -> int:
    """Exit status 0 when finished and exported; 128 + signal number (143 SIGTERM, 130 SIGINT) when a
    signal stopped it (checkpointed, nothing exported: rerunning resumes)."""
    from data_pipelines import factory, user_data
    from molmo_jax import io
    from molmo_jax.train import finetune, hooks, trainer
    entry_points.check_release_dir(args.checkpoint)
    cfg = _config(args)
    model_cfg = io.load_config(cfg.init_from)
    periodic = hooks.Periodic(args.eval_every, tuple(args.eval_task), args.eval_examples,
                              str(args.eval_data_dir or ""), args.export_every)
    tokenizer = io.load_tokenizer(cfg.init_from, model_cfg)
    every = periodic.hooks(model_cfg, cfg.data, args.workdir, tokenizer, cfg.export)
    fetch_urls(user_data.UserData(args.data, args.image_dir, args.allow_outside_images))
    report = validate_with_model(cfg, tokenizer)
    if not report.ok:
        print(report.summary(), file=sys.stderr)
        raise ValueError(f"{args.data}: {len(report.bad_lines)} bad rows (listed above); fix or remove them")
    try:
        _, exports = finetune.run(cfg, args.workdir, factory.make_data, hooks=every, tokenizer=tokenizer)
    except trainer.TrainingStopped as stopped:
        print(stopped, file=sys.stderr)
        return stopped.exit_code
    for fmt, path in exports.items():
        print(f"wrote {fmt} checkpoint to {path}")
    return 0
