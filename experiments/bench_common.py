"""What every `experiments/bench_*.py` shares: its flags, interleaved timing, and a result JSON that names
the commit, command and machine that made it.

Modes: the default (full), `--quick` (under 3 minutes on this project's 2-core CPU) and `--smoke` (the
smallest size, one timed call: the test suite's check that a benchmark still runs; its times mean nothing).
The JSON's top-level "speedup" is ours / reference of the worst row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
from etils import epath

ROOT = Path(__file__).resolve().parents[1]


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """The shared flags (--quick, --smoke, --out); a benchmark adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer sizes and repeats (< 3 min on 2 CPU cores)")
    mode.add_argument("--smoke", action="store_true",
                      help="the smallest size, one timed call: checks the benchmark runs (times mean nothing)")
    parser.add_argument("--out", help="write the results as JSON here (a local or gs:// path)")
    return parser


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, script: str) -> argparse.Namespace:
    """Parses `argv` (default: the command line); `args.command` is the command that reproduces the run."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.command = shlex.join(["python", "-m", f"experiments.{Path(script).stem}", *argv])
    args.mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    return args


def interleaved_medians(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, Any]]:
    """{name: (median seconds, last output)} of each call, after one warm-up call each.

    The calls take turns (A B A B ...), so a shared machine's changing load hits all of them alike.
    """
    outputs = {name: call() for name, call in calls.items()}
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            outputs[name] = call()
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times[name]), outputs[name]) for name in calls}


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(command: str) -> dict:
    """The commit (with "+dirty" for uncommitted changes), the command and the machine."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    if commit != "unknown" and _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    devices = jax.devices()
    return {"commit": commit,
            "command": command,
            "machine": {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "backend": jax.default_backend(),
                        "device": devices[0].device_kind, "device_count": len(devices),
                        "python": platform.python_version(), "jax": jax.__version__}}


def finish(result: dict, args: argparse.Namespace, speedup_label: str) -> dict:
    """Adds provenance and the mode, prints the speedup line and writes `--out`; returns the result."""
    result = {**provenance(args.command), "mode": args.mode, **result}
    print(f"speedup ({speedup_label}): {result['speedup']:.2f}")
    if args.out:
        epath.Path(args.out).write_text(json.dumps(result, indent=1))
    return result
