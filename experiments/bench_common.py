"""What every `experiments/bench_*.py` shares: its flags, interleaved timing, and a result JSON that names
the commit, command and machine that made it.

Modes: the default (full), `--quick` (under 3 minutes on this project's 2-core CPU) and `--smoke` (the
smallest size, one timed call: the test suite's check that a benchmark still runs; its times mean nothing).
The JSON's top-level "speedup" is ours / reference of the worst row.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable

from etils import epath

from experiments import provenance


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """The shared flags (--quick, --smoke, --out); a benchmark adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer sizes and repeats (< 3 min on 2 CPU cores)")
    mode.add_argument("--smoke", action="store_true",
                      help="the smallest size, one timed call: checks the benchmark runs (times mean nothing)")
    parser.add_argument("--out", help="write the results as JSON here (a local or gs:// path)")
    return parser


def add_threads_flag(parser: argparse.ArgumentParser):
    """--threads: the CPU threads of both frameworks (default: every core)."""
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads of torch and XLA (1: both single-threaded, the fair comparison on a "
                             "machine other jobs load; default: every core)")


def set_threads(threads: int):
    """Both frameworks on `threads` cores: torch's intra-op threads = `threads` and, with fewer than this
    process may use, the process is pinned to the first `threads` of its cores (`os.sched_setaffinity`), which
    is what holds XLA:CPU to them: `--xla_cpu_multi_thread_eigen=false` does not (its YNNPACK fusions, every dot
    and what is fused into it, still split across the whole thread pool). Call before JAX's first computation
    and torch's first parallel op (threads started earlier keep their cores)."""
    import torch
    torch.set_num_threads(threads)
    cores = sorted(os.sched_getaffinity(0))
    if threads < len(cores):
        os.sched_setaffinity(0, cores[:threads])


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """Parses `argv` (default: the command line); `args.command` is the command that reproduces the run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "-m", f"experiments.{Path(script).stem}", *argv])
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


def stub_torchvision_ops() -> None:
    """Lets transformers (and the official code) import torchvision beside a torch build its compiled ops do
    not load with: `torchvision._meta_registrations` is stubbed; nothing run here calls those ops. Call it
    before the first transformers import."""
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


def stub_official_downloads() -> None:
    """Lets the official `olmo` package import where the packages of its remote-file helpers are absent (the
    GPU image: botocore alone is a 17 MB wheel): `olmo/util.py` imports boto3, botocore and cached_path at
    module level for S3 / GCS / Weka reads that no benchmark makes. Stand-ins register nothing and raise on
    use; where the real packages are installed they are used. Call it before importing `olmo`."""
    if importlib.util.find_spec("cached_path") is not None:
        return

    def exception_class(attr: str) -> type:  # the botocore exceptions olmo/util.py names
        if attr.startswith("__"):
            raise AttributeError(attr)
        return type(attr, (Exception,), {})

    def absent(name: str) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__getattr__ = exception_class
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, module)
        return sys.modules.setdefault(name, module)

    for name in ("boto3", "botocore", "botocore.exceptions", "botocore.config", "cached_path"):
        absent(name)
    schemes = absent("cached_path.schemes")
    schemes.SchemeClient = type("SchemeClient", (), {"recoverable_errors": ()})
    schemes.add_scheme_client = lambda client: None


def torch_device() -> str:
    """"cuda" when JAX runs on a GPU (torch must then have CUDA too), else "cpu"."""
    import jax
    if jax.default_backend() != "gpu":
        return "cpu"
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("JAX runs on a GPU but this torch has no CUDA: the comparison would be unfair")
    torch.backends.cuda.matmul.allow_tf32 = True  # JAX's default f32 matmul precision on GPUs
    return "cuda"


def interleaved_medians(calls: dict[str, Callable[[], Any]], repeats: int, min_seconds: float = 0.0,
                        per_turn: int = 3) -> dict[str, tuple[float, Any]]:
    """{name: (median seconds, last output)} of each call.

    The calls take turns, so a shared machine's changing load hits all of them alike. A turn is one untimed
    call, then `per_turn` timed ones (at most `repeats`) back to back: the untimed call absorbs the switch from
    the previous call's framework. After each parallel region PyTorch's OpenMP workers spin on the cores for
    milliseconds, so whatever runs right after a torch call runs on fewer cores (tiny text prefill on this
    project's 2-core CPU: ours 12.7 ms right after a torch call, 8.4 ms after one of ours; with
    OMP_WAIT_POLICY=PASSIVE 8.1 ms after a torch call). With one call the untimed call is its first only (the
    warm-up). Rounds go on until every call has `repeats` timed samples and the rounds took `min_seconds`
    (millisecond calls then get hundreds of samples, whose median a few preempted ones cannot move).
    """
    outputs, times = {}, {name: [] for name in calls}
    per_turn = max(1, min(per_turn, repeats))
    start = time.perf_counter()
    while min(map(len, times.values())) < repeats or time.perf_counter() - start < min_seconds:
        for name, call in calls.items():
            if len(calls) > 1 or name not in outputs:
                outputs[name] = call()
            for _ in range(per_turn):
                t0 = time.perf_counter()
                outputs[name] = call()
                times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(times[name]), outputs[name]) for name in calls}


def after_switch_median(call: Callable[[], Any], other: Callable[[], Any], repeats: int) -> float:
    """Median seconds of `call` timed right after an untimed `other`: the cost of switching frameworks
    that `interleaved_medians` keeps out of its times by not timing a turn's first call."""
    times = []
    for _ in range(repeats):
        other()
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def finish(result: dict, args: argparse.Namespace, speedup_label: str) -> dict:
    """Adds provenance and the mode, prints the speedup line and writes `--out`; returns the result."""
    result = {**provenance.describe(args.command), "mode": args.mode, **result}
    print(f"speedup ({speedup_label}): {result['speedup']:.2f}")
    if args.out:
        epath.Path(args.out).write_text(json.dumps(result, indent=1))
    return result
