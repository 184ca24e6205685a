"""One process of tests/test_multihost.py: `trainer.train` of the tiny stage-2 model for a few steps, with
the command lines' hooks (`hooks.Periodic`) at the last step: exports and evaluation.

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0 \
        python tests/multihost_worker.py --local-devices 4 --steps 3 --workdir DIR \
        --tokenizer TOKENIZER --export orbax --export hf_release --eval-task synthetic_clocks

Every process draws the same global synthetic batches and keeps its own rows (`process_rows`), so a run
on any number of processes sees the same global batches as a single-process run. Process 0 writes the
losses to DIR/metrics.jsonl; the checkpoint at the last step is written by all processes together, the
exports to DIR/export_steps/<steps>/<format> and the eval files to DIR/eval/<steps>/ once.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class ProcessRows:
    """This process's rows of each global batch of `batches` (and its get_state / set_state)."""

    def __init__(self, batches, global_batch: int):
        from molmo_jax import distributed
        self.batches, self.rows = batches, distributed.process_rows(global_batch)

    def __iter__(self):
        return self

    def __next__(self):
        return {k: v[self.rows] for k, v in next(self.batches).items()}

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--local-devices", type=int, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--crops", type=int, default=1, help="image crops per example (0: text only)")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--tokenizer", default="", help="data.tokenizer: what the hooks' exports carry")
    parser.add_argument("--export", action="append", default=[], help="export format at the last step")
    parser.add_argument("--eval-task", action="append", default=[], help="eval task scored at the last step")
    parser.add_argument("--eval-examples", type=int, default=1)
    args = parser.parse_args(argv)
    jax.config.update("jax_num_cpu_devices", args.local_devices)
    jax.config.update("jax_default_matmul_precision", "highest")

    from data_pipelines import random_batches
    from molmo_jax import distributed
    from molmo_jax.recipes import stage2
    from molmo_jax.tokenizer import load_tokenizer
    from molmo_jax.train import hooks as hooks_lib, trainer

    distributed.initialize_from_env()
    cfg = stage2.get_config("tiny")  # its prompt format is one `evaluate` answers
    cfg.optim.steps = args.steps
    cfg.data.crops = args.crops
    d = cfg.data
    data = ProcessRows(random_batches.RandomBatches(cfg.model, d.global_batch, d.seq_len, d.crops, d.seed),
                       d.global_batch)
    tokenizer = load_tokenizer(args.tokenizer, cfg.model.llm.vocab_size) if args.tokenizer else None
    periodic = hooks_lib.Periodic(args.steps if args.eval_task else 0, args.eval_task, args.eval_examples,
                                  export_every=args.steps if args.export else 0)
    hooks = periodic.hooks(cfg.model, cfg.data, args.workdir, tokenizer, args.export)
    trainer.train(cfg, data, args.workdir, hooks=hooks)
    if jax.process_count() > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    main()
