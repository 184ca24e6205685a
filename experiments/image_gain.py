"""Teacher-forced answer loss on held-out PixMo-lite, with each example's own image and with another's.

    losses = answer_losses(params, tokenizer, held_out_tasks(cfgs), examples=64)  # cfgs: stage -> config
    losses["count"]  # {"own": 0.41, "swapped": 0.93, "gain": 0.52, "tokens": 371, "examples": 64, ...}

Per task (TASKS: the stage-1 captions and the stage-2 tasks whose answers depend on the image) the first
held-out examples (`synthetic.held_out_source`, another generator seed than training) are formatted exactly
as their stage trains on them (`mixtures.example_processor`: style prefix, prompt template, answer) and
scored once with their own image and once with the image of example i + 7 (`experiments.controls.SwappedImages`:
same prompt and answer, the wrong picture). "own" and "swapped" are the mean cross-entropy per answer token
(the tokens the training loss weights, weighted as it weights them); "gain" = swapped - own, in nats per
answer token, is how much the answers use the image. Unlike the accuracy of generated answers these move
from the first steps, so a short run can tell connectors apart by them.
"""
from __future__ import annotations

import math

import jax
import numpy as np

from data_pipelines import factory, mixtures, pixmo, synthetic
from experiments import controls
from molmo_jax import config as config_lib
from molmo_jax import preprocess
from molmo_jax.models.molmo import Molmo
from molmo_jax.train import trainer

# (short name, held-out PixMo-lite set, the stage config that formats it)
TASKS = (("caption", "synthetic_cap_with_transcripts", "stage1"), ("points", "synthetic_points", "stage2"),
         ("count", "synthetic_count", "stage2"), ("clocks", "synthetic_clocks", "stage2"),
         ("charts", "synthetic_docs_charts", "stage2"), ("capqa", "synthetic_cap_qa", "stage2"))
BATCH = 32  # rows per forward pass
MIN_LENGTH = 64  # rows are padded to the power of two >= the longest example and this


def encode(cfg, tokenizer, source, examples: int) -> tuple[list[dict], int]:
    """The first `examples` of `source` as stage-2 training arrays (no sequence budget, so every model of a
    comparison scores the same examples) and how many failed to encode. Example i uses RandomState(i) for
    its prompt template and formatting, so the same index gives the same text in every source wrapper."""
    process = mixtures.example_processor(cfg.model, tokenizer, factory.pipeline_options(cfg.data), False)
    process.preprocessor.max_sequence_length = None
    out, failed = [], 0
    for i in range(examples):
        try:
            out.append(process(source.get(i, np.random.RandomState(i)), np.random.RandomState(i)))
        except (pixmo.EmptyAnnotationError, preprocess.ImageError):
            failed += 1
    return out, failed


def mean_losses(model_cfg, params, sets: dict[str, list[dict]]) -> dict[str, tuple[float, int]]:
    """name -> (mean weighted CE per loss token, loss tokens) of each list of encoded examples, all padded
    to one length (one compiled forward)."""
    longest = max(MIN_LENGTH, *(len(e["input_tokens"]) for examples in sets.values() for e in examples))
    seq_len = 2 ** math.ceil(math.log2(longest))
    crops = config_lib.max_total_crops(model_cfg)
    model = Molmo(model_cfg)
    forward = jax.jit(lambda p, b: trainer.loss_sums(p, b, jax.random.key(0), model=model, z_loss=0.0))
    out = {}
    for name, examples in sets.items():
        ce = weight = tokens = 0.0
        for start in range(0, len(examples), BATCH):
            batch = trainer.host_batch(preprocess.collate(examples[start:start + BATCH], seq_len, crops))
            sums = forward(params, batch)
            ce, tokens = ce + float(sums["ce"]), tokens + int(sums["tokens"])
            weight += float(np.clip(batch["loss_masks"], 0, None).sum())
        out[name] = (ce / weight, int(tokens))
    return out


def held_out_tasks(cfgs: dict, stages: tuple[str, ...] = ("stage1", "stage2")) -> dict[str, tuple]:
    """name -> (training config, held-out source) of the TASKS of `stages`; `cfgs`: stage -> PixMo-lite
    training config (its model, formatting, image size and scene style)."""
    return {name: (cfgs[stage], synthetic.config_held_out_source(held_out, cfgs[stage].data))
            for name, held_out, stage in TASKS if stage in stages}


def answer_losses(params, tokenizer, tasks: dict[str, tuple], examples: int = 64) -> dict[str, dict]:
    """Per task of `tasks` (name -> (config, `pixmo.Source`), e.g. `held_out_tasks`) the answer loss with the
    own image, with swapped images and their difference (see the module docstring) on the source's first
    `examples` examples. The configs must differ in formatting only (they share one compiled model)."""
    sets, failed = {}, {}
    for name, (cfg, source) in tasks.items():
        sets[name], failed[name] = encode(cfg, tokenizer, source, examples)
        sets[f"{name}/swapped"], _ = encode(cfg, tokenizer, controls.SwappedImages(source), examples)
    model_cfg = next(iter(tasks.values()))[0].model
    losses = mean_losses(model_cfg, params, sets)
    out = {}
    for name in tasks:
        (own, tokens), (swapped, _) = losses[name], losses[f"{name}/swapped"]
        out[name] = {"own": own, "swapped": swapped, "gain": swapped - own, "tokens": tokens,
                     "examples": len(sets[name]), "failed": failed[name]}
    return out
