"""`molmo-jax eval`: score checkpoints on a benchmark or the paper's table (`molmo_jax.eval.runner`).

    molmo-jax eval --checkpoint DIR --task chart_qa [--split test] --data-dir D --out OUT
    molmo-jax eval --checkpoint A --checkpoint B --task paper --data-dir D --out OUT   # the paper's table
"""
from __future__ import annotations

import argparse
import functools
import sys

from etils import epath

from molmo_jax.eval.answers import PREDICTIONS_SUFFIX
from molmo_jax.eval.tasks import TASKS

HELP = "score checkpoints on a benchmark or the paper's table (resumable predictions, metrics, submission files)"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--checkpoint", required=True, type=epath.Path, action="append",
                        help="checkpoint directory (molmo_jax.load); repeat to compare several")
    parser.add_argument("--vision-json", type=epath.Path, help="JSON of official ViT fields for an HF release")
    parser.add_argument("--task", required=True, choices=["paper", *sorted(TASKS)],
                        help="a benchmark, or 'paper': the 11 of the paper's table")
    parser.add_argument("--split", help="default: the task's (see molmo_jax/eval/tasks.py)")
    parser.add_argument("--data-dir", type=epath.Path, help="the eval sets' files (data_pipelines/eval_sets.py)")
    parser.add_argument("--image-dir", type=epath.Path, help="PixMo image cache (default <data-dir>/images)")
    parser.add_argument("--n", type=int, help="number of examples (default: all)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="prompts per step; split over all devices when they divide it")
    parser.add_argument("--out", type=epath.Path, help="directory for <task>.predictions.jsonl (resumed), <task>.json, "
                                                 "submission files, pointing drawings, the paper table")
    parser.add_argument("--draw", type=int, default=4, help="pointing drawings to write (gold | predicted)")
    parser.add_argument("--max-new-tokens", type=int, help="default: the task's (12; 192 pointing/counting)")
    parser.add_argument("--max-crops", type=int, help="default: the task's (36 high-res; 12 low-res)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples' formatting rngs")


def run(args: argparse.Namespace) -> int:
    """Runs `_eval_tasks`; an interrupted run says where its answers are kept and how to resume."""
    try:
        return _eval_tasks(args)
    except KeyboardInterrupt:
        kept = (f"the answers so far are in {args.out}/**/*{PREDICTIONS_SUFFIX}; " if args.out else
                "nothing kept (no --out); ")
        print(f"molmo-jax eval: interrupted; {kept}run the same command again to resume", file=sys.stderr)
        return 130


def _eval_tasks(args) -> int:
    import molmo_jax
    from molmo_jax import paths
    from molmo_jax.cli import entry_points
    from molmo_jax.eval import runner
    mesh = runner.data_parallel_mesh(args.batch_size)
    vision = entry_points.vision(args)
    names = [p.name for p in args.checkpoint]
    if len(set(names)) < len(names):
        raise ValueError(f"--checkpoint directories need distinct names, got {names}")
    options = dict(n=args.n, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                   max_crops=args.max_crops, seed=args.seed, image_dir=args.image_dir, resume=True)
    if args.task == "paper":
        if args.split:
            raise ValueError("--task paper runs each benchmark's own split; drop --split")
        bundles = {name: functools.partial(molmo_jax.load, path, mesh=mesh, vision=vision, progress=True)
                   for name, path in zip(names, args.checkpoint)}
        checkpoints = {name: str(paths.absolute(path)) for name, path in zip(names, args.checkpoint)}
        runner.evaluate_paper(bundles, args.data_dir, args.out, paths=checkpoints, **options)
        if args.out:
            print(f"wrote {args.out / 'paper.md'}, paper.json, paper.png")
        return 0
    runner.open_dataset(TASKS[args.task], args.split, args.data_dir, args.image_dir)  # fail before loading a model
    for name, path in zip(names, args.checkpoint):
        out = args.out if args.out is None or len(names) == 1 else args.out / name
        runner.evaluate(molmo_jax.load(path, mesh=mesh, vision=vision, progress=True), args.task, out_dir=out,
                        draw=args.draw, split=args.split, data_dir=args.data_dir,
                        checkpoint=str(paths.absolute(path)), **options)
        if out:
            print(f"wrote {out / args.task}.json")
    return 0
