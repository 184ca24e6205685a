"""Fine-tune a checkpoint on a user-format JSONL file (data_pipelines/user_data.py): full or LoRA.

    python -m experiments.finetune --config experiments/finetune.py:Molmo-7B-D-0924,lora=8 \
        --config.data.path=data.jsonl --config.data.mix_pixmo_lite=0.3 --workdir runs/ft

`arg`: the checkpoint directory (any molmo_jax.io format), optionally followed by ",lora=R"
for the LoRA recipe (all components frozen, adapters at lr 2e-4); `molmo-jax finetune` builds the same
config from its flags. The recipe itself is `molmo_jax.train.finetune.get_config`. Writes the
checkpoints and metrics to the workdir and the fine-tuned model to <workdir>/export/{hf_release,orbax}.
"""
from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from molmo_jax.cli import entry_points
from molmo_jax.train import finetune


def get_config(arg: str):
    checkpoint, _, lora = arg.partition(",lora=")
    return finetune.get_config(checkpoint, lora_rank=int(lora or 0))


def main(argv):
    del argv
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every save at INFO
        logging.set_verbosity(logging.WARNING)
    with entry_points.one_line_errors("experiments.finetune", flags.FLAGS.debug):
        _, exports = finetune.run(flags.FLAGS.config, flags.FLAGS.workdir)
    for fmt, path in exports.items():
        print(f"wrote {fmt} checkpoint to {path}")


if __name__ == "__main__":  # flags only here: config_flags imports this file again to read get_config
    config_flags.DEFINE_config_file("config", None, "experiments/finetune.py:<checkpoint>[,lora=R]",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Checkpoints, metrics and exports go here.", required=True)
    flags.DEFINE_bool("debug", False, "Show the full traceback of an error (default: one line).")
    app.run(main)
