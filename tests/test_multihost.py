"""Multi-host training on one machine: 2 processes x 4 CPU devices (jax.distributed over gloo) train the
tiny model, evaluate and export it at the last step (`hooks.Periodic`) as 1 process x 8 devices does;
`initialize_from_env` is a no-op for one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import portpicker
import pytest

from molmo_jax import distributed, io, sharding

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multihost_worker.py"
TOKENIZER = REPO / "tests" / "fixtures" / "molmo_ref" / "qwen2_7b_d" / "tokenizer.json"
STEPS = 3
EXPORTS = ("orbax", "hf_release")
EVAL_TASK = "synthetic_clocks"  # one example: one image, 12 new tokens


def start_worker(workdir: Path, local_devices: int, **env: str) -> subprocess.Popen:
    """Text-only batches (crops 0) keep the three concurrent compilations short on a 2-core machine."""
    cmd = [sys.executable, str(WORKER), "--local-devices", str(local_devices), "--steps", str(STEPS),
           "--crops", "0", "--workdir", str(workdir), "--tokenizer", str(TOKENIZER),
           "--eval-task", EVAL_TASK, *(f"--export={fmt}" for fmt in EXPORTS)]
    return subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def losses(workdir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_like_one(tmp_path):
    port = portpicker.pick_unused_port()
    multi, single = tmp_path / "2x4", tmp_path / "1x8"
    workers = [start_worker(multi, 4, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                            JAX_PROCESS_ID=str(i)) for i in range(2)]
    reference = start_worker(single, 8)
    for proc in workers + [reference]:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-3000:]
    assert len(losses(multi)) == STEPS
    np.testing.assert_allclose(losses(multi), losses(single), rtol=0, atol=1e-5)
    assert (multi / "checkpoints" / str(STEPS)).is_dir()  # saved by both processes together
    assert_same_exports(multi / "export_steps" / str(STEPS), single / "export_steps" / str(STEPS))
    assert_same_eval(multi / "eval" / str(STEPS), single / "eval" / str(STEPS))


def leaves(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_leaves_with_path(params)}


def assert_same_exports(multi: Path, single: Path):
    """Each format of the 2-process export is complete and loads as the 1-process one: the same config and
    tokenizer, every tensor equal up to the order of the cross-process gradient sums (5e-8 measured)."""
    loaded = {}
    for fmt in EXPORTS:
        assert sorted(p.name for p in (multi / fmt).iterdir()) == sorted(p.name for p in (single / fmt).iterdir())
        (cfg, params), (cfg_1, params_1) = io.load(multi / fmt), io.load(single / fmt)
        assert cfg.to_dict() == cfg_1.to_dict()
        tokenizers = [io.load_tokenizer(d / fmt, cfg).tokenizer.to_str() for d in (multi, single)]
        assert tokenizers[0] == tokenizers[1]
        loaded[fmt], reference = leaves(params), leaves(params_1)
        assert loaded[fmt].keys() == reference.keys()
        for name, x in loaded[fmt].items():
            np.testing.assert_allclose(x, reference[name], rtol=0, atol=1e-6, err_msg=f"{fmt} {name}")
    for name, x in loaded["orbax"].items():  # the gathered hf_release weights are the Orbax shards' bit for bit
        np.testing.assert_array_equal(loaded["hf_release"][name], x, err_msg=name)


def assert_same_eval(multi: Path, single: Path):
    """The eval files exist once (process 0 wrote them) and hold the 1-process answers and scores."""
    assert sorted(p.name for p in multi.iterdir()) == [f"{EVAL_TASK}.json", f"{EVAL_TASK}.predictions.jsonl"]
    assert len((multi / f"{EVAL_TASK}.predictions.jsonl").read_text().splitlines()) == 2  # settings + 1 answer
    results = [json.loads((d / f"{EVAL_TASK}.json").read_text()) for d in (multi, single)]
    for result in results:
        del result["seconds"], result["files"]
    assert results[0] == results[1]


def test_single_process_is_a_no_op():
    assert distributed.initialize_from_env(env={}) is False
    assert distributed.initialize_from_env(env={"JAX_NUM_PROCESSES": "1"}) is False


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "need a coordinator address"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "need a coordinator address"),
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2", "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}, "not in"),
])
def test_incomplete_environment_is_an_error(env, message):
    with pytest.raises(ValueError, match=message):
        distributed.initialize_from_env(env=env)


def test_process_rows_and_global_batch():
    assert distributed.process_rows(8) == slice(0, 8)
    mesh = sharding.make_mesh((2, 4, 1))
    rows = np.arange(16 * 3).reshape(16, 3)
    batch = distributed.global_batch({"x": rows}, mesh)["x"]
    assert batch.shape == (16, 3) and len(batch.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(batch), rows)
