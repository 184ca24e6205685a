"""Train-step benchmark: our jitted Molmo step vs a PyTorch AdamW step of transformers' Qwen2ForCausalLM.

    python -m experiments.bench_train --quick --out /tmp/bench_train.json

For the tiny and a small Qwen2-family config (and a "medium" one for accelerators: --sizes), in float32
and bfloat16 compute (float32 master params):
  * ours: `trainer.train_step` (per-component clip + AdamW, z-loss, dropout as configured) on text-only
    batches of B x T real tokens, 1 device, no remat; tokens/s, model FLOP/s (6 * matmul params * tokens
    + 12 * L * T^2 * d attention, no recomputation counted) as a fraction of this CPU's f32 matmul peak
    (a jitted 2048^3 matmul measured in the same run), XLA's peak memory (arguments + temporaries) vs
    an analytic estimate (16 bytes per param for params, grads, Adam m and v, plus activations);
  * torch: Qwen2ForCausalLM of the same LLM config (sdpa attention), loss.backward, clip_grad_norm_ 1.0,
    torch.optim.AdamW(betas (0.9, 0.95), eps 1e-6); bf16 rows use torch.autocast (fp32 master params).
On a GPU both run there (torch on "cuda", synchronised after each step; float32 matmuls may use TF32 on
both sides, as JAX's default precision does). Steps are timed interleaved (ours, torch, ours, ...) and the
median is reported. JSON top level
"speedup" = the worst row's ours/torch tokens/s ratio.

Separate row (issue 10), "lora_vs_full": optimizer-state bytes and XLA step peak memory of fine-tuning
the small config fully vs with LoRA rank 8 (`molmo_jax.train.finetune`), as LoRA / full ratios.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments import bench_common
from molmo_jax import distributed, lora, sharding
from molmo_jax.models.molmo import Molmo, param_count
from molmo_jax.recipes import stage1
from molmo_jax.train import finetune, optim, trainer


def model_config(size: str, dtype: str):
    cfg = stage1.get_config("tiny")
    if size == "small":
        cfg.model.llm.update(d_model=512, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=64, mlp_hidden=1536,
                             vocab_size=8192, embedding_size=8192)
    elif size == "medium":
        cfg.model.llm.update(d_model=2048, n_layers=8, n_heads=16, n_kv_heads=4, head_dim=128, mlp_hidden=5632,
                             vocab_size=32768, embedding_size=32768)
    cfg.model.llm.remat_policy = "none"
    cfg.model.dtype = dtype
    return cfg


SHAPES = {"tiny": (8, 128), "small": (4, 256), "medium": (8, 1024)}  # (batch, sequence length)


def llm_matmul_params(llm) -> int:
    """Weights every token multiplies with (attention, MLP, output head); embeddings are lookups."""
    attn = llm.d_model * llm.head_dim * (2 * llm.n_heads + 2 * llm.n_kv_heads)
    return llm.n_layers * (attn + 3 * llm.d_model * llm.mlp_hidden) + llm.d_model * llm.embedding_size


def train_flops(llm, b: int, t: int) -> float:
    return 6.0 * llm_matmul_params(llm) * b * t + 12.0 * llm.n_layers * b * t * t * llm.d_model


def activation_bytes(llm, b: int, t: int, dtype_bytes: int) -> float:
    """Saved activations without remat: per layer ~ (10 d + 4 mlp) values per token plus the f32 attention
    probabilities; the f32 logits, their softmax and gradient."""
    per_layer = b * t * (10 * llm.d_model + 4 * llm.mlp_hidden) * dtype_bytes + 2 * b * llm.n_heads * t * t * 4
    return llm.n_layers * per_layer + 3 * b * t * llm.embedding_size * 4


def random_batch(cfg, b: int, t: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.model.llm.vocab_size, (b, t + 1)).astype(np.int32)
    return {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_masks": np.ones((b, t), np.float32)}


def matmul_peak(n: int, reps: int = 5) -> float:
    """FLOP/s of a jitted n x n x n float32 matmul (best of reps)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = min(_timed(lambda: f(a).block_until_ready()) for _ in range(reps))
    return 2.0 * n ** 3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def ours(cfg, batch):
    """(step() -> None, xla peak bytes) for our jitted train step on one device."""
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    opt = optim.make(cfg.optim)
    target = trainer.abstract_state(cfg.model, opt, mesh)
    with jax.set_mesh(mesh):
        state = trainer.initial_state(cfg, opt, mesh, target)
        step_fn = jax.jit(functools.partial(trainer.train_step, model=Molmo(cfg.model, deterministic=False),
                                            opt=opt, z_loss=cfg.optim.z_loss, grad_accum=1), donate_argnums=0)
        device_batch = distributed.global_batch(batch, mesh)
        compiled = step_fn.lower(state, device_batch).compile()
    mem = compiled.memory_analysis()
    peak = mem.argument_size_in_bytes + mem.temp_size_in_bytes
    box = {"state": state}

    def step():
        box["state"], metrics = compiled(box["state"], device_batch)
        jax.block_until_ready(metrics)

    return step, peak


def torch_device() -> str:
    """"cuda" when JAX runs on a GPU (torch must then have CUDA too), else "cpu"."""
    if jax.default_backend() != "gpu":
        return "cpu"
    import torch
    if not torch.cuda.is_available():
        raise RuntimeError("JAX runs on a GPU but this torch has no CUDA: the comparison would be unfair")
    torch.backends.cuda.matmul.allow_tf32 = True  # JAX's default f32 matmul precision on GPUs
    return "cuda"


def torch_step(cfg, batch, dtype: str, threads: int):
    """step() -> None for transformers' Qwen2ForCausalLM of the same LLM config."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(threads)
    device = torch_device()
    llm = cfg.model.llm
    config = Qwen2Config(vocab_size=llm.embedding_size, hidden_size=llm.d_model, intermediate_size=llm.mlp_hidden,
                         num_hidden_layers=llm.n_layers, num_attention_heads=llm.n_heads,
                         num_key_value_heads=llm.n_kv_heads, rms_norm_eps=llm.norm_eps,
                         rope_theta=llm.rope_theta, max_position_embeddings=4096, tie_word_embeddings=False,
                         attn_implementation="sdpa")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0)
    ids = torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device)
    labels = torch.from_numpy(batch["labels"].astype(np.int64)).to(device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def step():
        with autocast:
            logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()

    return step


def bench_row(size: str, dtype: str, iters: int, peak_flops: float) -> dict:
    cfg = model_config(size, dtype)
    b, t = SHAPES[size]
    batch = random_batch(cfg, b, t)
    ours_step, xla_peak = ours(cfg, batch)
    theirs = torch_step(cfg, batch, dtype, threads=os.cpu_count())
    ours_step()  # the allocator's warm-up; interleaved_medians warms up once more
    theirs()
    timed = bench_common.interleaved_medians({"ours": ours_step, "torch": theirs}, iters)
    sec = {k: seconds for k, (seconds, _) in timed.items()}
    llm = cfg.model.llm
    flops = train_flops(llm, b, t)
    n_params = param_count(cfg.model)
    estimate = 16 * n_params + activation_bytes(llm, b, t, 2 if dtype == "bfloat16" else 4)
    return {
        "config": size, "dtype": dtype, "batch": b, "seq_len": t, "params": n_params,
        "llm_matmul_params": llm_matmul_params(llm),
        "ours_step_s": sec["ours"], "torch_step_s": sec["torch"],
        "ours_tokens_per_s": b * t / sec["ours"], "torch_tokens_per_s": b * t / sec["torch"],
        "speedup": sec["torch"] / sec["ours"],
        "ours_flops_per_s": flops / sec["ours"], "ours_fraction_of_peak": flops / sec["ours"] / peak_flops,
        "torch_fraction_of_peak": flops / sec["torch"] / peak_flops,
        "ours_peak_memory_bytes": int(xla_peak), "analytic_memory_bytes": int(estimate),
        "memory_ratio": xla_peak / estimate,
    }


# ------------------------------------------------------------------ LoRA vs full fine-tuning memory (issue 10)


def finetune_memory(size: str, lora_rank: int) -> dict:
    """Optimizer-state bytes and XLA peak bytes (arguments + temporaries) of one `molmo_jax.train.finetune`
    step on text-only batches, 1 device, float32: full fine-tuning (lora_rank 0) or LoRA on the default
    targets with every component frozen."""
    cfg = model_config(size, "float32")
    cfg.freeze = optim.COMPONENTS if lora_rank else ()
    cfg.lora = ml_collections.ConfigDict(dict(rank=lora_rank, alpha=16.0, targets=lora.DEFAULT_TARGETS))
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    program = finetune.program(cfg, mesh)
    b, t = SHAPES[size]
    batch = distributed.global_batch(random_batch(cfg, b, t), mesh)
    with jax.set_mesh(mesh):
        mem = jax.jit(program.step, donate_argnums=0).lower(program.target, batch).compile().memory_analysis()
    nbytes = lambda tree: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
    return {"trainable_params": sum(x.size for x in jax.tree.leaves(program.target["params"])),
            "opt_state_bytes": nbytes(program.target["opt_state"]),
            "peak_bytes": int(mem.argument_size_in_bytes + mem.temp_size_in_bytes)}


def lora_memory_row(size: str = "small", lora_rank: int = 8) -> dict:
    """Full vs LoRA fine-tuning memory of one config; ratios are LoRA / full."""
    full, lora = finetune_memory(size, 0), finetune_memory(size, lora_rank)
    return {"config": size, "lora_rank": lora_rank, "full": full, "lora": lora,
            "opt_state_ratio": lora["opt_state_bytes"] / full["opt_state_bytes"],
            "peak_ratio": lora["peak_bytes"] / full["peak_bytes"]}


def lora_table(row: dict) -> str:
    f, l = row["full"], row["lora"]
    return (f"fine-tuning memory, {row['config']} config (LoRA rank {row['lora_rank']} vs full):\n"
            f"  trainable params {l['trainable_params']:,} vs {f['trainable_params']:,}; optimizer state "
            f"{l['opt_state_bytes'] / 2**20:.2f} vs {f['opt_state_bytes'] / 2**20:.2f} MB "
            f"(ratio {row['opt_state_ratio']:.4f}); XLA step peak {l['peak_bytes'] / 2**20:.1f} vs "
            f"{f['peak_bytes'] / 2**20:.1f} MB (ratio {row['peak_ratio']:.3f})")


def table(rows: list[dict], peak: float) -> str:
    head = (f"matmul peak (jitted n^3 f32): {peak / 1e9:.1f} GFLOP/s\n"
            f"{'config':6} {'dtype':8} {'ours tok/s':>11} {'torch tok/s':>11} {'speedup':>7} "
            f"{'ours %peak':>10} {'torch %peak':>11} {'XLA peak MB':>11} {'est. MB':>8}")
    lines = [f"{r['config']:6} {r['dtype']:8} {r['ours_tokens_per_s']:11.0f} {r['torch_tokens_per_s']:11.0f} "
             f"{r['speedup']:7.2f} {100 * r['ours_fraction_of_peak']:9.1f}% {100 * r['torch_fraction_of_peak']:10.1f}% "
             f"{r['ours_peak_memory_bytes'] / 2**20:11.1f} {r['analytic_memory_bytes'] / 2**20:8.1f}" for r in rows]
    return "\n".join([head] + lines)


def main(argv=None) -> dict:
    parser = bench_common.arg_parser(__doc__)
    parser.add_argument("--sizes", help=f"comma-separated, of {sorted(SHAPES)} (default tiny,small; smoke: tiny)")
    args = bench_common.parse(parser, argv, __file__)
    sizes = (args.sizes or ("tiny" if args.smoke else "tiny,small")).split(",")
    if unknown := sorted(set(sizes) - set(SHAPES)):
        parser.error(f"--sizes: unknown {unknown}; known {sorted(SHAPES)}")
    iters = {"smoke": 1, "quick": 3, "full": 20}[args.mode]
    peak = matmul_peak(256 if args.smoke else 2048 if jax.default_backend() == "cpu" else 8192)
    dtypes = ("float32",) if args.smoke else ("float32", "bfloat16")
    rows = [bench_row(size, dtype, iters, peak) for size in sizes for dtype in dtypes]
    print(table(rows, peak))
    lora_row = lora_memory_row("tiny" if args.smoke else "small")
    print(lora_table(lora_row))
    result = {"matmul_peak_flops_per_s": peak, "iters": iters, "rows": rows,
              "speedup": min(r["speedup"] for r in rows), "lora_vs_full": lora_row}
    return bench_common.finish(result, args, "worst row, ours / torch tokens/s")


if __name__ == "__main__":
    main()
