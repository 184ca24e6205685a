"""Connector ablation on PixMo-lite: pooling type x window x projector x ViT layers, same seed / data / steps.

    python -m experiments.ablate_pooling --arg quick   # 6 variants, a few minutes on 2 CPU cores
    python -m experiments.ablate_pooling --arg full    # 10 variants x 500 steps, about 50 minutes

The sweep (experiments/ablations.py `get_config(arg)`) lists variants; each is trained with the stage
recipes' PixMo-lite configs (molmo_jax/recipes) plus its overrides in <workdir>/<variant>/stage*/ (curves
in stage*/curves.png; an interrupted run resumes from its checkpoints), then evaluated on the held-out
synthetic split: counting accuracy, clock accuracy (hour and minute exact), pointing F1 (KV-cache greedy
generation, official scorers) and the held-out caption loss. <workdir>/<variant>/result.json marks a finished
variant: a rerun loads it instead of retraining. Writes <out>.md (table, with the command at the top),
<out>.json, <out>.png (each metric vs image tokens per crop and vs train step time, loss curves) and
<out>_curves/<variant>.png (each variant's stage-2 curves.png).

A new pooling is a module registered with `molmo_jax.models.connector.register_pooling(name, factory)` in
a module listed in the sweep's `imports`, plus a variant with `pooling=name`: nothing else changes.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import shlex
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np
from absl import logging

from data_pipelines import factory, vocab
from experiments import ablations
from experiments import main as main_lib
from molmo_jax import config as config_lib
from molmo_jax import entry_points, sharding
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
COLUMNS = tuple(m[0] for m in METRICS) + ("caption_loss",)


# ------------------------------------------------------------------------------------------ configs

STAGES = {"stage1": stage1, "stage2": stage2}


def variant_config(sweep, variant: dict, stage: str = "stage2"):
    """The `stage` training config of one variant: the stage recipe's `sweep.recipe` config at the sweep's
    step budget with `ablations.overrides(sweep, variant)`."""
    cfg = STAGES[stage].get_config(sweep.recipe)
    lite.set_steps(cfg, sweep[f"{stage}_steps"])  # stage1_steps 0: stage 1 is not trained
    cfg.update_from_flattened_dict(ablations.overrides(sweep, variant))
    m = cfg.model
    if m.preprocess.crop_mode == "resize" and any(x % p for x in m.preprocess.overlap_margins
                                                  for p in variant["pool"]):
        m.preprocess.overlap_margins = (0, 0)  # unused with one resized crop (see ablations.py)
    config_lib.validate(m)
    return cfg


def variant_configs(sweep, variant: dict) -> dict:
    return {stage: variant_config(sweep, variant, stage) for stage in STAGES}


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
    """Identifies what a result depends on: the variant's stage configs and the evaluation settings."""
    key = {"cfg": {stage: cfg.to_dict() for stage, cfg in cfgs.items()},
           "eval": [sweep.eval_examples, sweep.max_new_tokens, sweep.caption_batches]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ one variant

class TimedData:
    """Wraps a data iterator, recording when each batch is taken (= one train step apart); forwards the
    rest (get_state / set_state for checkpointing, skipped counts)."""

    def __init__(self, data):
        self.data, self.times = data, []

    def __iter__(self):
        return self

    def __next__(self):
        self.times.append(time.perf_counter())
        return next(self.data)

    def __getattr__(self, name):
        return getattr(self.data, name)

    def step_seconds(self) -> float | None:
        """Mean seconds per step after the first two (which include compilation)."""
        t = self.times[2:]
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) > 1 else None


def _mesh(shape):
    """lite's mesh on the first devices (the whole machine only where the shape asks for it with -1)."""
    if -1 in tuple(shape):
        return trainer.make_mesh(shape)
    return sharding.make_mesh(tuple(shape), jax.devices()[:int(np.prod(shape))])


def train_variant(sweep, cfgs: dict, tokenizer, vdir: Path) -> tuple[dict, dict]:
    """Stage 1 (if sweep.stage1_steps) then stage 2 in vdir/stage*; returns (final state, timings)."""
    timing, init_from = {}, ""
    for stage, tcfg in cfgs.items():
        if stage == "stage1" and not sweep.stage1_steps:
            continue
        tcfg.init_from = str(init_from)
        data = TimedData(factory.make_data(tcfg, tokenizer))
        start = time.perf_counter()
        state = trainer.train(tcfg, data, vdir / stage, mesh=_mesh(tcfg.mesh))
        timing[stage] = {"seconds": time.perf_counter() - start, "steps_run": max(0, len(data.times)),
                         "step_seconds": data.step_seconds()}
        init_from = vdir / stage / "checkpoints"
    return state, timing


def final_loss(vdir: Path) -> float | None:
    path = vdir / "stage2" / "metrics.jsonl"
    rows = metrics_log.read(path) if path.exists() else []
    return rows[-1]["loss"] if rows else None


def evaluate_variant(sweep, cfgs: dict, params, tokenizer, vdir: Path) -> dict:
    model_cfg = cfgs["stage2"].model
    bundle = MolmoBundle(model_cfg, params, tokenizer, Preprocessor(model_cfg, tokenizer))
    out = {"eval": {}}
    for column, task, key, _ in METRICS:
        r = runner.evaluate(bundle, task, n=sweep.eval_examples, batch_size=sweep.eval_batch,
                            out_dir=vdir / "eval", show=False, max_new_tokens=sweep.max_new_tokens or None,
                            scoring={"count_none_is_zero": True})
        out[column] = r["metrics"][key]
        out["eval"][task] = {"metrics": r["metrics"], "majority_baseline": main_lib.majority_baseline(r),
                             "seconds": r["seconds"]}
    out["caption_loss"] = main_lib.caption_loss(cfgs["stage1"], params, tokenizer, batches=sweep.caption_batches)
    return out


def run_variant(sweep, variant: dict, workdir: Path, tokenizer) -> dict:
    """Trains and evaluates one variant, or loads its finished result.json."""
    cfgs = variant_configs(sweep, variant)
    vdir = workdir / variant["name"]
    path = vdir / "result.json"
    fp = fingerprint(sweep, cfgs)
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("fingerprint") == fp:
            print(f"[{variant['name']}] finished earlier: {path}")
            return {**done, "resumed": True}
        raise RuntimeError(f"{path} was made with another config (fingerprint {done.get('fingerprint')} != {fp}); "
                           "delete that variant directory or use another --workdir")
    print(f"[{variant['name']}] training {sweep.stage1_steps} + {sweep.stage2_steps} steps", flush=True)
    start = time.perf_counter()
    state, timing = train_variant(sweep, cfgs, tokenizer, vdir)
    result = {"name": variant["name"], "variant": dict(variant), "fingerprint": fp,
              **model_stats(cfgs["stage2"].model),
              "timing": timing, "step_seconds": timing["stage2"]["step_seconds"],
              "final_train_loss": final_loss(vdir)}
    result.update(evaluate_variant(sweep, cfgs, state["params"], tokenizer, vdir))
    result["seconds"] = time.perf_counter() - start
    result["curves"] = [str(p) for p in sorted(vdir.glob("stage*/curves.png"))]
    result = json.loads(json.dumps(result, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    path.write_text(json.dumps(result, indent=1))
    return {**result, "resumed": False}


# ------------------------------------------------------------------------------------------ the sweep

def run_sweep(sweep, workdir: str | Path, names: tuple[str, ...] = ()) -> list[dict]:
    for module in sweep.imports:
        importlib.import_module(module)  # e.g. register_pooling calls
    workdir = Path(workdir)
    variants = [v for v in sweep.variants if not names or v["name"] in names]
    unknown = set(names) - {v["name"] for v in sweep.variants}
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; known: {[v['name'] for v in sweep.variants]}")
    for v in variants:
        variant_configs(sweep, v)  # fail fast on an invalid variant
    tokenizer = vocab.pixmo_lite_tokenizer(list(variant_configs(sweep, variants[0]).values()), workdir)
    return [run_variant(sweep, v, workdir, tokenizer) for v in variants]


def _fmt(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def markdown(sweep, results: list[dict], command: str, curves_dir: str | None = None) -> str:
    first = results[0]["eval"]
    base = {c: first[t]["majority_baseline"] for c, t, _, _ in METRICS}
    lines = [f"# Connector ablation ({sweep.name})", "", f"Made by: `{command}`", "",
             f"PixMo-lite (molmo_jax/recipes, arg {sweep.recipe!r}, overrides {dict(sweep.overrides)}), "
             f"stage 1: {sweep.stage1_steps} steps, stage 2: {sweep.stage2_steps} steps "
             f"({'from a random init' if not sweep.stage1_steps else 'from stage 1'}); held-out synthetic "
             f"split, {sweep.eval_examples} examples per task. Step time: seconds per stage-2 train step "
             f"(after compilation) on this machine's CPU.", "",
             "| variant | pooling | window | projector | ViT layers | image tokens / crop | pooled dim "
             "| connector params | step s | final train loss | "
             + " | ".join(title for *_, title in METRICS) + " | caption loss |",
             "|" + "---|" * (11 + len(METRICS))]
    for r in results:
        v = r["variant"]
        lines.append(f"| {r['name']} | {v['pooling']} | {v['pool'][0]}x{v['pool'][1]} | {v['projector']} | "
                     f"{tuple(v['vit_layers'])} | {r['image_tokens']} | {r['pooled_dim']} | "
                     f"{r['connector_params']:,} | {_fmt(r['step_seconds'])} | {_fmt(r['final_train_loss'])} | "
                     + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |")
    cells = ["majority answer"] + [""] * 9 + [_fmt(base[c]) for c, *_ in METRICS] + [""]
    lines.append("| " + " | ".join(cells) + " |")
    if curves_dir is not None:
        lines += ["", "Stage-2 training curves per variant: " + ", ".join(
            f"[{r['name']}]({curves_dir}/{r['name']}.png)" for r in results if r.get("curves")), ""]
    return "\n".join(lines)


def plot(results: list[dict], path: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = {column: title for column, *_, title in METRICS}
    titles["caption_loss"] = "held-out caption loss (lower is better)"
    poolings = sorted({r["variant"]["pooling"] for r in results})
    colors = {p: plt.cm.tab10(i) for i, p in enumerate(poolings)}
    fig = plt.figure(figsize=(18, 11))
    grid = fig.add_gridspec(3, len(COLUMNS))
    for row, (x_key, x_label) in enumerate((("image_tokens", "image tokens per crop"),
                                            ("step_seconds", "seconds per train step"))):
        for col, column in enumerate(COLUMNS):
            ax = fig.add_subplot(grid[row, col])
            for r in results:
                x, y = r[x_key], r[column]
                if x is None or y is None:
                    continue
                ax.scatter(x, y, color=colors[r["variant"]["pooling"]], s=40)
                ax.annotate(r["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            if x_key == "image_tokens":
                ax.set_xscale("log", base=2)
            ax.set_xlabel(x_label)
            ax.set_title(titles[column], fontsize=10)
            ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[2, :])
    for r in results:
        path_jsonl = Path(r["curves"][-1]).with_name("metrics.jsonl") if r.get("curves") else None
        if path_jsonl and path_jsonl.exists():
            rows = metrics_log.read(path_jsonl)
            ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], label=r["name"],
                    color=colors[r["variant"]["pooling"]],
                    linestyle=["-", "--", ":", "-."][results.index(r) % 4])
    ax.set_xlabel("stage-2 step")
    ax.set_ylabel("train loss")
    ax.legend(fontsize=8, ncol=4)
    ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=colors[p], label=p) for p in poolings]
    fig.legend(handles=handles, loc="upper center", ncol=len(poolings), title="pooling")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_outputs(sweep, results: list[dict], out: str | Path, command: str):
    """<out>.md, <out>.json, <out>.png and each variant's last-stage curves.png as <out>_curves/<name>.png."""
    out = Path(out)
    curves = out.parent / f"{out.name}_curves"
    curves.mkdir(parents=True, exist_ok=True)
    for r in results:
        if r.get("curves") and Path(r["curves"][-1]).exists():
            shutil.copyfile(r["curves"][-1], curves / f"{r['name']}.png")
    out.with_suffix(".md").write_text(markdown(sweep, results, command, curves.name))
    summary = {"command": command, "sweep": sweep.to_dict(),
               "results": [{k: v for k, v in r.items() if k != "resumed"} for r in results]}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str))
    plot(results, out.with_suffix(".png"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arg", default="quick", choices=("quick", "full"))
    parser.add_argument("--workdir", default=None, help="default runs/ablate_pooling_<arg>")
    parser.add_argument("--out", default=None, help="output prefix; default experiments/results/ablate_pooling_<arg>")
    parser.add_argument("--only", nargs="*", default=(), help="variant names to run (default all)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    with entry_points.one_line_errors("experiments.ablate_pooling", args.debug):
        run(args, argv)


def run(args, argv=None):
    logging.set_verbosity(logging.WARNING)
    command = "python -m experiments.ablate_pooling " + " ".join(shlex.quote(a) for a in
                                                                 (sys.argv[1:] if argv is None else argv))
    sweep = ablations.get_config(args.arg)
    start = time.perf_counter()
    results = run_sweep(sweep, args.workdir or f"runs/ablate_pooling_{args.arg}", tuple(args.only))
    out = args.out or f"experiments/results/ablate_pooling_{args.arg}"
    write_outputs(sweep, results, out, command.strip())
    print(markdown(sweep, results, command.strip()))
    print(f"\n{len(results)} variants in {(time.perf_counter() - start) / 60:.1f} min; wrote {out}.{{md,json,png}}")


if __name__ == "__main__":
    main()
