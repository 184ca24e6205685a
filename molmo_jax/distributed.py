"""Multi-host set-up: start `jax.distributed` from the environment, build global batches per process.

Every process runs the same program. Launch one per host (or several on one machine, as the tests do):

    JAX_COORDINATOR_ADDRESS=10.0.0.1:1234 JAX_NUM_PROCESSES=4 JAX_PROCESS_ID=0 python -m experiments.train ...

`initialize_from_env()` is a no-op for a single process, so the same entry point serves both. On Cloud
TPU pods and SLURM, `JAX_DISTRIBUTED=auto` lets JAX discover the cluster itself.

Files: every process runs every hook and export; `barrier` lines them up around the files one process
writes (`molmo_jax.io`), and `host_copy` gathers params sharded over several processes' devices.

Data: process p loads rows `process_rows(global_batch)` of each global batch; `global_batch(local, mesh)`
assembles the per-process rows into global arrays sharded over the mesh's batch axes. `jax.devices()`
lists devices process-major, so `sharding.make_mesh` gives process p a contiguous block of batch rows.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import Mesh

from molmo_jax import sharding

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_AUTO = "JAX_DISTRIBUTED"


def initialize_from_env(coordinator_address: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Calls `jax.distributed.initialize` when this is one of several processes; returns whether it did.

    Arguments win over the environment variables JAX_COORDINATOR_ADDRESS ("host:port" of process 0),
    JAX_NUM_PROCESSES and JAX_PROCESS_ID. With one process (or none configured) nothing happens, unless
    JAX_DISTRIBUTED=auto asks JAX to detect the cluster (TPU pod, SLURM, ...).
    """
    env = os.environ if env is None else env
    if env.get(ENV_AUTO) == "auto":
        jax.distributed.initialize()
        return True
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR)
    num_processes = int(num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES, 1))
    if num_processes <= 1:
        return False
    process_id = process_id if process_id is not None else env.get(ENV_PROCESS_ID)
    if not coordinator_address or process_id is None:
        raise ValueError(f"{num_processes} processes need a coordinator address and a process id "
                         f"(arguments or ${ENV_COORDINATOR} and ${ENV_PROCESS_ID})")
    process_id = int(process_id)
    if not 0 <= process_id < num_processes:
        raise ValueError(f"process id {process_id} is not in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def process_rows(global_batch: int) -> slice:
    """The rows of a global batch this process loads (an equal, contiguous share per process)."""
    n, p = jax.process_count(), jax.process_index()
    if global_batch % n:
        raise ValueError(f"global batch {global_batch} is not divisible by {n} processes")
    share = global_batch // n
    return slice(p * share, (p + 1) * share)


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Global arrays, sharded over the mesh's batch axes, from this process's rows of each array
    (e.g. `{k: v[process_rows(B)] for k, v in full.items()}`); the global batch has
    `rows * process_count` rows."""
    return {k: jax.make_array_from_process_local_data(sharding.batch_sharding(mesh, np.ndim(v)), v)
            for k, v in local.items()}


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any one (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return bool(flag)
    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def barrier(name: str):
    """Returns once every process has called `barrier(name)` (the same name everywhere); no-op for one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def host_copy(tree: Any) -> Any:
    """Numpy copies of the arrays of `tree`, each whole on every process. An array sharded over several
    processes' devices is gathered (a collective: every process calls `host_copy` on the same tree; each
    array is replicated over the devices in turn, so the largest must fit on one device beside the rest)."""
    def copy(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return multihost_utils.process_allgather(x, tiled=True)
        return np.asarray(jax.device_get(x))
    return jax.tree.map(copy, tree)
