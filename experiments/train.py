"""Train a Molmo model.

    python -m experiments.train --config molmo_jax/recipes/stage1.py:tiny --config.optim.steps=50 --workdir /tmp/run
    python -m experiments.train --config molmo_jax/recipes/stage2.py:tiny --config.init_from=/tmp/run \
        --workdir /tmp/run2 --export native --config.data.tokenizer=runs/main/tokenizer.json
    python -m experiments.train --config molmo_jax/recipes/stage1.py:Molmo-7B-D-0924 --workdir gs://bucket/s1 \
        --config.data.data_dir=/data/pixmo --config.data.tokenizer=/models/Qwen2-7B

`--config` is a recipe file of molmo_jax/recipes and its arg. The batches are those the config's data
section names (molmo_jax/recipes/stage1.py documents it; built by data_pipelines/factory.py): random token
batches, PixMo-lite or PixMo (+ academic sets in stage 2).
`--import MODULE` (repeatable) imports a user module first, e.g. one registering a pooling for
`--config.model.connector.pooling`. Errors print one line (`--debug`: the traceback).
Re-running with the same workdir resumes from its latest checkpoint (params, optimizer, step, RNG and
data position) if the model / optimizer settings are those the workdir was started with. Checkpoints:
every --config.checkpoint.every steps and / or --config.checkpoint.every_minutes minutes. SIGTERM or
SIGINT saves a checkpoint, prints "stopped at step N of M; rerun the same command to resume", writes no
export and exits with 128 + the signal number (143 / 130).
`--eval_every N --eval_task NAME` (repeatable: a `molmo-jax eval` task; PixMo-lite's held-out sets follow the
config's scene style) scores the first --eval_examples prompts every N steps, logged as eval/<task>/<metric>
with predictions in <workdir>/eval/<step>/; `--export_every N` exports to <workdir>/export_steps/<step>/.
A run that completes exports its model (config, weights and the data.tokenizer) to
<workdir>/export/<format> (`--export`, default orbax); a run without a tokenizer (random token batches and
no data.tokenizer) records only its config and exports nothing.
`--workdir`, the config's paths and the exports may be gs:// paths.
"""
from __future__ import annotations

import sys
from typing import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines.factory import make_data
from molmo_jax import config as config_lib
from molmo_jax import distributed, io, paths
from molmo_jax.cli import entry_points
from molmo_jax.recipes import stage1
from molmo_jax.tokenizer import load_tokenizer
from molmo_jax.train import hooks as hooks_lib, trainer
from molmo_jax.train.trainable import Trainable

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file and arg (molmo_jax/recipes/stage*.py:arg).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics.jsonl, tb/ and curves.png go here.",
                               required=True)
_EXPORT = flags.DEFINE_multi_enum("export", ["orbax"], list(io.EXPORT_FORMATS),
                                  "Model exports written to <workdir>/export/<format> when the run completes.")
_IMPORTS = flags.DEFINE_multi_string("import", [], "Module (name or .py file) imported first, e.g. one that "
                                     "registers a pooling.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 0, "Score the --eval_task sets every N steps (0: never).")
_EVAL_TASKS = flags.DEFINE_multi_string("eval_task", [], "An eval task (molmo-jax eval --task) for --eval_every.")
_EVAL_EXAMPLES = flags.DEFINE_integer("eval_examples", 100, "Examples of each eval task scored (at most all).")
_EVAL_DATA_DIR = flags.DEFINE_string("eval_data_dir", "", "Where the eval tasks' sets are (default: data.data_dir).")
_EXPORT_EVERY = flags.DEFINE_integer("export_every", 0, "Export (--export formats) every N steps (0: never).")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of an error.")


def run(cfg, workdir: str, exports: Sequence[str] = ("orbax",),
        periodic: hooks_lib.Periodic = hooks_lib.Periodic()) -> dict:
    """Trains (resuming, with the `periodic` evaluations and exports), then, if the run has a tokenizer,
    exports its model to <workdir>/export/<format> for each of `exports`; returns the final state. A signal
    stops it with trainer.TrainingStopped (checkpointed, nothing exported)."""
    stage1.check_init(cfg)
    paths.require_bucket(workdir, "workdir")
    tokenizer = load_tokenizer(cfg.data.tokenizer, cfg.model.llm.vocab_size) if cfg.data.tokenizer else None
    hooks = periodic.hooks(cfg.model, cfg.data, workdir, tokenizer, exports)
    io.save_run_files(workdir, cfg.model, tokenizer)
    state = trainer.train(cfg, make_data(cfg, tokenizer), workdir, hooks=hooks)
    if tokenizer is None:
        print(f"no export: the run has no tokenizer (set data.tokenizer); its config is in {workdir}")
        return state
    params = Trainable.of(cfg).model_params(state)
    for fmt, path in io.export_run(workdir, params, cfg.model, tokenizer, exports).items():
        print(f"exported {fmt} model to {path}")
    return state


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    with entry_points.one_line_errors("experiments.train", _DEBUG.value):
        entry_points.import_extensions(_IMPORTS.value)
        cfg = _CONFIG.value
        config_lib.validate(cfg.model)
        distributed.initialize_from_env()
        try:
            periodic = hooks_lib.Periodic(_EVAL_EVERY.value, _EVAL_TASKS.value, _EVAL_EXAMPLES.value,
                                          _EVAL_DATA_DIR.value, _EXPORT_EVERY.value)
            run(cfg, _WORKDIR.value, _EXPORT.value, periodic)
        except trainer.TrainingStopped as stopped:
            print(stopped, file=sys.stderr)
            raise SystemExit(stopped.exit_code) from None


if __name__ == "__main__":
    app.run(main)
