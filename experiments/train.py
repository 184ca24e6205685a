"""Train a Molmo model.

    python -m experiments.train --config experiments/stage1.py:tiny --config.optim.steps=50 --workdir /tmp/run
    python -m experiments.train --config experiments/stage2.py:tiny --config.init_from=/tmp/run \
        --workdir /tmp/run2 --export native --config.data.tokenizer=runs/main/tokenizer.json
    python -m experiments.train --config experiments/stage1.py:Molmo-7B-D-0924 --workdir gs://bucket/s1 \
        --config.data.data_dir=/data/pixmo --config.data.tokenizer=/models/Qwen2-7B

The batches are those the config's data section names (experiments/stage1.py documents it; built by
experiments/data.py): random token batches, PixMo-lite or PixMo (+ academic sets in stage 2).
Re-running with the same workdir resumes from its latest checkpoint (params, optimizer, step, RNG and
data position). SIGTERM saves a checkpoint and exits. A run that completes exports its model (config,
weights and the data.tokenizer) to <workdir>/export/<format> (`--export`, default orbax); a run without a
tokenizer (random token batches and no data.tokenizer) records only its config and exports nothing.
`--workdir`, the config's paths and the exports may be gs:// paths. An error prints one line naming what is wrong (`--debug`: the traceback).
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import stage1
from experiments.data import make_data
from molmo_jax import distributed, io, paths
from molmo_jax.cli import _one_line
from molmo_jax.tokenizer import load_tokenizer
from molmo_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (experiments/stage*.py:arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, tb/ and curves.png go here.",
                               required=True)
_EXPORT = flags.DEFINE_multi_enum("export", ["orbax"], list(io.EXPORT_FORMATS),
                                  "Model exports written to <workdir>/export/<format> when the run completes.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of one line.")


def run(cfg, workdir: str, exports: Sequence[str] = ("orbax",)) -> dict:
    """Trains (resuming), then, if the run completed and has a tokenizer, exports its model to
    <workdir>/export/<format> for each of `exports`; returns the final state."""
    stage1.check_init(cfg)
    paths.require_bucket(workdir, "workdir")
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.model.llm.vocab_size) if cfg.data.tokenizer else None
    io.save_run_files(workdir, cfg.model, tokenizer)
    state = trainer.train(cfg, make_data(cfg, tokenizer), workdir)
    if tokenizer is None:
        print(f"no export: the run has no tokenizer (set data.tokenizer); its config is in {workdir}")
    elif trainer.completed(cfg, state):
        for fmt, path in io.export_run(workdir, state["params"], cfg.model, tokenizer, exports).items():
            print(f"exported {fmt} model to {path}")
    return state


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    distributed.initialize_from_env()
    try:
        run(_CONFIG.value, _WORKDIR.value, _EXPORT.value)
    except Exception as e:  # one line per error; the traceback only with --debug
        if _DEBUG.value:
            raise
        sys.exit(f"experiments.train: error: {_one_line(e)}")


if __name__ == "__main__":
    app.run(main)
