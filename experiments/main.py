"""The main job: train a tiny Molmo on PixMo-lite end to end on a CPU, then show that it learned.

    bash experiments/run_main.sh                 # = python -m experiments.main --workdir runs/main
    python -m experiments.main --arg long        # 4x the steps
    python -m experiments.main --arg smoke       # 2 steps per stage: checks that it runs (tests/test_readme.py)
    python -m experiments.main --set model.llm.n_layers=8 --set stage2.optim.lr.vit=0.0 --workdir runs/probe
                                                 # a probe: recipe fields changed in both stages or in one

1. trains a byte-level BPE on the synthetic text (Molmo's image tokens appended),
2. stage 1: dense captioning (PixMo-lite captions + transcripts), stage 2: the multitask mixture
   (clocks, counting, pointing, captions QA, charts, tables), both with the official trainer and Orbax
   checkpoints (rerunning resumes; SIGTERM / SIGINT checkpoint, print "stopped at step N of M", skip
   the rest and exit 143 / 130), curves in <workdir>/stage*/curves.png,
3. evaluates on held-out synthetic examples (another seed) with KV-cache generation and the official
   scorers, next to the same prompts with the images swapped between examples (what survives the swap does
   not come from the image), the most common gold answer overall and per question type, and the held-out
   caption loss before and after stage 1; writes <workdir>/summary.json (with the commit, command and
   machine), the README's results table <workdir>/results.md (`results_table`) and pointing PNGs under
   <workdir>/eval. The README's table is `tools/readme_tables.py` applied to a copy of summary.json in
   experiments/results/main_job.json.
The trained model is exported (config, weights, tokenizer) to <workdir>/stage2/export/orbax (stage 1's to
<workdir>/stage1/export/orbax): `molmo-jax predict --checkpoint runs/main/stage2/export/orbax ...`.
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import sys
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from data_pipelines import factory, synthetic, vocab
from experiments import controls, provenance
from molmo_jax import config as config_lib
from molmo_jax import io
from molmo_jax.cli import entry_points
from molmo_jax.api import MolmoBundle
from molmo_jax.eval import runner
from molmo_jax.models.molmo import Molmo, init_params
from molmo_jax.preprocess import Preprocessor
from molmo_jax.recipes import stage1, stage2
from molmo_jax.tokenizer import MolmoTokenizer
from molmo_jax.train import checkpointing, trainer
from molmo_jax.train.loss import cross_entropy

EVAL_TASKS = ("synthetic_count", "synthetic_clocks", "synthetic_cap_qa", "synthetic_docs_charts",
              "synthetic_points")
EVAL_EXAMPLES = {"quick": 64, "long": 64, "smoke": 4}  # held-out examples per task


def recipe_arg(arg: str) -> str:
    """The stage recipes' PixMo-lite arg of the job's --arg."""
    return "lite" if arg == "quick" else f"lite-{arg}"


def caption_loss(stage1_cfg, params, tokenizer, batches: int = 4) -> float:
    """Mean CE on held-out stage-1 caption batches (the stage-1 data, another generator seed)."""
    held_out = copy.deepcopy(stage1_cfg)
    held_out.data.pixmo_lite_seed = synthetic.HELD_OUT_SEED
    data = factory.make_data(held_out, tokenizer)
    forward = jax.jit(lambda p, b: cross_entropy(Molmo(stage1_cfg.model).apply(
        {"params": p}, b["input_ids"], images=b["images"], image_masks=b.get("image_masks"),
        image_input_idx=b["image_input_idx"], position_ids=b["position_ids"],
        subsegment_ids=b["subsegment_ids"]), b["labels"], b["loss_masks"]))
    total = weight = 0.0
    for _ in range(batches):
        batch = {k: v.astype(np.int32) if v.dtype == np.int64 else v for k, v in next(data).items()}
        per_token, w = forward(params, batch)
        total, weight = total + float(per_token.sum()), weight + float(w)
    return total / weight


def evaluate(cfg, params, tokenizer, out_dir: epath.Path, eval_examples: int) -> dict:
    """Each EVAL_TASKS metric on the held-out split of the stage-2 config `cfg`'s PixMo-lite, its baselines,
    and the same prompts with the images swapped between examples."""
    model_cfg = cfg.model
    bundle = MolmoBundle(model_cfg, params, tokenizer, Preprocessor(model_cfg, tokenizer))
    results = {}
    score = dict(n=eval_examples, batch_size=16, show=False, scoring={"count_none_is_zero": True})
    for task in EVAL_TASKS:
        source = synthetic.config_held_out_source(task, cfg.data)
        result = runner.evaluate(bundle, source, task, out_dir=out_dir, **score)
        swapped = runner.evaluate(bundle, controls.SwappedImages(source), task, **score)["metrics"]
        results[task] = {"metrics": result["metrics"], "majority_baseline": controls.majority_baseline(result),
                         "question_prior": controls.majority_baseline(result, controls.question_type),
                         "swapped_images": swapped}
        if task == "synthetic_points":
            results[task]["point_landing"] = controls.point_landing(source, result)
            results[task]["point_landing_chance"] = controls.point_landing(source, result, controls.SWAP_SHIFT)
    return results


def print_summary(summary: dict):
    print("\nheld-out PixMo-lite (generated with another seed)")
    print(f"{'task':24} {'metric':22} {'trained':>8} {'swapped':>8} {'majority':>9} {'q-prior':>8}")
    nan = float("nan")
    for task, r in summary["eval"].items():
        base, prior = (nan if r[k] is None else r[k] for k in ("majority_baseline", "question_prior"))
        for name, value in r["metrics"].items():
            swapped = (r["swapped_images"] or {}).get(name, nan)
            print(f"{task:24} {name:22} {value:8.3f} {swapped:8.3f} {base:9.3f} {prior:8.3f}")
    print("swapped: the same prompts with each image swapped for another example's; majority: always the most "
          "common answer; q-prior: the most common answer of each question type (shape asked about, count or "
          "colour), what a model that ignores the image can reach; pointing's: the F1 of always pointing at "
          "nothing")
    print(landing_line(summary))
    c = summary["caption_loss"]
    print(f"held-out caption loss: {c['init']:.3f} at init -> {c['after_stage1']:.3f} after stage 1")
    print(f"total time {summary['seconds'] / 60:.1f} min; outputs in {summary['workdir']}")


# The README's results table: (task, metric, row label, baselines shown in the row).
TABLE_ROWS = (
    ("synthetic_clocks", "hour_correct", "clock reading, hour correct (chance 1/12)", ()),
    ("synthetic_clocks", "all_correct", "clock reading, hour and minute exact", ("majority_baseline",)),
    ("synthetic_count", "correct", "counting (points + count), exact", ("majority_baseline", "question_prior")),
    ("synthetic_count", "close", "counting, within one", ()),
    ("synthetic_docs_charts", "relaxed_correctness", "chart values (relaxed)",
     ("majority_baseline", "question_prior")),
    ("synthetic_cap_qa", "em", "CapQA (counts, colours)", ("majority_baseline", "question_prior")),
    ("synthetic_points", "f1", "pointing F1", ("majority_baseline", "question_prior")),
)


def results_table(summary: dict) -> str:
    """The markdown table of TABLE_ROWS: trained, images swapped, majority, question-type prior."""
    n = summary["config"]["eval_examples"]
    lines = [f"| held-out task ({n} examples each) | trained | images swapped | majority | question-type prior |",
             "|---|---|---|---|---|"]
    for task, metric, label, baselines in TABLE_ROWS:
        r = summary["eval"][task]
        cells = [r["metrics"][metric], (r["swapped_images"] or {}).get(metric)]
        cells += [r[b] if b in baselines else None for b in ("majority_baseline", "question_prior")]
        lines.append(f"| {label} | " + " | ".join("" if c is None else f"{c:.2f}" for c in cells) + " |")
    return "\n".join(lines)


def landing_line(summary: dict) -> str:
    """Where the pointing answers' points land, next to where the same points land in other scenes."""
    points = summary["eval"]["synthetic_points"]
    here, chance = points["point_landing"], points["point_landing_chance"]
    if np.isnan(here["asked_kind"]):
        return "No pointing answer held a point, so none landed anywhere."
    cells = [f"{here[k]:.2f} ({chance[k]:.2f})" for k in ("asked_kind", "other_kind", "background")]
    return ("Predicted points (pointing) land on a shape of the asked kind {}, on another kind's shape {}, on the "
            "background {}; in brackets the same points read in another example's scene (chance).".format(*cells))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/main")
    parser.add_argument("--arg", default="quick", choices=("quick", "long", "smoke"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a field of both stage configs (model.llm.n_layers=8) or of one "
                             "(stage2.optim.lr.vit=0.0); VALUE is a Python literal, else a string; repeatable")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    with entry_points.one_line_errors("experiments.main", args.debug):
        run(args)


def apply_overrides(cfgs: dict, items: list[str]) -> None:
    """Applies `--set` items to the stage configs {"stage1": cfg, "stage2": cfg} in place: "KEY=VALUE" to
    both, "stage1.KEY=VALUE" to one. A ValueError names an item that is not KEY=VALUE, a KEY no config has
    or a model the change makes invalid."""
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE, e.g. model.llm.n_layers=8")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        stage, _, rest = key.partition(".")
        path = rest if stage in cfgs else key
        for name in [stage] if stage in cfgs else list(cfgs):
            parent, _, field = path.rpartition(".")
            node = cfgs[name]
            for part in filter(None, parent.split(".")):
                node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if not isinstance(node, ml_collections.ConfigDict) or field not in node:
                raise ValueError(f"--set {item!r}: the {name} config has no field {path!r}")
            try:
                node[field] = value
            except TypeError as error:
                raise ValueError(f"--set {item!r}: {error}") from None
    for c in cfgs.values():
        config_lib.validate(c.model)


def run_stage(cfg, stage: str, tokenizer: MolmoTokenizer, workdir: epath.PathLike, init_from: str = ""):
    """Trains the stage config `cfg` in workdir/<stage> (resuming if it was interrupted); a stage that
    completes exports its model to workdir/<stage>/export/orbax.

    Returns (final train state, the stage's run directory: a checkpoint for the next stage's init_from).
    """
    out = epath.Path(workdir) / stage
    cfg = copy.deepcopy(cfg)
    cfg.init_from = str(init_from)
    io.save_run_files(out, cfg.model, tokenizer)
    state = trainer.train(cfg, factory.make_data(cfg, tokenizer), out)  # raises TrainingStopped when stopped
    io.export_run(out, state["params"], cfg.model, tokenizer)
    return state, out


def run(args):
    logging.set_verbosity(logging.WARNING)
    start = time.perf_counter()
    workdir = epath.Path(args.workdir)
    cfgs = {"stage1": stage1.get_config(recipe_arg(args.arg)), "stage2": stage2.get_config(recipe_arg(args.arg))}
    apply_overrides(cfgs, args.set)
    tokenizer = vocab.pixmo_lite_tokenizer(list(cfgs.values()), workdir)
    init = init_params(cfgs["stage1"].model, jax.random.key(cfgs["stage1"].seed))
    loss_init = caption_loss(cfgs["stage1"], init, tokenizer)
    try:
        stage1_state, stage1_dir = run_stage(cfgs["stage1"], "stage1", tokenizer, workdir)
        loss_stage1 = caption_loss(cfgs["stage1"], stage1_state["params"], tokenizer)
        stage2_state, _ = run_stage(cfgs["stage2"], "stage2", tokenizer, workdir, init_from=stage1_dir)
    except trainer.TrainingStopped as stopped:  # checkpointed; no evaluation, no summary
        print(stopped, file=sys.stderr)
        sys.exit(stopped.exit_code)
    except checkpointing.ResumeMismatch as mismatch:  # e.g. --arg long on a quick run's workdir
        sys.exit(f"error: {mismatch}")
    eval_examples = EVAL_EXAMPLES[args.arg]
    summary = {"workdir": str(workdir),
               "config": {**{stage: c.to_dict() for stage, c in cfgs.items()}, "eval_examples": eval_examples,
                          "eval_seed": synthetic.HELD_OUT_SEED},
               "caption_loss": {"init": loss_init, "after_stage1": loss_stage1},
               "eval": evaluate(cfgs["stage2"], stage2_state["params"], tokenizer, workdir / "eval", eval_examples),
               "seconds": time.perf_counter() - start, **provenance.describe()}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    (workdir / "results.md").write_text(results_table(summary) + "\n")
    print_summary(summary)


if __name__ == "__main__":
    main()
