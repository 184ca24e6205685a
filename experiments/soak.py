"""Soak test: a long tiny-model training run with periodic checkpoints, evaluations and metric writes,
watching for leaks.

    python -m experiments.soak --quick      # 400 steps, a few minutes on a CPU
    python -m experiments.soak              # 2,000 steps

Trains the tiny Qwen2-family config (text-only synthetic batches, 1 device) with `trainer.train`:
metrics.jsonl + TensorBoard every `log_every` steps, async Orbax checkpoints every `checkpoint_every`
steps. Every `eval_every` steps the latest committed checkpoint is restored (`io.load_params`, as an
evaluation job reads them) and scored on held-out batches (mean loss). Every `sample_every` steps it
samples host RSS (/proc/self/statm), device memory (the device's bytes in use; on a CPU, which reports
none, the bytes of live jax arrays) and open file descriptors (/proc/self/fd).

Reported (JSON, --out; PNG next to it): least-squares slopes of RSS and device memory per 1,000 steps, as
a percentage of the value at the first sample after warm-up (the first `WARMUP` fraction of the steps:
compilation, allocator pools), and open file descriptors at the start and at the end. The slopes are
fitted to the samples taken just before a checkpoint step, when the previous async save has long been
committed: while a save is in flight its host copies and file handles are alive, a sawtooth that is not
a leak. Target: every slope under 1% per 1,000 steps. glibc's per-thread malloc arenas (Orbax and
TensorStore write from thread pools) make RSS creep up and level off over the first thousand steps;
`MALLOC_ARENA_MAX=2` removes that creep (README: both measured).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from data_pipelines import random_batches
from experiments import provenance
from molmo_jax import io, sharding
from molmo_jax.models.molmo import Molmo
from molmo_jax.recipes import stage1
from molmo_jax.train import trainer
from molmo_jax.train.loss import cross_entropy

MODES = {  # steps, checkpoint_every, eval_every, sample_every, log_every
    "quick": (400, 50, 100, 10, 10),
    "full": (2000, 100, 250, 20, 10),
}
WARMUP = 0.2
RESULTS = Path(__file__).parent / "results"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def device_bytes() -> int:
    stats = jax.devices()[0].memory_stats()
    if stats and "bytes_in_use" in stats:
        return int(stats["bytes_in_use"])
    return sum(x.nbytes for x in jax.live_arrays())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def soak_config(steps: int, checkpoint_every: int, log_every: int):
    cfg = stage1.get_config("tiny")
    cfg.optim.steps = steps
    cfg.data.update(crops=0, seq_len=32)
    cfg.checkpoint.update(every=checkpoint_every, max_to_keep=2)
    cfg.log_every = log_every
    return cfg


class Probe:
    """The training data, with a look at the process every `sample_every` batches and an evaluation of
    the latest checkpoint every `eval_every` (run when the trainer asks for the batch of that step)."""

    def __init__(self, cfg, workdir: Path, mesh, sample_every: int, eval_every: int):
        self.data = random_batches.RandomBatches(cfg.model, cfg.data.global_batch, cfg.data.seq_len, 0, cfg.data.seed)
        self.sample_every, self.eval_every = sample_every, eval_every
        self.checkpoints = workdir / "checkpoints"
        self.model_cfg, self.mesh = cfg.model, mesh
        held_out = random_batches.RandomBatches(cfg.model, cfg.data.global_batch, cfg.data.seq_len, 0, cfg.seed + 1)
        self.held_out = [trainer.host_batch(next(held_out)) for _ in range(2)]
        model = Molmo(cfg.model)
        self.loss = jax.jit(lambda p, b: cross_entropy(
            model.apply({"params": p}, b["input_ids"], position_ids=b["position_ids"]), b["labels"], b["loss_masks"]))
        self.samples, self.evals = [], []

    def __iter__(self):
        return self

    def __next__(self):
        step = self.data.next_index + 1  # the step this batch trains
        if step % self.sample_every == 0 or step == 1:
            self.samples.append((step, rss_bytes(), device_bytes(), open_fds()))
        if step % self.eval_every == 0:
            self.evals.append((step, *self.evaluate()))
        return next(self.data)

    def evaluate(self) -> tuple[int | None, float | None]:
        """(step, mean held-out loss) of the latest committed checkpoint ((None, None) before the first); an
        async save still in flight is not committed, so the step can lag the training step by a save or two."""
        committed = [int(p.name) for p in self.checkpoints.glob("*") if p.name.isdigit()]
        if not committed:
            return None, None
        params = io.load_params(self.checkpoints, self.model_cfg, self.mesh)
        sums = [jax.device_get(self.loss(params, b)) for b in self.held_out]
        return max(committed), float(sum(s[0].sum() for s in sums) / sum(s[1] for s in sums))

    def get_state(self):
        return self.data.get_state()

    def set_state(self, state):
        self.data.set_state(state)


def slope_percent(steps: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope per 1,000 steps as a percentage of the first value."""
    slope = np.polyfit(steps, values, 1)[0] if len(steps) > 1 else 0.0
    return float(100.0 * slope * 1000 / values[0])


def soak(mode: str, workdir: Path) -> dict:
    steps, checkpoint_every, eval_every, sample_every, log_every = MODES[mode]
    return run(soak_config(steps, checkpoint_every, log_every), workdir, eval_every, sample_every, mode)


def run(cfg, workdir: Path, eval_every: int, sample_every: int, mode: str = "custom") -> dict:
    mesh = sharding.make_mesh()
    fds_start = open_fds()
    probe = Probe(cfg, workdir, mesh, sample_every, eval_every)
    start = time.perf_counter()
    trainer.train(cfg, probe, workdir, mesh)
    seconds = time.perf_counter() - start
    samples = np.asarray(probe.samples, np.float64)
    between_saves = samples[:, 0] % (cfg.checkpoint.every or sample_every) == 0
    after = samples[(samples[:, 0] > WARMUP * cfg.optim.steps) & between_saves]
    return {
        "mode": mode, "steps": cfg.optim.steps, "seconds": round(seconds, 1),
        "checkpoint_every": cfg.checkpoint.every, "eval_every": eval_every, "log_every": cfg.log_every,
        "rss_mb_start": round(after[0, 1] / 2**20, 1), "rss_mb_end": round(samples[-1, 1] / 2**20, 1),
        "rss_slope_percent_per_1k_steps": round(slope_percent(after[:, 0], after[:, 1]), 3),
        "device_mb_start": round(after[0, 2] / 2**20, 2), "device_mb_end": round(samples[-1, 2] / 2**20, 2),
        "device_slope_percent_per_1k_steps": round(slope_percent(after[:, 0], after[:, 2]), 3),
        "device_memory": "bytes_in_use" if (jax.devices()[0].memory_stats() or {}).get("bytes_in_use")
        else "live jax arrays",
        "open_fds_start": fds_start, "open_fds_end": open_fds(),
        "evals": probe.evals, "samples": probe.samples,
        **provenance.describe(),
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),  # glibc's default: 8 arenas per core
    }


def plot(result: dict, path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = np.asarray(result["samples"], np.float64)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3))
    for a, column, name in ((ax[0], 1, "host RSS (MiB)"), (ax[1], 2, f"device ({result['device_memory']}, MiB)")):
        a.plot(samples[:, 0], samples[:, column] / 2**20)
        a.axvline(WARMUP * result["steps"], color="grey", linestyle=":")
        a.set_xlabel("step")
        a.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help=f"{MODES['quick'][0]} steps instead of {MODES['full'][0]}")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory, removed afterwards")
    parser.add_argument("--out", type=Path, help="JSON report (default experiments/results/soak_<mode>.json)")
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    mode = "quick" if args.quick else "full"
    out = args.out or RESULTS / f"soak_{mode}.json"
    with tempfile.TemporaryDirectory() as tmp:
        result = soak(mode, args.workdir or Path(tmp))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "evals")}, indent=1))
    print(f"evaluations (training step, checkpoint step, held-out loss): {result['evals']}")
    flat = all(abs(result[k]) < 1.0 for k in ("rss_slope_percent_per_1k_steps", "device_slope_percent_per_1k_steps"))
    print(f"{'flat' if flat else 'NOT flat'}: target |slope| < 1% of the start per 1,000 steps; report in {out}")


if __name__ == "__main__":
    main()
