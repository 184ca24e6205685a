"""Train a Molmo model.

    python -m experiments.train --config experiments/stage1.py:tiny --config.optim.steps=50 --workdir /tmp/run
    python -m experiments.train --config experiments/stage2.py:tiny --config.init_from=/tmp/run/checkpoints \
        --workdir /tmp/run2 --export native

Re-running with the same workdir resumes from its latest checkpoint (params, optimizer, step, RNG and
data position). SIGTERM saves a checkpoint and exits.
"""
from __future__ import annotations

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from molmo_jax import distributed, orbax_params
from molmo_jax.train import checkpointing, synthetic, trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file (experiments/stage*.py:arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, tb/ and curves.png go here.",
                               required=True)
_EXPORT = flags.DEFINE_multi_enum("export", [], ["orbax", "native", "hf"],
                                  "Params-only exports written to <workdir>/export/<format> at the end.")


def make_data(cfg):
    """This process's batch iterator for the config's data section."""
    if cfg.data.kind == "synthetic":
        return synthetic.SyntheticBatches(cfg.model, cfg.data.global_batch // jax.process_count(),
                                          cfg.data.seq_len, cfg.data.crops, cfg.data.seed + jax.process_index())
    raise ValueError(f"data.kind={cfg.data.kind!r} is not available yet (known: 'synthetic')")


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    distributed.initialize_from_env()
    cfg = _CONFIG.value
    state = trainer.train(cfg, make_data(cfg), _WORKDIR.value)
    for fmt in _EXPORT.value:
        out = f"{_WORKDIR.value}/export/{fmt}"
        if fmt == "orbax":
            orbax_params.save(state["params"], out)
        else:
            checkpointing.export_release(state["params"], cfg.model, out, fmt)


if __name__ == "__main__":
    app.run(main)
