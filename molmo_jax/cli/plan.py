"""`molmo-jax plan`: per-device memory of a training step (`molmo_jax.plan`).

    molmo-jax plan --config Molmo-7B-D-0924 --mesh fsdp=256 --batch 256 --seq 2304
"""
from __future__ import annotations

import argparse
import json

from etils import epath

from molmo_jax import config as config_lib
from molmo_jax import plan

HELP = "per-device memory of a training step for a config, mesh and batch"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--config", required=True, action="append",
                        help="model name (repeatable), e.g. Molmo-7B-D-0924 or tiny-qwen2")
    parser.add_argument("--mesh", required=True, action="append",
                        help="mesh (repeatable), e.g. fsdp=256 or data=2,fsdp=16,tensor=4")
    parser.add_argument("--batch", type=int, required=True, help="global batch (sequences per step)")
    parser.add_argument("--seq", type=int, required=True, help="sequence length")
    parser.add_argument("--crops", type=int, help="image crops per example (default: the config's max)")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--remat", choices=config_lib.REMAT_POLICIES, help="default: the config's")
    parser.add_argument("--dtype", choices=config_lib.DTYPES, default="bfloat16", help="compute dtype")
    parser.add_argument("--headroom", type=float, default=plan.DEFAULT_HEADROOM,
                        help="usable fraction of device memory")
    parser.add_argument("--compile", action="store_true", help="add XLA's memory analysis (local meshes)")
    parser.add_argument("--json", help="also write the plans as JSON to this file")


def run(args: argparse.Namespace) -> int:
    plans = []
    for name in args.config:
        cfg = config_lib.get_config(name)
        cfg.dtype = args.dtype
        if args.remat:
            cfg.vit.remat_policy = cfg.llm.remat_policy = args.remat
        plans += [plan.plan(cfg, mesh, args.batch, args.seq, args.crops, args.grad_accum, args.headroom,
                            args.compile) for mesh in args.mesh]
    print(plan.table(plans))
    for p in plans:
        print(plan.details(p))
    if args.json:
        epath.Path(args.json).write_text(json.dumps(plans, indent=1))
    return 0
