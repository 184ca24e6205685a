"""Input-pipeline benchmark: examples/s of the stage-2 pipeline vs what a training step consumes.

    python -m experiments.bench_pipeline --quick --out /tmp/bench_pipeline.json

Pipeline: the main job's stage-2 data (`stage2.get_config("lite")` through `factory.make_data`: the
PixMo-lite mixture through `mixtures.stage2`, 112 px images, 8 packed rows of 192 tokens, the PixMo-lite
BPE), with 0 (threads only) and 2 grain worker processes (`data.num_workers`); the rate is examples/s over
timed batches after warm-up batches (worker start-up excluded).
Training: `bench_train.ours` (the jitted train step, float32, text-only batches of `bench_train.SHAPES`)
of the tiny and small configs; examples/s = batch / median step time. Rows are config x workers; JSON
top level "speedup" = min over rows of pipeline examples/s / train-step examples/s (> 1: the pipeline
keeps up with that training step).
"""
from __future__ import annotations

import tempfile
import time

from absl import flags

from data_pipelines import factory, vocab
from experiments import bench_common, bench_train
from molmo_jax.recipes import stage1, stage2


def pipeline_rate(cfg, tokenizer, workers: int, batches: int, warmup: int) -> float:
    """Examples/s of the main job's stage-2 pipeline (the stage-2 config `cfg`) with `workers` grain
    processes."""
    cfg.data.num_workers = workers
    it = factory.make_data(cfg, tokenizer)
    for _ in range(warmup):
        next(it)
    start, examples = time.perf_counter(), 0
    for _ in range(batches):
        examples += int((next(it)["position_ids"] == 0).sum())  # packed rows hold several examples
    return examples / (time.perf_counter() - start)


def train_rate(size: str, iters: int) -> tuple[float, int]:
    """(examples/s, batch) of one jitted float32 train step of bench_train's `size` config."""
    cfg = bench_train.model_config(size, "float32")
    b, t = bench_train.SHAPES[size]
    step, _ = bench_train.ours(cfg, bench_train.random_batch(cfg, b, t))
    step()  # compile; interleaved_medians warms up once more
    (seconds, _), = bench_common.interleaved_medians({"step": step}, iters).values()
    return b / seconds, b


def table(rows: list[dict]) -> str:
    head = f"{'config':6} {'workers':>7} {'pipeline ex/s':>13} {'train ex/s':>10} {'ratio':>7}"
    lines = [f"{r['config']:6} {r['workers']:7d} {r['pipeline_examples_per_s']:13.1f} "
             f"{r['train_examples_per_s']:10.1f} {r['ratio']:7.2f}" for r in rows]
    return "\n".join([head] + lines)


def run(configs, workers, batches: int, warmup: int, iters: int, workdir: str) -> dict:
    cfg = stage2.get_config("lite")
    tokenizer = vocab.pixmo_lite_tokenizer([stage1.get_config("lite"), cfg], workdir)
    pipeline = {w: pipeline_rate(cfg, tokenizer, w, batches, warmup) for w in workers}
    train = {c: train_rate(c, iters) for c in configs}
    rows = [{"config": c, "train_batch": train[c][1], "workers": w, "pipeline_examples_per_s": pipeline[w],
             "train_examples_per_s": train[c][0], "ratio": pipeline[w] / train[c][0]}
            for c in configs for w in workers]
    return {"pipeline_batch": cfg.data.global_batch, "batches": batches,
            "iters": iters, "rows": rows, "speedup": min(r["ratio"] for r in rows)}


def main(argv=None):
    parser = bench_common.arg_parser(__doc__)
    parser.add_argument("--configs", nargs="+", choices=sorted(bench_train.SHAPES),
                        help="train-step configs (default tiny small; smoke: tiny)")
    parser.add_argument("--workers", nargs="+", type=int, help="grain worker processes (default 0 2; smoke: 0)")
    parser.add_argument("--workdir", help="where the PixMo-lite tokenizer is trained (default: a temp dir)")
    args = bench_common.parse(parser, argv, __file__)
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (defaults); this script has none
    configs = args.configs or (["tiny"] if args.smoke else ["tiny", "small"])
    workers = args.workers or ([0] if args.smoke else [0, 2])
    batches, warmup, iters = {"smoke": (2, 1, 1), "quick": (24, 4, 3), "full": (100, 10, 20)}[args.mode]
    with tempfile.TemporaryDirectory() as tmp:
        result = run(configs, workers, batches, warmup, iters, args.workdir or tmp)
    print(table(result["rows"]))
    return bench_common.finish(result, args, "min pipeline / train-step examples/s")


if __name__ == "__main__":
    main()
