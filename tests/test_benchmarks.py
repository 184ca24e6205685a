"""Every experiments/bench_*.py runs end to end in its --smoke mode (smallest size, one timed call) and
writes a result JSON with the shared frame: speedup, rows, commit, command and machine.

In-process (each subprocess would pay the imports again); torch's thread count is restored afterwards
because bench_preprocess pins it to one.
"""
import importlib
import json
import math
import os
import pathlib
import subprocess
import time

import pytest
import torch

from experiments import bench_common, provenance

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
    if name == "bench_forward":
        assert all(r["ours_after_reference_tokens_per_s"] > 0 for r in result["rows"])
    if name == "bench_moe":  # the three MoE paths timed, the backend's pick recorded
        assert all(min(r[f"{path}_tokens_per_s"] for path in ("ragged", "blocked", "dense")) > 0 and
                   r["auto_path"] == "blocked" for r in result["rows"])


def test_interleaved_medians_leave_the_switch_untimed():
    """Each turn's first call, right after another call's turn, is not timed: a call that is slow only when
    it follows another (PyTorch's OpenMP workers still spinning) keeps its fast median."""
    log = []

    def call(name, switch_cost=0.02):
        def run():
            if log and log[-1] != name:
                time.sleep(switch_cost)
            log.append(name)
            return name
        return run

    timed = bench_common.interleaved_medians({"a": call("a"), "b": call("b")}, repeats=5)
    assert {name: out for name, (_, out) in timed.items()} == {"a": "a", "b": "b"}
    assert all(seconds < 0.01 for seconds, _ in timed.values())
    assert log[:8] == ["a"] * 4 + ["b"] * 4  # a turn: one untimed call, then 3 timed
    assert log.count("a") == log.count("b") == 8  # 2 turns reach 5 timed calls

    assert bench_common.after_switch_median(call("a"), call("b"), repeats=3) >= 0.02  # the switch, timed

    log.clear()
    timed = bench_common.interleaved_medians({"a": call("a")}, repeats=4)
    assert len(log) == 1 + 2 * 3  # one call: the warm-up is its only untimed call


def test_machine_names_the_vector_isa():
    flags = next((line.split(":", 1)[1].split() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("flags")), [])
    described = provenance.machine()
    assert f", {os.cpu_count()} CPU cores; jax cpu x" in described
    if "avx512f" in flags:
        assert "(AVX-512)," in described
    elif "avx2" in flags:
        assert "(AVX2)," in described


def test_set_threads_pins_both_frameworks():
    """--threads N pins the process to N of its cores (what holds XLA:CPU's thread pool to them) and sets
    torch's threads; every core a process may use leaves it unpinned."""
    cores, threads = os.sched_getaffinity(0), torch.get_num_threads()
    try:
        bench_common.set_threads(len(cores))
        assert os.sched_getaffinity(0) == cores
        bench_common.set_threads(1)
        assert os.sched_getaffinity(0) == {min(cores)} and torch.get_num_threads() == 1
    finally:
        os.sched_setaffinity(0, cores)
        torch.set_num_threads(threads)


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


OFFICIAL_SRC = pathlib.Path(os.environ.get("MOLMO_OFFICIAL_SRC", "/tmp/r/molmo"))
OFFICIAL_PYTHON = os.environ.get("MOLMO_OFFICIAL_PYTHON", "/work/venv-official/bin/python")


@pytest.mark.skipif(not (OFFICIAL_SRC / "olmo").is_dir() or not os.path.exists(OFFICIAL_PYTHON),
                    reason="needs an allenai/molmo checkout (MOLMO_OFFICIAL_SRC) and a python with transformers "
                           "4.46.3 (MOLMO_OFFICIAL_PYTHON)")
def test_official_train_step_on_the_smoke_molmo_row():
    """The official train step of bench_train --official-src (its own process, our initial params) starts
    from the loss our step starts from: same params, batch, masks and z-loss (bf16 autocast vs bf16)."""
    from experiments import bench_train
    official = bench_train.official_molmo_row("full", 1, 2, 1, True, str(OFFICIAL_SRC), OFFICIAL_PYTHON, "")
    ours = bench_train.molmo_row("full", 1, 2, 1, True)
    assert official["tokens_per_s"] > 0 and official["seq_len"] == ours["seq_len"]
    assert "whole_layer" in official["reference"]
    assert official["first_step_loss"] == pytest.approx(ours["first_step_loss"], abs=0.02)


def test_profile_top_ops(tmp_path):
    from experiments import bench_train
    traced = bench_train.profile_molmo(str(tmp_path / "trace"), 1, 2, smoke=True)  # the smoke run's Molmo row
    ops = traced["top_ops_ms_calls"]
    assert traced["timeline"] == "host" and 0 < len(ops) <= 15  # CPU: XLA's ops on the host timeline
    assert not any(name.startswith("$") for name in ops)  # Python frames left out
    totals = [ms for ms, _ in ops.values()]
    assert totals == sorted(totals, reverse=True) and all(calls >= 1 for _, calls in ops.values())


def test_generate_configs_flag_and_the_7b_d_width_config():
    from experiments import bench_forward, bench_generate
    with pytest.raises(SystemExit):  # one line naming the flag, before any model is built
        bench_generate.main(["--smoke", "--configs", "tiny,huge"])
    wide = bench_forward.GPU_CONFIGS["7b-d-width"]()
    assert (wide.llm.d_model, wide.llm.mlp_hidden, wide.llm.n_layers, wide.vit.n_layers) == (3584, 18944, 2, 23)
