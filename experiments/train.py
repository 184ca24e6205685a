"""Train a Molmo model.

    python -m experiments.train --config experiments/stage1.py:tiny --config.optim.steps=50 --workdir /tmp/run
    python -m experiments.train --config experiments/stage2.py:tiny --config.init_from=/tmp/run/checkpoints \
        --workdir /tmp/run2 --export native
    python -m experiments.train --config experiments/stage1.py:Molmo-7B-D-0924 --workdir gs://bucket/s1 \
        --config.data.data_dir=/data/pixmo --config.data.tokenizer=/models/Qwen2-7B

The batches are those the config's data section names (experiments/stage1.py documents it; built by
experiments/data.py): random token batches, PixMo-lite or PixMo (+ academic sets in stage 2).
Re-running with the same workdir resumes from its latest checkpoint (params, optimizer, step, RNG and
data position) if the model / optimizer settings are those the workdir was started with. Checkpoints:
every --config.checkpoint.every steps and / or --config.checkpoint.every_minutes minutes. SIGTERM or
SIGINT saves a checkpoint, prints "stopped at step N of M; rerun the same command to resume", writes no
export and exits with 128 + the signal number (143 / 130).
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.data import make_data
from molmo_jax import distributed, orbax_params
from molmo_jax.train import checkpointing, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (experiments/stage*.py:arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, tb/ and curves.png go here.",
                               required=True)
_EXPORT = flags.DEFINE_multi_enum("export", [], ["orbax", "native", "hf"],
                                  "Params-only exports written to <workdir>/export/<format> at the end.")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    distributed.initialize_from_env()
    cfg = _CONFIG.value
    try:
        state = trainer.train(cfg, make_data(cfg), _WORKDIR.value)
    except trainer.TrainingStopped as stopped:
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
    except checkpointing.ResumeMismatch as mismatch:  # one line, not a traceback
        sys.exit(f"error: {mismatch}")
    for fmt in _EXPORT.value:
        out = f"{_WORKDIR.value}/export/{fmt}"
        if fmt == "orbax":
            orbax_params.save(state["params"], out)
        else:
            checkpointing.export_release(state["params"], cfg.model, out, fmt)


if __name__ == "__main__":
    app.run(main)
