"""Connector ablation on PixMo-lite: pooling type x window x projector x ViT layers, several seeds each.

    python -m experiments.ablate_pooling --arg quick     # smoke: 3 variants x 2 seeds, 20 steps
    python -m experiments.ablate_pooling --arg reduced   # 4 connectors x 3 seeds, 200 stage-1 steps
    python -m experiments.ablate_pooling --arg tokens    # 64 / 16 / 4 image tokens per crop x 3 seeds, whole recipe
    python -m experiments.ablate_pooling --arg types --reuse experiments/results/ablate_pooling_tokens.json
                                                         # another axis (ablations.AXES), the base's runs reused
    python -m experiments.ablate_pooling --arg full      # 15 variants x 3 seeds, the recipe's own budget
    python -m experiments.ablate_pooling --arg full --only meanq_2x2 --seeds 0   # one run of it (its time)

The sweep (experiments/ablations.py `get_config(arg)`) lists variants and seeds; each (variant, seed) is
trained with the stage recipes' PixMo-lite configs (molmo_jax/recipes) plus the sweep's and the variant's
overrides in <workdir>/<variant>/seed<k>/stage*/ (an interrupted run resumes from its checkpoints), then
evaluated on the held-out synthetic split: per task of a trained stage (stage 1: captions; stage 2: points,
counting, clocks, charts, CapQA) the teacher-forced answer loss and its image gain (the loss with the images
swapped between examples minus it: how much the answers use the image, experiments/image_gain.py), and
with `eval_examples` the generated answers' CapQA, counting, clock accuracy (hour and minute exact) and
pointing F1 (KV-cache greedy generation, official scorers). <workdir>/<variant>/seed<k>/result.json marks a
finished run: a rerun loads it instead of retraining; `--reuse <out>.json` takes the runs of stored results
whose configs equal a run's (the base of every axis' sweep) instead of retraining them.

Per variant and metric: the mean over seeds with its 95% Student-t interval, and the paired difference to
the released connector (`ablations.BASE`, same seed = same init key, data and order) with its interval;
beside them image tokens per crop and per packed row, and seconds per train step. Writes <out>.md (tables,
with the command at the top), <out>.json (every run, the summary, commit / command / machine) and
<out>.png (means and differences with their intervals).

A new pooling is a module registered with `molmo_jax.models.connector.register_pooling(name, factory)` in
a module listed in the sweep's `imports`, plus a variant with `pooling=name`: nothing else changes.
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import importlib
import json
import math
import shlex
import sys
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from scipy import stats

from data_pipelines import factory, synthetic, vocab
from experiments import ablations, image_gain, provenance
from experiments import controls
from molmo_jax import config as config_lib
from molmo_jax.cli import entry_points
from molmo_jax.api import MolmoBundle
from molmo_jax.eval import runner
from molmo_jax.models.molmo import abstract_params
from molmo_jax.preprocess import Preprocessor
from molmo_jax.recipes import lite, stage1, stage2
from molmo_jax.train import metrics_log, trainer

# (column, eval task, metric key, title); all higher-is-better
METRICS = (("capqa_acc", "synthetic_cap_qa", "em", "CapQA accuracy (counts, colours)"),
           ("count_acc", "synthetic_count", "correct", "counting accuracy"),
           ("clock_acc", "synthetic_clocks", "overall_exact", "clock accuracy"),
           ("point_f1", "synthetic_points", "f1", "pointing F1"))
# per image_gain task (captions first): the held-out teacher-forced answer loss with the own image and its
# image gain (the loss with swapped images minus it)
GAIN_COLUMNS = tuple(f"{task}_{kind}" for task, *_ in image_gain.TASKS for kind in ("loss", "gain"))
COLUMNS = GAIN_COLUMNS + tuple(m[0] for m in METRICS)
TITLES = {**{f"{task}_loss": f"{task} loss" for task, *_ in image_gain.TASKS},
          **{f"{task}_gain": f"{task} image gain" for task, *_ in image_gain.TASKS},
          **{column: title for column, *_, title in METRICS}}


def short_title(column: str) -> str:
    """A column's title without its parenthesis ("CapQA accuracy (counts, colours)" -> "CapQA accuracy")."""
    return TITLES[column].split(" (")[0]


# ------------------------------------------------------------------------------------------ configs

STAGES = {"stage1": stage1, "stage2": stage2}


def variant_config(sweep, variant: dict, stage: str = "stage2", seed: int | None = None):
    """The `stage` training config of one variant: the stage recipe's `sweep.recipe` config at the sweep's
    step budget (-1: the recipe's own) with `ablations.overrides(sweep, variant, seed)` (default seed: the
    sweep's first)."""
    cfg = STAGES[stage].get_config(sweep.recipe)
    if sweep[f"{stage}_steps"] >= 0:
        lite.set_steps(cfg, sweep[f"{stage}_steps"])  # stage1_steps 0: stage 1 is not trained
    cfg.update_from_flattened_dict(ablations.overrides(sweep, variant, sweep.seeds[0] if seed is None else seed))
    m = cfg.model
    if m.preprocess.crop_mode == "resize" and any(x % p for x in m.preprocess.overlap_margins
                                                  for p in variant["pool"]):
        m.preprocess.overlap_margins = (0, 0)  # unused with one resized crop (see ablations.py)
    config_lib.validate(m)
    return cfg


def variant_configs(sweep, variant: dict, seed: int | None = None) -> dict:
    return {stage: variant_config(sweep, variant, stage, seed) for stage in STAGES}


def trained_stages(sweep) -> tuple[str, ...]:
    """The stages the sweep trains (a step budget of 0 skips a stage)."""
    return tuple(stage for stage in STAGES if sweep[f"{stage}_steps"])


def model_stats(model_cfg) -> dict:
    """Image tokens per crop (after pooling), pooled width, parameter counts (all / connector)."""
    params = abstract_params(model_cfg)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    size = lambda x: int(np.prod(getattr(x, "value", x).shape))
    connector = sum(size(x) for path, x in leaves if "connector" in jax.tree_util.keystr(path))
    h, w = config_lib.pooled_grid(model_cfg)
    return {"image_tokens": h * w, "pooled_grid": [h, w], "pooled_dim": config_lib.pooled_dim(model_cfg),
            "params": sum(size(x) for _, x in leaves), "connector_params": connector}


def fingerprint(sweep, cfgs: dict) -> str:
    """Identifies what a result depends on: the configs of the stages the sweep trains and the evaluation
    settings."""
    key = {"cfg": {stage: cfgs[stage].to_dict() for stage in trained_stages(sweep)},
           "eval": [sweep.eval_examples, sweep.max_new_tokens, sweep.gain_examples]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ one run

class TimedData:
    """Wraps a data iterator, recording when each batch is taken (= one train step apart) and how many
    image tokens its rows hold; forwards the rest (get_state / set_state for checkpointing, skipped counts)."""

    def __init__(self, data):
        self.data, self.times, self.image_tokens = data, [], []

    def __iter__(self):
        return self

    def __next__(self):
        self.times.append(time.perf_counter())
        batch = next(self.data)
        idx = np.asarray(batch["image_input_idx"])
        self.image_tokens.append(float((idx >= 0).sum()) / idx.shape[0])
        return batch

    def __getattr__(self, name):
        return getattr(self.data, name)

    def step_seconds(self) -> float | None:
        """Mean seconds per step after the first two (which include compilation)."""
        t = self.times[2:]
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None

    def image_tokens_per_row(self) -> float | None:
        return float(np.mean(self.image_tokens)) if self.image_tokens else None


def train_variant(sweep, cfgs: dict, tokenizer, vdir: epath.Path) -> tuple[dict, dict]:
    """The trained stages in order in vdir/stage*, each from the last; returns (final state, timings)."""
    timing, init_from = {}, ""
    for stage in trained_stages(sweep):
        tcfg = cfgs[stage]
        tcfg.init_from = str(init_from)
        data = TimedData(factory.make_data(tcfg, tokenizer))
        start = time.perf_counter()
        state = trainer.train(tcfg, data, vdir / stage)
        timing[stage] = {"seconds": time.perf_counter() - start, "steps_run": len(data.times),
                         "step_seconds": data.step_seconds(), "image_tokens_per_row": data.image_tokens_per_row()}
        init_from = vdir / stage / "checkpoints"
    return state, timing


def final_loss(vdir: epath.Path) -> float | None:
    path = vdir / "metrics.jsonl"
    rows = metrics_log.read(path) if path.exists() else []
    return rows[-1]["loss"] if rows else None


def evaluate_variant(sweep, cfgs: dict, params, tokenizer, vdir: epath.Path) -> dict:
    """The answer loss and image gain of each image_gain task of a trained stage on sweep.gain_examples
    held-out examples (GAIN_COLUMNS; all of image_gain's numbers under "answer_losses"), and with
    sweep.eval_examples (stage 2 trained) the METRICS of generated answers."""
    model_cfg = cfgs["stage2"].model
    bundle = MolmoBundle(model_cfg, params, tokenizer, Preprocessor(model_cfg, tokenizer))
    out = {"eval": {}}
    for column, task, key, _ in METRICS if sweep.eval_examples and sweep.stage2_steps else ():
        r = runner.evaluate(bundle, synthetic.config_held_out_source(task, cfgs["stage2"].data), task,
                            n=sweep.eval_examples, batch_size=sweep.eval_batch,
                            out_dir=vdir / "eval", show=False, max_new_tokens=sweep.max_new_tokens or None,
                            scoring={"count_none_is_zero": True})
        out[column] = r["metrics"][key]
        out["eval"][task] = {"metrics": r["metrics"], "majority_baseline": controls.majority_baseline(r),
                             "seconds": r["seconds"]}
    tasks = image_gain.held_out_tasks(cfgs, trained_stages(sweep))
    out["answer_losses"] = image_gain.answer_losses(params, tokenizer, tasks, sweep.gain_examples)
    for task, r in out["answer_losses"].items():
        out[f"{task}_loss"], out[f"{task}_gain"] = r["own"], r["gain"]
    return out


def run_variant(sweep, variant: dict, seed: int, workdir: epath.Path, tokenizer, reuse: dict | None = None) -> dict:
    """Trains and evaluates one variant with one seed, or loads its finished result.json, or takes the run
    of `reuse` (fingerprint -> a finished run of another sweep, `load_reusable`) with its fingerprint."""
    cfgs = variant_configs(sweep, variant, seed)
    vdir = workdir / variant["name"] / f"seed{seed}"
    path = vdir / "result.json"
    fp = fingerprint(sweep, cfgs)
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("fingerprint") == fp:
            print(f"[{variant['name']} seed {seed}] finished earlier: {path}")
            return {**done, "resumed": True}
        raise RuntimeError(f"{path} was made with another config (fingerprint {done.get('fingerprint')} != {fp}); "
                           "delete that variant directory or use another --workdir")
    if fp in (reuse or {}):
        print(f"[{variant['name']} seed {seed}] reused from {reuse[fp]['reused_from']} (commit {reuse[fp]['commit']})")
        return {**reuse[fp], "resumed": True}
    stages = trained_stages(sweep)
    print(f"[{variant['name']} seed {seed}] training " + " + ".join(f"{cfgs[s].optim.steps} {s}" for s in stages)
          + " steps", flush=True)
    start = time.perf_counter()
    state, timing = train_variant(sweep, cfgs, tokenizer, vdir)
    last = timing[stages[-1]]
    result = {"name": variant["name"], "seed": seed, "variant": dict(variant), "fingerprint": fp,
              "commit": provenance.commit(),
              **model_stats(cfgs["stage2"].model), "timing": timing, "step_seconds": last["step_seconds"],
              "image_tokens_per_row": last["image_tokens_per_row"], "final_train_loss": final_loss(vdir / stages[-1])}
    result.update(evaluate_variant(sweep, cfgs, state["params"], tokenizer, vdir))
    result["seconds"] = time.perf_counter() - start
    result = json.loads(json.dumps(result, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    vdir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))
    return {**result, "resumed": False}


# ------------------------------------------------------------------------------------------ the sweep

def load_reusable(paths) -> dict:
    """Fingerprint -> finished run, from stored sweep results (<out>.json): a run of this sweep with the same
    fingerprint (the same stage configs and evaluation) is taken from there instead of retrained. The
    fingerprint does not cover the code: reuse results of the code that is checked out (each run keeps its
    commit, and the sweep's outputs say which runs were reused)."""
    runs = {}
    for path in map(epath.Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"--reuse {path}: no such file")
        stored = json.loads(path.read_text())
        if "runs" not in stored:
            raise ValueError(f"--reuse {path}: not an ablate_pooling result (no 'runs')")
        for run in stored["runs"]:
            runs[run["fingerprint"]] = {**run, "commit": run.get("commit", stored["commit"]),
                                        "reused_from": run.get("reused_from", path.name)}
    return runs


def run_sweep(sweep, workdir: epath.PathLike, names: tuple[str, ...] = (), reuse: dict | None = None) -> list[dict]:
    """Every (variant, seed) run of the sweep (or of the variants `names`), seed-major: all variants of the
    first seed come first, so a sweep cut short still has paired runs; runs in `reuse` (`load_reusable`)
    are not retrained."""
    for module in sweep.imports:
        importlib.import_module(module)  # e.g. register_pooling calls
    workdir = epath.Path(workdir)
    variants = [v for v in sweep.variants if not names or v["name"] in names]
    unknown = set(names) - {v["name"] for v in sweep.variants}
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {[v['name'] for v in sweep.variants]}")
    for v in variants:
        variant_configs(sweep, v)  # fail fast on an invalid variant
    tokenizer = vocab.pixmo_lite_tokenizer(list(variant_configs(sweep, variants[0]).values()), workdir)
    return [run_variant(sweep, v, seed, workdir, tokenizer, reuse) for seed in sweep.seeds for v in variants]


# ------------------------------------------------------------------------------------------ statistics

def interval(values) -> dict:
    """Mean and the half-width of its 95% Student-t interval (None below two values)."""
    x = np.asarray([v for v in values if v is not None], np.float64)
    if len(x) == 0:
        return {"mean": None, "ci95": None, "n": 0}
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return {"mean": float(x.mean()), "ci95": half, "n": int(len(x))}


def columns_of(rows: list[dict]) -> list[str]:
    """The COLUMNS that runs (or summary rows' "metrics") have, in COLUMNS order."""
    return [c for c in COLUMNS if c in rows[0].get("metrics", rows[0])]


def summarize(results: list[dict], base: str = ablations.BASE_NAME) -> list[dict]:
    """Per variant (in order of appearance): each column's mean and 95% interval over seeds, and the
    paired difference to `base` (per seed the variant minus the base, over the seeds both finished)."""
    columns = columns_of(results)
    by_name = collections.defaultdict(dict)
    for r in results:
        by_name[r["name"]][r["seed"]] = r
    rows = []
    for name, runs in by_name.items():
        first = next(iter(runs.values()))
        row = {"name": name, "variant": first["variant"], "seeds": sorted(runs),
               "image_tokens": first["image_tokens"], "pooled_dim": first["pooled_dim"],
               "connector_params": first["connector_params"], "metrics": {}, "difference": {}}
        for key in ("step_seconds", "image_tokens_per_row", "final_train_loss", *columns):
            row["metrics"][key] = interval(r[key] for r in runs.values())
        shared = sorted(set(runs) & set(by_name.get(base, {})))
        for column in columns:
            row["difference"][column] = (None if name == base else
                                         interval(runs[s][column] - by_name[base][s][column] for s in shared))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ outputs

def _fmt(x, digits=2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _cell(stat: dict | None, signed: bool = False) -> str:
    if stat is None or stat["mean"] is None:
        return "-"
    mean = f"{stat['mean']:+.2f}" if signed else f"{stat['mean']:.2f}"
    return mean if stat["ci95"] is None else f"{mean} ± {stat['ci95']:.2f}"


def tables(summary: list[dict], majority: dict) -> str:
    """Three markdown tables: per variant its connector, image tokens, parameters and step time; each
    column's mean ± 95% interval (then the majority-answer row where a generated-answer metric is shown);
    per variant its paired difference to the base."""
    columns = columns_of(summary)
    lines = ["| variant | pooling | window | projector | ViT layers | image tokens / crop | image tokens / row "
             "| connector params | step s |", "|" + "---|" * 9]
    for r in summary:
        v, m = r["variant"], r["metrics"]
        lines.append(f"| {r['name']} | {v['pooling']} | {v['pool'][0]}x{v['pool'][1]} | {v['projector']} | "
                     f"{tuple(v['vit_layers'])} | {r['image_tokens']} | {_fmt(m['image_tokens_per_row']['mean'], 1)} | "
                     f"{r['connector_params']:,} | {_fmt(m['step_seconds']['mean'])} |")
    header = ["| variant | " + " | ".join(TITLES[c] for c in columns) + " |", "|" + "---|" * (1 + len(columns))]
    lines += [""] + header
    lines += [f"| {r['name']} | " + " | ".join(_cell(r["metrics"][c]) for c in columns) + " |" for r in summary]
    if any(c in majority for c in columns):
        lines.append("| majority answer | " + " | ".join(_fmt(majority.get(c)) for c in columns) + " |")
    lines += ["", f"Difference to {ablations.BASE_NAME} (paired by seed):", ""] + header
    lines += [f"| {r['name']} | " + " | ".join(_cell(r["difference"][c], signed=True) for c in columns) + " |"
              for r in summary if r["name"] != ablations.BASE_NAME]
    return "\n".join(lines)


def clear_differences(summary: list[dict]) -> list[tuple[str, str, dict]]:
    """(variant, column, paired difference) for every difference whose 95% interval excludes 0."""
    return [(r["name"], c, d) for r in summary for c, d in r["difference"].items()
            if d and d["mean"] is not None and d["ci95"] is not None and abs(d["mean"]) > d["ci95"]]


def differences_line(summary: list[dict]) -> str:
    """One sentence naming the paired differences whose interval excludes 0 (or saying there are none)."""
    clear = clear_differences(summary)
    if not clear:
        return f"No paired difference to {ablations.BASE_NAME} has a 95% interval that excludes 0."
    return (f"Paired differences to {ablations.BASE_NAME} whose 95% interval excludes 0: "
            + "; ".join(f"{name} {short_title(c)} {_cell(d, signed=True)}" for name, c, d in clear) + ".")


def reused_line(runs: list[dict]) -> str:
    """Which runs were taken from other sweeps' results (`--reuse`), with their commits; "" for none."""
    groups = collections.Counter((r["reused_from"], r["commit"]) for r in runs if r.get("reused_from"))
    return "; ".join(f"{n} runs reused from {source} (commit {commit})" for (source, commit), n in groups.items())


def evaluation(sweep) -> str:
    """What the sweep (a config or its stored dict) measures, in words."""
    parts = [f"per task (stage-1 captions, stage-2 tasks) the teacher-forced answer loss on "
             f"{sweep['gain_examples']} held-out examples (nats per answer token, lower is better) and its "
             "image gain: the same with each image swapped for another example's, minus it (higher: the "
             "answers use the image more)"]
    if sweep["eval_examples"]:
        parts.append(f"generated answers on {sweep['eval_examples']} held-out examples per task")
    return "; ".join(parts)


def markdown(sweep, summary: list[dict], command: str, majority: dict, runs: list[dict] = ()) -> str:
    budget = (f"stage 1: {'the recipe' if sweep.stage1_steps < 0 else sweep.stage1_steps} steps, stage 2: "
              f"{'the recipe' if sweep.stage2_steps < 0 else sweep.stage2_steps} steps")
    return "\n".join([
        f"# Connector ablation ({sweep.name})", "", f"Made by: `{command}`", "",
        f"PixMo-lite (molmo_jax/recipes, arg {sweep.recipe!r}, overrides {dict(sweep.overrides)}), seeds "
        f"{tuple(sweep.seeds)}, {budget}; {evaluation(sweep)}. Cells: mean over seeds ± the "
        f"half-width of its 95% t interval; differences are paired by seed against {ablations.BASE_NAME} "
        "(an interval that excludes 0 is a difference this sweep can see). Step time: seconds per train "
        "step of the last trained stage after compilation on this machine; image tokens per row: mean over "
        "its packed training rows." + (f" {reused}." if (reused := reused_line(runs)) else ""), "",
        tables(summary, majority), "", differences_line(summary)])


def plot(summary: list[dict], path: epath.Path):
    """Per column (one row of panels each): every variant's mean with its 95% interval (left) and its
    paired difference to the base (right), variants annotated with image tokens per crop and step time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = columns_of(summary)
    names = [r["name"] for r in summary]
    labels = [f"{r['name']} ({r['image_tokens']} tok, {_fmt(r['metrics']['step_seconds']['mean'])} s)" for r in summary]
    y = np.arange(len(summary))
    fig, axes = plt.subplots(len(columns), 2, figsize=(11, (0.3 * len(summary) + 1) * len(columns) + 1),
                             sharey=True, squeeze=False)
    for row, column in enumerate(columns):
        for col, key in enumerate(("metrics", "difference")):
            ax = axes[row, col]
            stats_ = [r[key][column] or {"mean": None, "ci95": None} for r in summary]
            mean = np.array([np.nan if s["mean"] is None else s["mean"] for s in stats_])
            err = np.array([0.0 if s["ci95"] is None else s["ci95"] for s in stats_])
            ax.errorbar(mean, y, xerr=err, fmt="o", capsize=3)
            ax.axvline(0 if key == "difference" else mean[names.index(ablations.BASE_NAME)]
                       if ablations.BASE_NAME in names else np.nan, color="grey", linestyle="--", linewidth=1)
            title = TITLES[column] if key == "metrics" else f"{short_title(column)} - {ablations.BASE_NAME}"
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
    axes[0, 0].set_yticks(y, labels)  # shared by every panel
    for ax in axes[:, 0]:
        ax.tick_params(axis="y", labelsize=8)
    axes[0, 0].invert_yaxis()
    fig.suptitle("mean over seeds with 95% intervals (left); paired difference to the released connector (right)")
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_outputs(sweep, results: list[dict], out: epath.PathLike, command: str):
    """<out>.md, <out>.json (every run, the summary, provenance) and <out>.png."""
    source = provenance.describe(command)  # before writing: rewriting stored outputs would read as "+dirty"
    out = epath.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(results)
    first = results[0]["eval"]
    majority = {c: first[t]["majority_baseline"] for c, t, _, _ in METRICS if t in first}
    out.with_suffix(".md").write_text(markdown(sweep, summary, command, majority, results) + "\n")
    runs = [{k: v for k, v in r.items() if k != "resumed"} for r in results]
    document = {**source, "sweep": sweep.to_dict(), "majority_baseline": majority, "summary": summary, "runs": runs}
    out.with_suffix(".json").write_text(json.dumps(document, indent=1, default=str))
    plot(summary, out.with_suffix(".png"))
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arg", default="quick", choices=ablations.ARGS)
    parser.add_argument("--workdir", default=None, help="default runs/ablate_pooling_<arg>")
    parser.add_argument("--out", default=None, help="output prefix; default experiments/results/ablate_pooling_<arg>")
    parser.add_argument("--only", nargs="*", default=(), help="variant names to run (default all)")
    parser.add_argument("--seeds", nargs="*", type=int, default=(),
                        help="seeds to run instead of the sweep's (e.g. --only meanq_2x2 --seeds 0: one run, timed)")
    parser.add_argument("--reuse", nargs="*", default=(),
                        help="stored sweep results (<out>.json) whose runs with the same configs are not retrained")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    with entry_points.one_line_errors("experiments.ablate_pooling", args.debug):
        run(args, argv)


def run(args, argv=None):
    logging.set_verbosity(logging.WARNING)
    command = "python -m experiments.ablate_pooling " + " ".join(shlex.quote(a) for a in
                                                                 (sys.argv[1:] if argv is None else argv))
    sweep = ablations.get_config(args.arg)
    if args.seeds:
        sweep.seeds = tuple(args.seeds)
    workdir = epath.Path(args.workdir or f"runs/ablate_pooling_{args.arg}")
    # the seeds of a variant compile the same programs (train step, evaluation): compile each once
    jax.config.update("jax_compilation_cache_dir", str(workdir / "xla_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    start = time.perf_counter()
    results = run_sweep(sweep, workdir, tuple(args.only), load_reusable(args.reuse))
    out = args.out or f"experiments/results/ablate_pooling_{args.arg}"
    summary = write_outputs(sweep, results, out, command.strip())
    print(markdown(sweep, summary, command.strip(), {}))
    print(f"\n{len(results)} runs in {(time.perf_counter() - start) / 60:.1f} min; wrote {out}.{{md,json,png}}")


if __name__ == "__main__":
    main()
