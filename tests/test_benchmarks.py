"""Every experiments/bench_*.py runs end to end in its --smoke mode (smallest size, one timed call) and
writes a result JSON with the shared frame: speedup, rows, commit, command and machine.

In-process (each subprocess would pay the imports again); torch's thread count is restored afterwards
because bench_preprocess pins it to one.
"""
import importlib
import json
import math
import pathlib
import subprocess

import pytest
import torch

from experiments import provenance

BENCHMARKS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "experiments").glob("bench_*.py")
                    if p.stem != "bench_common")


def test_every_benchmark_is_listed():
    assert BENCHMARKS == ["bench_forward", "bench_generate", "bench_moe", "bench_pipeline", "bench_preprocess",
                          "bench_train"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_benchmark_smoke(name, tmp_path):
    out = tmp_path / f"{name}.json"
    threads = torch.get_num_threads()
    try:
        returned = importlib.import_module(f"experiments.{name}").main(["--smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    result = json.loads(out.read_text())
    assert result == json.loads(json.dumps(returned))
    assert result["mode"] == "smoke" and result["rows"]
    assert result["command"] == f"python -m experiments.{name} --smoke --out {out}"
    assert result["commit"] == provenance.commit() != "unknown"
    assert "CPU cores; jax cpu x" in result["machine"]
    speedup = result["speedup"]
    assert name == "bench_generate" and math.isnan(speedup) or speedup > 0
    if name == "bench_train":  # the tiny Molmo-shaped row and the crop-budget row (issue 20)
        molmo, = result["molmo_rows"]
        assert molmo["tokens_per_s"] > 0 and molmo["model_flops"] == sum(molmo["model_flops_by_component"].values())
        assert all(molmo["model_flops_by_component"][c] > 0 for c in ("vit", "connector", "llm"))
        assert result["crop_budget"]["real_crops"] < result["crop_budget"]["crop_slots"]
    if name == "bench_moe":  # both MoE paths timed, the backend's pick recorded
        assert all(r["ragged_tokens_per_s"] > 0 and r["dense_tokens_per_s"] > 0 and r["auto_path"] == "dense"
                   for r in result["rows"])


def test_commit_is_dirty_for_code_changes_only(tmp_path):
    """Rewriting a stored result or the README does not mark the commit "+dirty"; a code change does."""
    git = lambda *args: subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                                       check=True, capture_output=True)
    (tmp_path / "experiments" / "results").mkdir(parents=True)
    files = {"experiments/results/r.json": "{}", "README.md": "a", "code.py": "x = 1"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "init")
    clean = provenance.commit(tmp_path)
    assert clean and "+dirty" not in clean
    (tmp_path / "experiments/results/r.json").write_text('{"new": 1}')
    (tmp_path / "README.md").write_text("b")
    assert provenance.commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2")
    assert provenance.commit(tmp_path) == clean + "+dirty"
