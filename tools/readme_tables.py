"""Writes the README's generated tables between their markers, from stored results and the planner.

    python tools/readme_tables.py           # rewrite README.md in place
    python tools/readme_tables.py --check   # exit 1 naming the stale tables (tests/test_readme.py runs it)

A generated block in README.md reads

    <!-- generated: NAME (tools/readme_tables.py) -->
    ...
    <!-- end generated: NAME -->

and NAME is a key of `TABLES`:
- main_job, main_job_long: `experiments.main.results_table` of experiments/results/main_job.json and
  main_job_long.json (the main job's runs/main/summary.json, copied after a run; `--arg long`),
- plan: `molmo-jax plan` of every released model on three meshes (computed, no compilation),
- speed_forward, speed_generate, speed_moe: experiments/results/bench_{forward,generate,moe}_cpu.json,
- speed_cpu: experiments/results/bench_train_cpu.json (`python -m experiments.bench_train --out`),
- ablate_pooling_reduced, ablate_pooling_tokens: experiments/results/ablate_pooling_{reduced,tokens}.json
  (`python -m experiments.ablate_pooling --arg reduced|tokens`); ablate_pooling_axes: every stored
  ablate_pooling_<axis>.json of `experiments.ablations.AXES` in one table of paired differences,
- hf_export: experiments/results/check_hf_export.json (`python -m experiments.check_hf_export`),
- soak: experiments/results/soak_*.json (`python -m experiments.soak`).
Each stored result names its commit, command and machine, and the table says them.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) \(tools/readme_tables.py\) -->\n)(?P<body>.*?)"
                   r"(<!-- end generated: (?P=name) -->)", re.S)

# (mesh, label) of the plan table's rows for each model; batch = one sequence per batch shard.
PLAN_MESHES = (("fsdp=256", "v5p-256"), ("fsdp=8", "8xH100"), ("fsdp=16,tensor=4", "v4-128"))
PLAN_MODELS = ("MolmoE-1B-0924", "Molmo-7B-O-0924", "Molmo-7B-D-0924", "Molmo-72B-0924")
PLAN_SEQ = 2304
PLAN_ACCELERATORS = ("TPU v5e", "TPU v4", "H100")


def _source(result: dict) -> str:
    return f"commit {result['commit']}, `{result['command']}`, {result['machine']}"


def main_job_table(name: str = "main_job") -> str:
    from experiments import main
    summary = json.loads((RESULTS / f"{name}.json").read_text())
    c = summary["caption_loss"]
    return (main.results_table(summary) + "\n\n" + main.landing_line(summary) + " "
            f"Held-out caption loss {c['init']:.2f} at init, {c['after_stage1']:.2f} after stage 1; "
            f"{summary['seconds'] / 60:.1f} minutes in all ({_source(summary)}).\n")


def plan_table() -> str:
    from molmo_jax import config, plan
    plans = []
    for name in PLAN_MODELS:
        cfg = config.get_config(name)
        cfg.dtype = "bfloat16"
        for mesh, _ in PLAN_MESHES:
            shards = math.prod(plan.parse_mesh(mesh)[a] for a in plan.BATCH_AXES)
            plans.append(plan.plan(cfg, mesh, shards, PLAN_SEQ))
    return (plan.table(plans, PLAN_ACCELERATORS) + "\n\n"
            f"Meshes: {', '.join(f'{m} ({label})' for m, label in PLAN_MESHES)}; bf16 compute, f32 params and "
            f"AdamW, seq {PLAN_SEQ}, the config's crops, one sequence per batch shard "
            "(`molmo-jax plan --config NAME --mesh MESH --batch SHARDS --seq 2304`).\n")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, ["---"] * len(header), *rows])


def speed_table(name: str) -> str:
    """The train step (experiments/bench_train.py) ours vs torch, and the crop-budget row, from a stored run."""
    result = json.loads((RESULTS / f"{name}.json").read_text())
    peak = result["matmul_peak_flops_per_s"]
    header = ["config (batch x tokens)", "dtype", "ours tok/s", "torch tok/s", "ours / torch", "ours / f32 matmul peak",
              "torch / f32 matmul peak"]
    rows = [[f"{r['config']} ({r['batch']} x {r['seq_len']})", r["dtype"], _si(r["ours_tokens_per_s"]),
             _si(r["torch_tokens_per_s"]), f"{r['speedup']:.2f}", _percent(r["ours_fraction_of_peak"]),
             _percent(r["torch_fraction_of_peak"])] for r in result["rows"]]
    budget = result["crop_budget"]
    return (_markdown(header, rows) + "\n\n"
            f"f32 matmul peak {peak / 1e9:,.0f} GFLOP/s (jitted n^3 matmul), "
            f"{result['iters']} timed steps. Crop budget row ({budget['rows']} rows, {budget['crop_slots']} crop "
            f"slots, {budget['real_crops']} real crops): every slot {budget['every_slot_examples_per_s']:.2f} "
            f"examples/s, the real crops only {budget['real_crops_only_examples_per_s']:.2f} "
            f"({budget['speedup']:.2f}x); {_source(result)}.\n")


def ablation_table(name: str) -> str:
    """The connector ablation's tables (`experiments.ablate_pooling.tables`), the differences it can see, and
    the sweep's budget, its trained and reused runs and its source."""
    from experiments import ablate_pooling
    result = json.loads((RESULTS / f"{name}.json").read_text())
    sweep, summary = result["sweep"], result["summary"]
    steps = lambda stage: "the recipe's" if sweep[f"{stage}_steps"] < 0 else f"{sweep[f'{stage}_steps']:,}"
    overrides = "".join(f", {field}={value}" for field, value in sweep["overrides"])
    return (ablate_pooling.tables(summary, result["majority_baseline"]) + "\n\n"
            + ablate_pooling.differences_line(summary) + "\n\n"
            f"{len(summary)} variants x {len(sweep['seeds'])} seeds; recipe {sweep['recipe']!r}, stage 1: "
            f"{steps('stage1')} steps, stage 2: {steps('stage2')} steps{overrides}; "
            f"{ablate_pooling.evaluation(sweep)}; {_ablation_runs(result)}; {_source(result)}.\n")


# the columns of the axes' summary table: the generated answers, then the stage-2 image gains
AXES_COLUMNS = ("point_f1", "count_acc", "clock_acc", "capqa_acc", "points_gain", "count_gain", "clocks_gain")


def ablation_axes_table() -> str:
    """The full sweep's axes (`experiments.ablations.AXES`) stored so far in one table: the base's means, then
    per variant of each stored axis sweep (listed once) its image tokens, step time and paired differences to
    the base; then the axes not yet run, and each sweep's runs and source."""
    from experiments import ablate_pooling, ablations
    stored = {axis: json.loads(path.read_text()) for axis in ablations.AXES
              if (path := RESULTS / f"ablate_pooling_{axis}.json").exists()}
    header = ["variant", "axis", "image tokens / crop", "step s", *map(ablate_pooling.short_title, AXES_COLUMNS)]
    rows, base, seen = [], None, set()
    for axis, result in stored.items():
        for r in result["summary"]:
            if r["name"] in seen:  # a variant of two axes (2wide_2x2: types, projectors), reused: listed once
                continue
            seen.add(r["name"])
            step = ablate_pooling._fmt(r["metrics"]["step_seconds"]["mean"])
            if r["name"] == ablations.BASE_NAME:
                base = [f"{r['name']} (base: mean)", "-", str(r["image_tokens"]), step,
                        *(ablate_pooling._cell(r["metrics"][c]) for c in AXES_COLUMNS)]
            else:
                rows.append([r["name"], axis, str(r["image_tokens"]), step,
                             *(ablate_pooling._cell(r["difference"][c], signed=True) for c in AXES_COLUMNS)])
    missing = [axis for axis in ablations.AXES if axis not in stored]
    return (_markdown(header, [base, *rows]) + "\n\n"
            "Base row: means over seeds ± 95% intervals; variant rows: paired differences to the base ± 95% "
            f"intervals (seeds {', '.join(map(str, next(iter(stored.values()))['sweep']['seeds']))}); step s: "
            "seconds per stage-2 step on the machine that trained the variant (the base's: of its first stored "
            "sweep). " + (f"Not yet run: {', '.join(f'`--arg {a}`' for a in missing)}. " if missing else "")
            + "; ".join(f"{axis}: {_ablation_runs(r)}, {_source(r)}" for axis, r in stored.items()) + ".\n")


def _ablation_runs(result: dict) -> str:
    """How many runs a stored sweep trained, in how many minutes (their seconds, summed), and which it reused."""
    from experiments import ablate_pooling
    trained = [r for r in result["runs"] if not r.get("reused_from")]
    reused = ablate_pooling.reused_line(result["runs"])
    return (f"{len(trained)} runs trained in {sum(r['seconds'] for r in trained) / 60:.0f} minutes (their seconds, "
            "summed)" + (f", {reused}" if reused else ""))


def forward_table() -> str:
    """Prefill (experiments/bench_forward.py) ours vs the reference, from its stored CPU run."""
    result = json.loads((RESULTS / "bench_forward_cpu.json").read_text())
    rows = [[r["config"], r["workload"], str(r["tokens"]), _si(r["ours_tokens_per_s"]),
             _si(r["reference_tokens_per_s"]), f"{r['speedup']:.2f}", _si(r["ours_after_reference_tokens_per_s"]),
             r["reference"]] for r in result["rows"]]
    header = ["config", "workload", "tokens", "ours tok/s", "reference tok/s", "ours / reference",
              "ours tok/s right after a reference call", "reference"]
    return _markdown(header, rows) + f"\n\n{result['threads']} threads; {_source(result)}.\n"


def moe_table() -> str:
    """MoE feed-forward (experiments/bench_moe.py): our paths, the dense MLP ceiling and PyTorch, stored CPU run."""
    from experiments import bench_moe
    result = json.loads((RESULTS / "bench_moe_cpu.json").read_text())
    sizes = {r["size"]: f"{r['size']}: {r['d_model']} wide, {r['experts']} experts of {r['expert_hidden']}, top "
             f"{r['top_k']}, {r['tokens']:,} tokens" for r in result["rows"]}
    return (bench_moe.table(result["rows"]) + f"\n\nTokens/s; {'; '.join(sizes.values())}; torch "
            f"{result['torch_threads']} threads; {_source(result)}.\n")


def generate_table() -> str:
    """Generation (experiments/bench_generate.py) ours vs the reference, and the tiny row's per-call overhead."""
    result = json.loads((RESULTS / "bench_generate_cpu.json").read_text())
    ratio = lambda x: "-" if x is None else f"{x:.2f}"
    rate = lambda x: "-" if x is None else f"{x:,.0f}" if x < 1e4 else _si(x)
    rows = [[r["config"], r["workload"], str(r["batch"]),
             f"{1e3 * r['ours_ttft_s']:.1f} / {1e3 * r['reference_ttft_s']:.1f}",
             f"{rate(r['ours_decode_tokens_per_s'])} / {rate(r['reference_decode_tokens_per_s'])}",
             ratio(r["speedup"]), f"{r['token_agreement']:.2f}"] for r in result["rows"]]
    header = ["config", "workload", "batch", "TTFT ms, ours / reference", "decode tok/s, ours / reference",
              "decode ours / reference", "tokens agreeing"]
    ms = {name.removesuffix("_s"): f"{1e3 * seconds:.2f}" for name, seconds in result["overhead"].items()}
    parts = [f"`generate` {ms['generate']}", f"the jitted program alone {ms['program']}",
             f"with the tokens' transfer to the host {ms['program_to_host']}",
             f"bucketing the inputs {ms['bucketing']}",
             f"an empty jitted call {ms['empty_jit']}", f"skipped by a prepared call: freezing the config "
             f"{ms['freeze_config']}, making the PRNG key {ms['prng_key']}"]
    return (_markdown(header, rows) + f"\n\n{result['new_tokens']} new tokens; {result['threads']} threads; -: a "
            "decode time within the noise of the first token's. Per call, tiny text, batch 1, 1 new token (ms): "
            + "; ".join(parts) + f"; {_source(result)}.\n")


def hf_export_line() -> str:
    """The official remote code vs our logits on our `hf_release` exports (experiments/check_hf_export.py)."""
    result = json.loads((RESULTS / "check_hf_export.json").read_text())
    runs = result["runs"].values()
    diffs = ", ".join(f"{r['max_abs_diff']:.1e} ({r['checkpoint'].rsplit('/', 1)[-1]})" for r in runs)
    crops = "/".join(sorted({str(r["crops"]) for r in runs}))
    std = "/".join(sorted({f"{r['logit_std']:.1f}" for r in runs}))
    return (f"Max |difference| of the logits {diffs} on a {crops}-crop image, logit std {std}; transformers "
            f"{result['transformers']}; {_source(result)}.\n")


def soak_line(name: str) -> str:
    """Memory and descriptors of one soak run (experiments/soak.py)."""
    r = json.loads((RESULTS / f"{name}.json").read_text())
    (_, first_step, first_loss), (_, last_step, last_loss) = r["evals"][0], r["evals"][-1]
    arenas = f" with MALLOC_ARENA_MAX={r['malloc_arena_max']}" if r.get("malloc_arena_max") else ""
    return (f"- {r['mode']}{arenas}, {r['steps']:,} steps in {r['seconds']:.0f} s: live device arrays "
            f"{r['device_mb_start']:.2f} -> "
            f"{r['device_mb_end']:.2f} MB ({r['device_slope_percent_per_1k_steps']:+.2f}% per 1,000 steps), host "
            f"RSS {r['rss_mb_start']:.0f} -> {r['rss_mb_end']:.0f} MB ({r['rss_slope_percent_per_1k_steps']:+.2f}% per "
            f"1,000 steps), open descriptors {r['open_fds_start']} -> {r['open_fds_end']}, held-out loss of the "
            f"checkpoints {first_loss:.2f} (step {first_step}) to {last_loss:.3f} (step {last_step}); {_source(r)}.\n")


def _si(x: float) -> str:
    return f"{x:.0f}" if x < 1e3 else f"{x / 1e3:.1f}k" if x < 1e5 else f"{x / 1e3:.0f}k"


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%" if x < 0.1 else f"{100 * x:.0f}%"


TABLES: dict[str, Callable[[], str]] = {
    "main_job": main_job_table,
    "main_job_long": lambda: main_job_table("main_job_long"),
    "plan": plan_table,
    "speed_cpu": lambda: speed_table("bench_train_cpu"),
    "hf_export": hf_export_line,
    "speed_forward": forward_table,
    "speed_generate": generate_table,
    "speed_moe": moe_table,
    "soak": lambda: "".join(soak_line(n) for n in ("soak_full", "soak_full_malloc_arena_max_2", "soak_quick")),
    "ablate_pooling_reduced": lambda: ablation_table("ablate_pooling_reduced"),
    "ablate_pooling_tokens": lambda: ablation_table("ablate_pooling_tokens"),
    "ablate_pooling_axes": ablation_axes_table,
}


def render(text: str) -> str:
    """`text` with every generated block's body regenerated; raises ValueError on an unknown name."""
    def body(match: re.Match) -> str:
        name = match["name"]
        if name not in TABLES:
            raise ValueError(f"README block {name!r} is not one of {sorted(TABLES)}")
        return match.group(1) + TABLES[name]() + match.group(4)
    return BLOCK.sub(body, text)


def stale(text: str) -> list[str]:
    """Names of the blocks whose body differs from what `render` writes."""
    new = {m["name"]: m["body"] for m in BLOCK.finditer(render(text))}
    return [m["name"] for m in BLOCK.finditer(text) if m["body"] != new[m["name"]]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a table is stale")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    if args.check:
        if names := stale(text):
            print(f"{args.readme}: stale generated tables {names}; run python tools/readme_tables.py",
                  file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(render(text))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
