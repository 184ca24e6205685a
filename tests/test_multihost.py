"""Multi-host training on one machine: 2 processes x 4 CPU devices (jax.distributed over gloo) train the
tiny model exactly as 1 process x 8 devices does; `initialize_from_env` is a no-op for one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import portpicker
import pytest

from molmo_jax import distributed, sharding

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multihost_worker.py"
STEPS = 3


def start_worker(workdir: Path, local_devices: int, **env: str) -> subprocess.Popen:
    """Text-only batches (crops 0) keep the three concurrent compilations short on a 2-core machine."""
    cmd = [sys.executable, str(WORKER), "--local-devices", str(local_devices), "--steps", str(STEPS),
           "--crops", "0", "--workdir", str(workdir)]
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
