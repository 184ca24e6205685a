"""Generation speed of molmo-jax (`generate.generate`) against PyTorch on the same device, in one run.

For the "tiny" and "small" configs of bench_forward.py (LLM 64 x 2 and 512 x 8, Qwen2 family) and
batch 1 and 8, greedy decoding of N new tokens after a PROMPT-token prompt, no stop token:
  text   text-only prompts: ours vs transformers' Qwen2ForCausalLM.generate with the same LLM weights
  image  one image (every crop of the config) + text, batch 1: ours vs the official allenai/molmo
         `Molmo.generate` (greedy beam search of width 1) holding our params; only with --official-src
Per row: time to first token (a 1-token generation: prefill + first sample + transfer) and decode
throughput B * (N - 1) / (t(N tokens) - t(1 token)), the medians of interleaved runs (bench_common's
`interleaved_medians`, after compilation / warm-up), and the fraction of generated tokens on which
ours and the reference agree (random weights: a late float-rounding flip of a close argmax is possible).
Also the end-to-end rate B * N / t(N tokens), and the per-call overhead of the tiny text row (`overhead`).
JSON (--out): the rows and top-level "speedup" = min over rows
of ours / reference decode tokens/s (rows whose decode time drowned in the machine's noise, "-", left out).

Run (text rows; the project venv):
  .venv/bin/python -m experiments.bench_generate --quick --out /tmp/bench_generate.json
With the official reference: the separate transformers-4.46.3 venv of bench_forward.py's docstring:
  HF_HUB_OFFLINE=1 /tmp/bench-venv/bin/python -m experiments.bench_generate --quick \
      --official-src /tmp/molmo --out /tmp/bench_generate.json
`--configs 7b-d-width`: Molmo-7B-D's width with 2 decoder layers (bench_forward.GPU_CONFIGS; for a GPU, where
the torch models run on "cuda"; experiments/gpu_bench.sh). `--threads 1`: one thread each (a machine that other jobs load); ours runs as `MolmoBundle` runs it
(config frozen and weights in `decoding.generation_params` once).
"""
from __future__ import annotations

import functools
from typing import Callable

from experiments import bench_common, bench_forward  # bench_forward stubs torchvision before transformers loads
from experiments.bench_forward import build_models, official_model, prefill_inputs

import jax
import ml_collections
import numpy as np
import torch
import transformers

from molmo_jax import decoding
from molmo_jax.decoding import Sampling, generate, generation_params

PROMPT = 64  # prompt tokens of the text rows (one length bucket: no padding)
OFFICIAL_TOKENIZER = bench_forward.OFFICIAL_TEMPLATE.parent / "base_tokenizer"

Generator = Callable[[int], np.ndarray]  # new-token count -> int[B, n] generated ids


def ours(cfg, params, inputs: dict[str, np.ndarray]) -> Generator:
    """`generate` as `MolmoBundle` calls it: config frozen and weights in `generation_params` once."""
    cfg, params = ml_collections.FrozenConfigDict(cfg), generation_params(params)
    return lambda n: generate(cfg, params, inputs, Sampling(max_new_tokens=n))


def hf(model, inputs: dict[str, np.ndarray]) -> Generator:
    ids = torch.from_numpy(inputs["input_ids"]).long().to(model.device)
    def call(n):
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False)
        return out[:, ids.shape[1]:].cpu().numpy()
    return call


def official(model, inputs: dict[str, np.ndarray]) -> Generator:
    """Official greedy generation; it stops early if every row produced EOS (counted tokens say so)."""
    device = next(model.parameters()).device
    args = {k: (torch.from_numpy(x).long() if k.endswith(("ids", "idx")) else torch.from_numpy(x)).to(device)
            for k, x in inputs.items()}
    def call(n):
        with torch.inference_mode():
            return model.generate(**args, max_steps=n, beam_size=1).token_ids[:, 0].cpu().numpy()
    return call


def row(name: str, workload: str, inputs, mine: Generator, ref: Generator, reference: str, n: int,
        repeats: int, min_seconds: float = 0.0) -> dict:
    """Times 1-token and n-token generations of both, interleaved; TTFT, decode tokens/s, agreement."""
    calls = {"ours_1": lambda: mine(1), "ref_1": lambda: ref(1), "ours_n": lambda: mine(n), "ref_n": lambda: ref(n)}
    timed = bench_common.interleaved_medians(calls, repeats, min_seconds)
    (t1_ours, _), (t1_ref, _), (tn_ours, tok_ours), (tn_ref, tok_ref) = (timed[k] for k in calls)
    b = inputs["input_ids"].shape[0]
    steps = min(tok_ours.shape[1], tok_ref.shape[1])
    r = dict(config=name, workload=workload, reference=reference, batch=b, prompt_tokens=inputs["input_ids"].shape[1],
             new_tokens=n, reference_new_tokens=int(tok_ref.shape[1]),
             ours_ttft_s=t1_ours, reference_ttft_s=t1_ref,
             ours_decode_tokens_per_s=decode_rate(b, t1_ours, tn_ours, tok_ours.shape[1]),
             reference_decode_tokens_per_s=decode_rate(b, t1_ref, tn_ref, tok_ref.shape[1]),
             ours_end_to_end_tokens_per_s=b * tok_ours.shape[1] / tn_ours,
             reference_end_to_end_tokens_per_s=b * tok_ref.shape[1] / tn_ref,
             token_agreement=float(np.mean(tok_ours[:, :steps] == tok_ref[:, :steps])), ttft_speedup=t1_ref / t1_ours)
    resolved = r["ours_decode_tokens_per_s"] and r["reference_decode_tokens_per_s"]
    r["speedup"] = r["ours_decode_tokens_per_s"] / r["reference_decode_tokens_per_s"] if resolved else None
    return r


def decode_rate(batch: int, t1: float, tn: float, count: int) -> float | None:
    """batch * (count - 1) new tokens over the time beyond the first token; None when the machine's noise
    hides the decode time (tn <= t1)."""
    return batch * (count - 1) / (tn - t1) if tn > t1 and count > 1 else None


def bench_config(name: str, n: int, repeats: int, official_src: str | None, batches=(1, 8),
                 min_seconds: float = 0.0) -> list[dict]:
    cfg = {**bench_forward.CONFIGS, **bench_forward.GPU_CONFIGS}[name]()
    model, params = build_models(cfg)
    rng = np.random.default_rng(0)
    rows = []
    for b in batches:
        text = {"input_ids": rng.integers(1, cfg.llm.vocab_size, (b, PROMPT), dtype=np.int32)}
        rows.append(row(name, "text", text, ours(cfg, params, text), hf(model, text),
                        f"transformers {transformers.__version__} Qwen2 generate", n, repeats, min_seconds))
    if official_src:
        reference = official_model(official_src, cfg, params).to(bench_common.torch_device())
        reference.config.tokenizer.identifier = str(OFFICIAL_TOKENIZER)  # its EOS id, for generate
        inputs = prefill_inputs(cfg)
        rows.append(row(name, "image", inputs, ours(cfg, params, inputs), official(reference, inputs),
                        "official allenai/molmo Molmo.generate", n, repeats, min_seconds))
    return rows


def overhead(repeats: int, min_seconds: float) -> dict[str, float]:
    """What one `generate` call of the tiny text row (batch 1, 1 new token) is made of, median seconds:
    the whole call as `MolmoBundle` makes it, the jitted program alone (dispatch and run on device-ready
    inputs, waiting for its result; and with its tokens copied to the host: the difference is the
    transfer), an empty jitted call (dispatch), bucketing the inputs, and the two per-call costs a prepared
    call skips (freezing the config, making the PRNG key)."""
    cfg = bench_forward.CONFIGS["tiny"]()
    _, params = build_models(cfg)
    inputs = {"input_ids": np.random.default_rng(0).integers(1, cfg.llm.vocab_size, (1, PROMPT), dtype=np.int32)}
    frozen, prepared, sampling = ml_collections.FrozenConfigDict(cfg), generation_params(params), Sampling(1)
    program = functools.partial(decoding._generate_jit, cfg=frozen, sampling=sampling)
    device_inputs, key = jax.device_put(decoding.bucketed_inputs(inputs)), jax.random.key(0)
    empty = jax.jit(lambda x: x)
    scalar = jax.device_put(np.int32(0))
    calls = {"generate": lambda: generate(frozen, prepared, inputs, sampling),
             "program": lambda: program(prepared, device_inputs, key).block_until_ready(),
             "empty_jit": lambda: empty(scalar).block_until_ready(),
             "bucketing": lambda: decoding.bucketed_inputs(inputs),
             "program_to_host": lambda: np.asarray(program(prepared, device_inputs, key)),
             "freeze_config": lambda: ml_collections.FrozenConfigDict(cfg),
             "prng_key": lambda: jax.random.key(0).block_until_ready()}
    timed = bench_common.interleaved_medians(calls, repeats, min_seconds)
    return {f"{name}_s": seconds for name, (seconds, _) in timed.items()}


def print_table(rows: list[dict]):
    fmt = lambda x, spec: "-" if x is None else format(x, spec)
    print(f"{'config':7} {'workload':8} {'B':>2} {'framework':42} {'TTFT ms':>8} {'decode tok/s':>12} "
          f"{'e2e tok/s':>9} {'ratio':>6} {'agree':>6}")
    for r in rows:
        for who, label in (("ours", "molmo-jax (jax.jit, lax.while_loop)"), ("reference", r["reference"])):
            ratio, agree = (fmt(r["speedup"], ".2f"), f"{r['token_agreement']:.2f}") if who == "ours" else ("", "")
            print(f"{r['config']:7} {r['workload']:8} {r['batch']:2d} {label:42} {1e3 * r[f'{who}_ttft_s']:8.1f} "
                  f"{fmt(r[f'{who}_decode_tokens_per_s'], '12.0f'):>12} {r[f'{who}_end_to_end_tokens_per_s']:9.0f} "
                  f"{ratio:>6} {agree:>6}")


def main(argv=None) -> dict:
    parser = bench_common.arg_parser(__doc__)
    parser.add_argument("--official-src", help="checkout of allenai/molmo: adds image+text rows")
    parser.add_argument("--configs", help="comma-separated, of "
                        f"{sorted(bench_forward.CONFIGS) + sorted(bench_forward.GPU_CONFIGS)} (default: the mode's)")
    bench_common.add_threads_flag(parser)
    args = bench_common.parse(parser, argv, __file__)
    threads = args.threads
    bench_common.set_threads(threads)
    configs, batches, n, repeats, min_seconds = {
        "smoke": (["tiny"], (2,), 4, 1, 0), "quick": (bench_forward.CONFIGS, (1, 8), 32, 3, 2),
        "full": (bench_forward.CONFIGS, (1, 8), 128, 5, 5)}[args.mode]
    if args.configs:
        configs = args.configs.split(",")
        if unknown := sorted(set(configs) - set(bench_forward.CONFIGS) - set(bench_forward.GPU_CONFIGS)):
            parser.error(f"--configs: unknown {unknown}")
    rows = [r for name in configs for r in bench_config(name, n, repeats, args.official_src, batches, min_seconds)]
    print_table(rows)
    calls = overhead(repeats, min_seconds)
    print("per-call overhead, tiny text batch 1, 1 new token (ms): "
          + ", ".join(f"{name.removesuffix('_s')} {1e3 * t:.3f}" for name, t in calls.items()))
    resolved = [r["speedup"] for r in rows if r["speedup"] is not None]
    result = dict(speedup=min(resolved) if resolved else float("nan"), threads=threads, repeats=repeats,
                  min_seconds=min_seconds, new_tokens=n, official_src=args.official_src, torch=torch.__version__,
                  transformers=transformers.__version__, rows=rows, overhead=calls)
    return bench_common.finish(result, args, "min over rows, ours / reference decode tokens/s")


if __name__ == "__main__":
    main()
