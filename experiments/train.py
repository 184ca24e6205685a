"""Train a Molmo model.

    python -m experiments.train --config experiments/stage1.py:tiny --config.optim.steps=50 --workdir /tmp/run
    python -m experiments.train --config experiments/stage2.py:tiny --config.init_from=/tmp/run/checkpoints \
        --workdir /tmp/run2 --export native
    python -m experiments.train --config experiments/stage1.py:Molmo-7B-D-0924 --workdir gs://bucket/s1 \
        --config.data.data_dir=/data/pixmo --config.data.tokenizer=/models/Qwen2-7B

The batches are those the config's data section names (experiments/stage1.py documents it; built by
experiments/data.py): random token batches, PixMo-lite or PixMo (+ academic sets in stage 2).
`--import MODULE` (repeatable) imports a user module first, e.g. one registering a pooling for
`--config.model.connector.pooling`. Errors print one line (`--debug`: the traceback).
Re-running with the same workdir resumes from its latest checkpoint (params, optimizer, step, RNG and
data position). SIGTERM saves a checkpoint and exits.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from experiments.data import make_data
from molmo_jax import config as config_lib
from molmo_jax import distributed, entry_points, orbax_params
from molmo_jax.train import checkpointing, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (experiments/stage*.py:arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, tb/ and curves.png go here.",
                               required=True)
_EXPORT = flags.DEFINE_multi_enum("export", [], ["orbax", "native", "hf"],
                                  "Params-only exports written to <workdir>/export/<format> at the end.")
_IMPORTS = flags.DEFINE_multi_string("import", [], "Module (name or .py file) imported first, e.g. one that "
                                     "registers a pooling.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of an error.")


def main(argv):
    del argv
    with entry_points.one_line_errors("experiments.train", _DEBUG.value):
        run()


def run():
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    entry_points.import_extensions(_IMPORTS.value)
    cfg = _CONFIG.value
    config_lib.validate(cfg.model)
    distributed.initialize_from_env()
    state = trainer.train(cfg, make_data(cfg), _WORKDIR.value)
    for fmt in _EXPORT.value:
        out = f"{_WORKDIR.value}/export/{fmt}"
        if fmt == "orbax":
            orbax_params.save(state["params"], out)
        else:
            checkpointing.export_release(state["params"], cfg.model, out, fmt)


if __name__ == "__main__":
    app.run(main)
