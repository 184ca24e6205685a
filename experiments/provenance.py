"""Where a stored result comes from: commit, command and machine, written into every result JSON.

    result = {"rows": ..., **provenance.describe()}
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import jax


def commit(root: Path = Path(__file__).resolve().parents[1]) -> str:
    """The checkout's commit (short hash, "+dirty" with uncommitted changes to anything but stored results and
    Markdown) in the checkout at `root`, or "unknown" outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)experiments/results", ":(exclude)*.md"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def machine() -> str:
    """e.g. "AMD EPYC 9R14 (AVX-512), 2 CPU cores; jax cpu x1" or "...; jax NVIDIA H200 x1". The widest x86
    vector ISA is named: boxes sharing the model name "AMD EPYC" ran this project's recipe 1.8x apart."""
    cpu = platform.processor() or platform.machine()
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
        flags = set(next(line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")))
        isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2")) if flag in flags), None)
        cpu += f" ({isa})" if isa else ""
    except (OSError, StopIteration):
        pass
    devices = jax.devices()
    return f"{cpu}, {os.cpu_count()} CPU cores; jax {devices[0].device_kind} x{len(devices)}"


def describe(command: str | None = None) -> dict[str, str]:
    """{"commit", "command", "machine"}; `command` defaults to this process's (`python -m <module> <args>`)."""
    if command is None:
        module = sys.modules["__main__"].__spec__
        program = f"python -m {module.name}" if module else f"python {sys.argv[0]}"
        command = " ".join([program, *sys.argv[1:]])
    return {"commit": commit(), "command": command, "machine": machine()}
