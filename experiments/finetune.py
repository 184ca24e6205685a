"""Fine-tune a checkpoint on a user-format JSONL file (data_pipelines/user_data.py): full or LoRA.

    python -m experiments.finetune --config molmo_jax/recipes/finetune.py:Molmo-7B-D-0924,lora=8 \
        --config.data.path=data.jsonl --config.data.mix_pixmo_lite=0.3 --workdir runs/ft

The config arg: the checkpoint directory (any molmo_jax.io format), optionally followed by ",lora=R" for
the LoRA recipe (all components frozen, adapters at lr 2e-4); `molmo-jax finetune` builds the same config
from its flags. Batches: `data_pipelines.factory.make_data` (packing: --config.data.pack_crops, grain
workers: --config.data.num_workers). Writes the checkpoints and metrics to the workdir and the fine-tuned
model to <workdir>/export/{hf_release,orbax}.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from data_pipelines import factory
from molmo_jax.cli import entry_points
from molmo_jax.train import finetune

def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    with entry_points.one_line_errors("experiments.finetune", flags.FLAGS.debug):
        _, exports = finetune.run(flags.FLAGS.config, flags.FLAGS.workdir, factory.make_data)
    for fmt, path in exports.items():
        print(f"wrote {fmt} checkpoint to {path}")


if __name__ == "__main__":  # flags only here: experiments.train defines the same names in the same process
    config_flags.DEFINE_config_file("config", None, "molmo_jax/recipes/finetune.py:<checkpoint>[,lora=R]",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Checkpoints, metrics and exports go here.", required=True)
    flags.DEFINE_bool("debug", False, "Show the full traceback of an error (default: one line).")
    app.run(main)
