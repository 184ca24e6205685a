"""experiments/bench_pipeline.py end to end at minimal sizes (one config, threads only).

Runs in a subprocess: the bench times a one-device train step, the test session simulates 8 devices.
"""
import json
import subprocess
import sys

import pytest


def test_bench_pipeline_writes_rows_and_speedup(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, "-m", "experiments.bench_pipeline", "--quick", "--configs", "tiny",
                    "--workers", "0", "--out", str(out), "--workdir", str(tmp_path)], check=True, timeout=120)
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["config"] == "tiny" and row["workers"] == 0 and row["train_batch"] == 8
    assert row["pipeline_examples_per_s"] > 0 and row["train_examples_per_s"] > 0
    assert result["speedup"] == pytest.approx(row["pipeline_examples_per_s"] / row["train_examples_per_s"])
