"""Train-step benchmark: our jitted Molmo step vs a PyTorch AdamW step of transformers' Qwen2ForCausalLM.

    python -m experiments.bench_train --quick --out /tmp/bench_train.json

For the tiny and a small Qwen2-family config (and a "medium" one for accelerators: --sizes), in float32
and bfloat16 compute (float32 master params):
  * ours: `trainer.train_step` (per-component clip + AdamW, z-loss, no dropout as in torch's) on text-only
    batches of B x T real tokens, 1 device, no remat, the layer scan fully unrolled (`llm.scan_unroll`);
    tokens/s, model FLOP/s (6 * matmul params * tokens + 12 * L * T^2 * d attention, no recomputation
    counted) as a fraction of this CPU's f32 matmul peak (a jitted 2048^3 matmul measured in the same
    run), XLA's peak memory (arguments + temporaries) vs an analytic estimate (16 bytes per param for
    params, grads, Adam m and v, plus activations);
  * torch: Qwen2ForCausalLM of the same LLM config (sdpa attention), loss.backward, clip_grad_norm_ 1.0,
    torch.optim.AdamW(betas (0.9, 0.95), eps 1e-6); bf16 rows use torch.autocast (fp32 master params).
On a GPU both run there (torch on "cuda", synchronised after each step; float32 matmuls may use TF32 on
both sides, as JAX's default precision does). Steps are timed in turns (ours, torch, ours, ...; a turn's first
step untimed, `bench_common.interleaved_medians`) and the median is reported. JSON top level
"speedup" = the worst row's ours/torch tokens/s ratio.

"crop_budget" (issue 20): examples/s of the train step on image rows whose crop slots are about half
empty, encoding every slot vs only the real crops (`vit.crop_budget`), the "small" ViT of bench_forward.

"molmo_rows" (issue 20; `--molmo`, for an accelerator; `--smoke` runs a tiny one): the Molmo-7B-D-shaped
train step (ViT-L/14 at 336 px on one image's 13 crops per row, the 2x2 attention-pooling connector, as
many Qwen2-7B-width decoder layers as fit the device, `--molmo-rows` packed 2304-token rows, bf16 compute,
fp32 master params and AdamW state) for each `--molmo-remat` policy: tokens/s, examples/s and MFU as
MaxText defines it (model FLOPs including the ViT, connector and attention, no remat recomputation,
divided by the device's spec bf16 peak, `BF16_PEAK_FLOPS`). The official PyTorch Molmo is not timed here.

Separate row (issue 10), "lora_vs_full": optimizer-state bytes and XLA step peak memory of fine-tuning
the small config fully vs with LoRA rank 8 (`molmo_jax.train.trainable`), as LoRA / full ratios.
"""
from __future__ import annotations

import functools
import gzip
import json
import os
import pathlib
import shlex
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from etils import epath

from experiments import bench_common, provenance
from molmo_jax import checkpoints, config, distributed, lora, sharding
from molmo_jax.models.molmo import Molmo, abstract_params, param_count
from molmo_jax.recipes import stage1
from molmo_jax.train import optim, trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def model_config(size: str, dtype: str):
    cfg = stage1.get_config("tiny")
    if size == "small":
        cfg.model.llm.update(d_model=512, n_layers=4, n_heads=8, n_kv_heads=2, head_dim=64, mlp_hidden=1536,
                             vocab_size=8192, embedding_size=8192)
    elif size == "medium":
        cfg.model.llm.update(d_model=2048, n_layers=8, n_heads=16, n_kv_heads=4, head_dim=128, mlp_hidden=5632,
                             vocab_size=32768, embedding_size=32768)
    cfg.model.vit.remat_policy = cfg.model.llm.remat_policy = "none"
    cfg.model.llm.response_residual_dropout = 0.0  # transformers' Qwen2 has no residual dropout: same function
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


def compiled_step(cfg, batch, mesh):
    """(our train step compiled for `batch` on `mesh`, the abstract train state); allocates nothing."""
    opt = optim.make(cfg.optim)
    target = trainer.abstract_state(cfg.model, opt, mesh)
    step_fn = jax.jit(functools.partial(trainer.train_step, model=Molmo(cfg.model, deterministic=False), opt=opt,
                                        z_loss=cfg.optim.z_loss, grad_accum=1), donate_argnums=0)
    abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding.batch_sharding(mesh, v.ndim))
                      for k, v in batch.items()}
    with sharding.use_mesh(mesh):
        return step_fn.lower(target, abstract_batch).compile(), target


def peak_bytes(compiled) -> int:
    mem = compiled.memory_analysis()
    return int(mem.argument_size_in_bytes + mem.temp_size_in_bytes)


def ours(cfg, batch):
    """(step() -> the step's metrics, xla peak bytes) for our jitted train step on one device."""
    mesh = sharding.make_mesh()
    compiled, target = compiled_step(cfg, batch, mesh)
    with sharding.use_mesh(mesh):
        state = trainer.initial_state(cfg, optim.make(cfg.optim), mesh, target)
    device_batch = distributed.global_batch(batch, mesh)
    box = {"state": state}

    def step():
        box["state"], metrics = compiled(box["state"], device_batch)
        return jax.block_until_ready(metrics)

    return step, peak_bytes(compiled)


def torch_step(cfg, batch, dtype: str, threads: int):
    """step() -> None for transformers' Qwen2ForCausalLM of the same LLM config."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(threads)
    device = bench_common.torch_device()
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
    cfg.model.llm.scan_unroll = cfg.model.llm.n_layers  # one straight-line program, like torch's layer loop
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
    """Optimizer-state bytes and XLA peak bytes (arguments + temporaries) of one fine-tuning
    step on text-only batches, 1 device, float32: full fine-tuning (lora_rank 0) or LoRA on the default
    targets with every component frozen."""
    cfg = model_config(size, "float32")
    cfg.freeze = optim.COMPONENTS if lora_rank else ()
    cfg.lora = ml_collections.ConfigDict(dict(rank=lora_rank, alpha=16.0, targets=lora.DEFAULT_TARGETS))
    mesh = sharding.make_mesh()
    program = trainer.make_program(cfg, mesh)
    b, t = SHAPES[size]
    batch = distributed.global_batch(random_batch(cfg, b, t), mesh)
    with sharding.use_mesh(mesh):
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


# ------------------------------------------------------------------ Molmo-shaped rows (issue 20)

# bf16 dense matmul peaks of the devices' spec sheets (MaxText's MFU denominator), by jax device_kind.
BF16_PEAK_FLOPS = {"NVIDIA H100 80GB HBM3": 989e12, "NVIDIA H200": 989e12, "NVIDIA H100 PCIe": 756e12}
MOLMO_SEQ = 2304  # tokens per packed row, image tokens included (the released recipes' seq_len)


def molmo_config(n_layers: int, remat: str, smoke: bool):
    """Molmo-7B-D geometry: ViT-L/14 at 336 px (23 layers), the 2x2 attention-pooling connector and
    `n_layers` Qwen2-7B-width decoder layers, bf16 compute, fp32 master params (smoke: the tiny model)."""
    cfg = stage1.get_config("tiny" if smoke else "Molmo-7B-D-0924")
    cfg.init.vit = cfg.init.llm = ""
    cfg.model.llm.update(n_layers=n_layers, remat_policy=remat)
    cfg.model.vit.remat_policy = remat
    cfg.model.dtype = "bfloat16"
    if smoke:
        smoke_images(cfg.model)
    return cfg


def smoke_images(model) -> None:
    """56 px crops (4 x 4 patches, 2 x 2 pooled tokens): the smoke rows' images cost almost nothing."""
    model.vit.update(image_size=(56, 56), num_pos=17)
    model.preprocess.max_crops = 1


def image_batch(cfg, rows: int, seq: int, real_crops: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """Rows of one image each (row r: real_crops[r] real crops of random pixels, padding crops after) whose
    pooled tokens come first, random text after; loss on the text."""
    model = cfg.model
    slots = max(real_crops)
    patches, per_crop = int(np.prod(config.patch_grid(model))), int(np.prod(config.pooled_grid(model)))
    if slots * per_crop >= seq:
        raise ValueError(f"{slots} crops x {per_crop} tokens do not fit {seq}-token rows")
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(rows, slots, patches, model.vit.patch_size ** 2 * 3)).astype(np.float32)
    masks = np.ones((rows, slots, patches), np.float32)
    idx = np.full((rows, slots, per_crop), -1, np.int32)
    loss_masks = np.ones((rows, seq), np.float32)
    for r, k in enumerate(real_crops):
        images[r, k:], masks[r, k:] = -1, -1
        idx[r, :k] = 1 + np.arange(k * per_crop).reshape(k, per_crop)
        loss_masks[r, :1 + k * per_crop] = 0
    batch = random_batch(cfg, rows, seq, seed)
    batch.update(images=images, image_input_idx=idx, loss_masks=loss_masks)
    if model.connector.padding_embed:
        batch["image_masks"] = masks
    return batch


def molmo_flops(cfg, batch) -> dict[str, float]:
    """Model FLOPs of one train step (MaxText: 6 x matmul params x the tokens they apply to, plus the
    attention score and value matmuls, 12 x L x T^2 x width per row and tower; no remat recomputation),
    per component. Kernel sizes come from the param tree: ViT kernels apply to every token of every real
    crop, the pooling's key / value to every patch and its query / output to every pooled token, the
    projector to every pooled token, the LLM's to every row token (embeddings are lookups)."""
    model = cfg.model
    real = int(np.sum(~np.all(batch["images"] == -1, axis=(2, 3))))
    patches, per_crop = int(np.prod(config.patch_grid(model))), int(np.prod(config.pooled_grid(model)))
    vit_tokens = patches + config.num_prefix_tokens(model)
    rows, seq = batch["input_ids"].shape
    tokens = {"vit": real * vit_tokens, "connector/pooling/attention/key": real * patches,
              "connector/pooling/attention/value": real * patches, "connector": real * per_crop,
              "llm": rows * seq}
    flops = {"vit": 0.0, "connector": 0.0, "llm": 0.0}
    for path, leaf in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(abstract_params(model))):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        if not name.endswith("kernel"):
            continue
        applied = next(n for prefix, n in tokens.items() if name.startswith(prefix))
        flops[name.split("/")[0]] += 6.0 * int(np.prod(leaf.shape)) * applied
    v, llm = model.vit, model.llm
    flops["vit"] += 12.0 * v.n_layers * real * vit_tokens ** 2 * v.n_heads * v.head_dim
    flops["llm"] += 12.0 * llm.n_layers * rows * seq ** 2 * llm.n_heads * llm.head_dim
    return flops


def fit_layers(remat: str, rows: int, budget_bytes: float) -> int:
    """The most decoder layers (at most Qwen2-7B's 28) whose compiled step fits `budget_bytes`: starts from
    16 bytes per param (params, grads, Adam m, v) in 80% of the budget, then compiles (allocates nothing)
    with fewer layers until one fits."""
    mesh = sharding.make_mesh()
    one, three = (param_count(molmo_config(n, remat, smoke=False).model) for n in (1, 3))
    per_layer = (three - one) / 2
    estimate = int((0.8 * budget_bytes / 16 - (one - per_layer)) / per_layer)
    candidates = [n for n in range(min(28, estimate), 0, -2)] or [1]
    for n in candidates:
        cfg = molmo_config(n, remat, smoke=False)
        batch = image_batch(cfg, rows, MOLMO_SEQ, [config.max_total_crops(cfg.model)] * rows)
        compiled, _ = compiled_step(cfg, batch, mesh)
        if peak_bytes(compiled) <= budget_bytes:
            return n
        print(f"molmo row: {n} layers need {peak_bytes(compiled) / 2**30:.1f} GiB > {budget_bytes / 2**30:.1f} GiB")
    raise RuntimeError(f"not even {candidates[-1]} layer fits {budget_bytes / 2**30:.1f} GiB")


def device_memory() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    return float(stats.get("bytes_limit", 0))


def molmo_seq(cfg, smoke: bool) -> int:
    """Tokens per row of the Molmo rows: MOLMO_SEQ; smoke: the image's tokens and 64 text tokens."""
    return 64 + config.max_total_crops(cfg.model) * int(np.prod(config.pooled_grid(cfg.model))) if smoke else MOLMO_SEQ


def molmo_row(remat: str, n_layers: int, rows: int, iters: int, smoke: bool) -> dict:
    """Tokens/s and MFU of our train step on Molmo-shaped packed rows (one image of every crop per row)."""
    cfg = molmo_config(n_layers, remat, smoke)
    seq = molmo_seq(cfg, smoke)
    batch = image_batch(cfg, rows, seq, [config.max_total_crops(cfg.model)] * rows)
    step, peak = ours(cfg, batch)
    first_loss = float(step()["loss"])
    (seconds, _), = bench_common.interleaved_medians({"ours": step}, iters).values()
    flops = molmo_flops(cfg, batch)
    kind = jax.devices()[0].device_kind
    spec_peak = BF16_PEAK_FLOPS.get(kind)
    total = sum(flops.values())
    return {"config": "molmo-7b-d-shaped" if not smoke else "molmo-shaped-tiny", "remat": remat,
            "llm_layers": n_layers, "rows": rows, "seq_len": seq, "crops_per_row": config.max_total_crops(cfg.model),
            "dtype": "bfloat16", "step_s": seconds, "tokens_per_s": rows * seq / seconds,
            "examples_per_s": rows / seconds, "model_flops": total, "model_flops_by_component": flops,
            "flops_per_s": total / seconds, "device_kind": kind, "bf16_peak_flops": spec_peak,
            "mfu": total / seconds / spec_peak if spec_peak else None, "peak_memory_bytes": peak,
            "first_step_loss": first_loss}


def official_molmo_row(remat: str, n_layers: int, rows: int, iters: int, smoke: bool, src: str, python: str,
                       pythonpath: str) -> dict:
    """The official train step on the row `molmo_row(remat, n_layers, rows, iters, smoke)` times, holding our
    initial params (`trainer.initial_params` of the row's config and seed, made on the host's CPU device so
    that this process holds no accelerator memory yet): `experiments.official_train` in a process of its own
    (`python`, with `pythonpath` first on its path: transformers 4.46.3), on the device our step uses.
    Returns its JSON: the decoder layers it fit (`n_layers` or fewer), tokens/s, first step's loss ("error"
    when not even one layer fits)."""
    cfg = molmo_config(n_layers, remat, smoke)
    cpu = jax.devices("cpu")[0]
    mesh = sharding.make_mesh(devices=[cpu])
    with jax.default_device(cpu), sharding.use_mesh(mesh):
        params = trainer.initial_params(cfg, jax.random.split(jax.random.PRNGKey(cfg.seed))[0], mesh)
    native = checkpoints.params_to_native(params, cfg.model)
    del params
    with tempfile.TemporaryDirectory() as tmp:
        safetensors.numpy.save_file(native, f"{tmp}/params.safetensors")
        del native
        command = [*shlex.split(python), "-m", "experiments.official_train", "--src", src, "--params",
                   f"{tmp}/params.safetensors", "--layers", str(n_layers), "--remat", remat, "--rows", str(rows),
                   "--iters", str(iters), "--device", bench_common.torch_device(), "--out", f"{tmp}/official.json",
                   *(["--smoke"] if smoke else [])]
        path = [p for p in (pythonpath, str(ROOT), os.environ.get("PYTHONPATH")) if p]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "JAX_PLATFORMS": "cpu"}
        done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
            raise RuntimeError(f"the official train step failed (exit {done.returncode}): {shlex.join(command)}\n{tail}")
        return json.loads(pathlib.Path(tmp, "official.json").read_text())


def crop_budget_row(iters: int, smoke: bool) -> dict:
    """Examples/s of the train step on image rows whose crop slots are half empty, encoding every slot
    vs the real crops only (`vit.crop_budget` = the batch's real crops); same losses (tests/test_crop_budget.py)."""
    from experiments.bench_forward import small_config
    rows, slots = (2, 3) if smoke else (8, 5)
    real = [1 + r % slots for r in range(rows)]  # 1..slots real crops per row, about half the slots
    result = {"rows": rows, "crop_slots": rows * slots, "real_crops": sum(real)}
    steps = {}
    for budget in (0, sum(real)):
        cfg = stage1.get_config("tiny")
        if smoke:
            smoke_images(cfg.model)
        else:
            cfg.model = small_config()
        cfg.model.vit.crop_budget = budget
        seq = 32 + slots * int(np.prod(config.pooled_grid(cfg.model)))
        steps[f"budget_{budget}"], _ = ours(cfg, image_batch(cfg, rows, seq, real))
    timed = bench_common.interleaved_medians(steps, iters)
    for name, (seconds, _) in timed.items():
        result[f"{'every_slot' if name == 'budget_0' else 'real_crops_only'}_examples_per_s"] = rows / seconds
    result["speedup"] = result["real_crops_only_examples_per_s"] / result["every_slot_examples_per_s"]
    return result


def table(rows: list[dict], peak: float) -> str:
    head = (f"matmul peak (jitted n^3 f32): {peak / 1e9:.1f} GFLOP/s\n"
            f"{'config':6} {'dtype':8} {'ours tok/s':>11} {'torch tok/s':>11} {'speedup':>7} "
            f"{'ours %peak':>10} {'torch %peak':>11} {'XLA peak MB':>11} {'est. MB':>8}")
    lines = [f"{r['config']:6} {r['dtype']:8} {r['ours_tokens_per_s']:11.0f} {r['torch_tokens_per_s']:11.0f} "
             f"{r['speedup']:7.2f} {100 * r['ours_fraction_of_peak']:9.1f}% {100 * r['torch_fraction_of_peak']:10.1f}% "
             f"{r['ours_peak_memory_bytes'] / 2**20:11.1f} {r['analytic_memory_bytes'] / 2**20:8.1f}" for r in rows]
    return "\n".join([head] + lines)


def molmo_table(rows: list[dict]) -> str:
    lines = [f"{'config':18} {'remat':14} {'layers':>6} {'rows x seq':>10} {'tok/s':>9} {'ex/s':>7} {'TFLOP/s':>8} "
             f"{'MFU':>6} {'peak GiB':>8} {'official tok/s':>14} {'ours/official':>13}"]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        lines.append(f"{r['config']:18} {r['remat']:14} {r['llm_layers']:6d} {r['rows']:4d} x {r['seq_len']:<5d}"
                     f"{r['tokens_per_s']:9.0f} {r['examples_per_s']:7.2f} {r['flops_per_s'] / 1e12:8.2f} {mfu:>6} "
                     f"{r['peak_memory_bytes'] / 2**30:8.2f} {official_cells(r)}")
    return "\n".join(lines)


def profile_molmo(trace_dir: str, n_layers: int, rows: int, smoke: bool, top: int = 15) -> dict:
    """A `jax.profiler` trace of three steps of the full-remat Molmo row (after two untraced ones) in
    `trace_dir`, and its top ops: {op name: [total ms, calls]} of the device's ops (the host's where no
    device timeline exists: CPU; Python frames left out), from the trace's perfetto JSON, largest first."""
    cfg = molmo_config(n_layers, "full", smoke)
    batch = image_batch(cfg, rows, molmo_seq(cfg, smoke), [config.max_total_crops(cfg.model)] * rows)
    step, _ = ours(cfg, batch)
    step(), step()
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(3):
        step()
    jax.profiler.stop_trace()
    trace, = pathlib.Path(trace_dir).rglob("*.trace.json.gz")
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    device = {pid for pid, name in names.items() if "/device:" in name}
    totals: dict[str, list] = {}
    for e in events:
        if e.get("ph") == "X" and (e["pid"] in device or not device and not e["name"].startswith("$")):
            total = totals.setdefault(e["name"], [0.0, 0])
            total[0] += e.get("dur", 0) / 1e3
            total[1] += 1
    ops = dict(sorted(totals.items(), key=lambda kv: -kv[1][0])[:top])
    return {"trace": str(trace), "llm_layers": n_layers, "rows": rows, "timeline": "device" if device else "host",
            "top_ops_ms_calls": ops}


def compared_row(row: dict, official: dict | None) -> dict:
    """`row` with the official step's result and ours / official tokens/s (None where it did not run)."""
    if official is None:
        return row
    ratio = row["tokens_per_s"] / official["tokens_per_s"] if "tokens_per_s" in official else None
    return {**row, "official": official, "speedup_vs_official": ratio}


def official_cells(row: dict) -> str:
    """The official step's tokens/s and ours / official of a Molmo row ("-" where not timed)."""
    official = row.get("official")
    if not official:
        return f"{'-':>14} {'-':>13}"
    if "error" in official:
        return f"official: {official['error']}"
    return f"{official['tokens_per_s']:14.0f} {row['speedup_vs_official']:13.2f}"


def molmo_rows(args, iters: int) -> list[dict]:
    """The Molmo rows of `--molmo-remat` (smoke: the first policy); with --official-src, the full-remat row's
    official step first, and ours again at the layers it fits when those are fewer."""
    molmo = []
    for remat in args.molmo_remat.split(",")[:1 if args.smoke else None]:
        layers = args.molmo_layers or (1 if args.smoke else fit_layers(remat, args.molmo_rows, 0.9 * device_memory()))
        official = None
        if args.official_src and remat == "full":  # first: our step's buffers would hold the device memory
            official = official_molmo_row(remat, layers, args.molmo_rows, iters, args.smoke, args.official_src,
                                          args.official_python, args.official_pythonpath)
            if official["llm_layers"] not in (0, layers):
                molmo.append(compared_row(molmo_row(remat, official["llm_layers"], args.molmo_rows, iters,
                                                    args.smoke), official))
                official = None
        molmo.append(compared_row(molmo_row(remat, layers, args.molmo_rows, iters, args.smoke), official))
    print(molmo_table(molmo))
    return molmo


def main(argv=None) -> dict:
    parser = bench_common.arg_parser(__doc__)
    parser.add_argument("--sizes", help=f"comma-separated, of {sorted(SHAPES)} (default tiny,small; smoke: tiny)")
    parser.add_argument("--molmo", action="store_true",
                        help="add the Molmo-7B-D-shaped rows (accelerators; --smoke runs a tiny one anyway)")
    parser.add_argument("--molmo-layers", type=int, default=0,
                        help="decoder layers of the Molmo rows (default: as many as fit the device)")
    parser.add_argument("--molmo-rows", type=int, default=2, help="packed 2304-token rows per step")
    parser.add_argument("--molmo-remat", default="full,dots_no_batch", help="remat policies of the Molmo rows")
    parser.add_argument("--molmo-only", action="store_true",
                        help="only the Molmo rows (no tiny / LoRA / crop-budget rows); JSON rows = the Molmo rows")
    parser.add_argument("--profile", metavar="DIR",
                        help="only trace the full-remat Molmo row (--molmo-layers, default 4) into DIR; top ops")
    parser.add_argument("--official-src", help="checkout of allenai/molmo: times the official train step on the "
                                               "full-remat Molmo row (experiments/official_train.py)")
    parser.add_argument("--official-python", default=sys.executable,
                        help="the interpreter of the official step (a venv with transformers 4.46.3)")
    parser.add_argument("--official-pythonpath", default="",
                        help="put first on the official step's path (a pip --target dir of transformers 4.46.3)")
    args = bench_common.parse(parser, argv, __file__)
    sizes = (args.sizes or ("tiny" if args.smoke else "tiny,small")).split(",")
    if unknown := sorted(set(sizes) - set(SHAPES)):
        parser.error(f"--sizes: unknown {unknown}; known {sorted(SHAPES)}")
    iters = {"smoke": 1, "quick": 3, "full": 20}[args.mode]
    if args.profile:
        traced = profile_molmo(args.profile, args.molmo_layers or (1 if args.smoke else 4), args.molmo_rows,
                               args.smoke)
        print(f"top ops ({traced['timeline']} timeline, 3 steps): total ms, calls")
        for name, (ms, calls) in traced["top_ops_ms_calls"].items():
            print(f"{ms:10.2f} {calls:6d}  {name[:120]}")
        if args.out:
            epath.Path(args.out).write_text(json.dumps({**provenance.describe(args.command), **traced}, indent=1))
        return traced
    if args.molmo_only:
        molmo = molmo_rows(args, iters)
        ratios = [r["speedup_vs_official"] for r in molmo if r.get("speedup_vs_official")]
        result = {"iters": iters, "rows": molmo, "speedup": min(ratios, default=float("nan")), "molmo_rows": molmo}
        return bench_common.finish(result, args, "worst Molmo row, ours / official tokens/s")
    peak = matmul_peak(256 if args.smoke else 2048 if jax.default_backend() == "cpu" else 8192)
    dtypes = ("float32",) if args.smoke else ("float32", "bfloat16")
    rows = [bench_row(size, dtype, iters, peak) for size in sizes for dtype in dtypes]
    print(table(rows, peak))
    lora_row = lora_memory_row("tiny" if args.smoke else "small")
    print(lora_table(lora_row))
    budget_row = crop_budget_row(min(iters, 2), args.smoke)  # a step of the 336 px ViT rows: seconds on a CPU
    print(f"crop budget: {budget_row['real_crops']} real of {budget_row['crop_slots']} crop slots: "
          f"{budget_row['every_slot_examples_per_s']:.2f} -> {budget_row['real_crops_only_examples_per_s']:.2f} "
          f"examples/s ({budget_row['speedup']:.2f}x)")
    molmo = molmo_rows(args, iters) if args.molmo or args.smoke else []
    result = {"matmul_peak_flops_per_s": peak, "iters": iters, "rows": rows,
              "speedup": min(r["speedup"] for r in rows), "lora_vs_full": lora_row, "crop_budget": budget_row,
              "molmo_rows": molmo}
    return bench_common.finish(result, args, "worst row, ours / torch tokens/s")


if __name__ == "__main__":
    main()
