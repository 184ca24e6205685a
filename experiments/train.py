"""Train a Molmo model.

    python -m experiments.train --config experiments/stage1.py:tiny --config.optim.steps=50 --workdir /tmp/run
    python -m experiments.train --config experiments/stage2.py:tiny --config.init_from=/tmp/run/checkpoints \
        --workdir /tmp/run2 --export native
    python -m experiments.train --config experiments/stage1.py:Molmo-7B-D-0924 --workdir gs://bucket/s1 \
        --config.data.data_dir=/data/pixmo --config.data.tokenizer=/models/Qwen2-7B

The batches are those the config's data section names (experiments/stage1.py documents it; built by
experiments/data.py): random token batches, PixMo-lite or PixMo (+ academic sets in stage 2).
Re-running with the same workdir resumes from its latest checkpoint (params, optimizer, step, RNG and
data position). SIGTERM saves a checkpoint and exits. `--workdir`, the config's paths and the exports may
be gs:// paths. An error prints one line naming what is wrong (`--debug`: the traceback).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import stage1
from experiments.data import make_data
from molmo_jax import distributed, orbax_params
from molmo_jax.cli import _one_line
from molmo_jax.train import checkpointing, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (experiments/stage*.py:arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, tb/ and curves.png go here.",
                               required=True)
_EXPORT = flags.DEFINE_multi_enum("export", [], ["orbax", "native", "hf"],
                                  "Params-only exports written to <workdir>/export/<format> at the end.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the traceback of an error instead of one line.")


def run(cfg, workdir: str, exports: list[str]) -> dict:
    """Trains (resuming), then writes the exports if the run reached its last step; returns the state."""
    stage1.check_init(cfg)
    state = trainer.train(cfg, make_data(cfg), workdir)
    for fmt in exports if trainer.finished(cfg, state) else ():
        out = f"{workdir}/export/{fmt}"
        if fmt == "orbax":
            orbax_params.save(state["params"], out)
        else:
            checkpointing.export_release(state["params"], cfg.model, out, fmt)
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
