"""The official allenai/molmo train step on the Molmo-shaped rows of bench_train, in a process of its own.

`python -m experiments.bench_train --molmo --official-src CHECKOUT` runs this module (the official code
needs transformers 4.46.3, which `--official-pythonpath` puts first on this process's path only, and on a
GPU each framework needs the device's memory to itself):

    python -m experiments.official_train --src CHECKOUT --params params.safetensors --layers N \
        --remat full --rows 2 --iters 3 --device cuda --out official.json

It builds `olmo.model.Molmo` of `bench_train.molmo_config(layers, remat)` holding the given params (official
native names, our initial params), feeds it `bench_train.image_batch`'s rows and times the step the official
trainer runs (olmo/train.py `Trainer.model_forward` and `train_batch`, with the settings of
launch_scripts/train_multitask_model.py):
  * bf16 autocast over float32 params and optimizer state (`precision="amp_bf16"`; FSDP's
    `FSDPPrecision.float` keeps params, gradient reduction and buffers in float32; FSDP itself is left out:
    on one device it only adds its gather and reshard);
  * `ActivationCheckpointingStrategy.whole_layer` (every LLM block and the ViT's blocks recomputed in the
    backward pass) when our row runs `remat="full"`, none for `"none"`;
  * cross-entropy over the loss-masked tokens plus the z-loss (`softmax_auxiliary_loss_scale` 1e-4 x
    logsumexp^2) in float32, summed and divided by the loss tokens; `clip_grad_norm_` at 1.0
    (`max_grad_norm`); torch AdamW (betas 0.9 / 0.95, eps 1e-6, no decay; the official `olmo.optim.AdamW`
    subclasses it). Dropout as our config sets it (the official `response_residual_dropout` 0.1).
JSON: the decoder layers that fit (`--layers`, else fewer: `run`), the median step seconds of `--iters` steps
after a warm-up, tokens/s, the first step's loss (compare with our first step's: same params, same batch)
and the peak device memory; `{"error": ...}` when not even one layer fits.
"""
from __future__ import annotations

import argparse
import gc
import json
from pathlib import Path

from experiments import bench_common, bench_forward, bench_train  # bench_forward stubs torchvision first

import numpy as np  # noqa: E402
import safetensors.numpy  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from molmo_jax import config  # noqa: E402


def train_step(model, batch: dict[str, np.ndarray], device: str, z_loss: float, max_grad_norm: float):
    """step() -> the step's loss (float) of the official trainer's step on `batch` (see the module doc)."""
    to = lambda x, dtype=None: torch.from_numpy(x).to(device=device, dtype=dtype)
    inputs = {"input_ids": to(batch["input_ids"], torch.long), "images": to(batch["images"]),
              "image_input_idx": to(batch["image_input_idx"], torch.long)}
    if "image_masks" in batch:
        inputs["image_masks"] = to(batch["image_masks"])
    mask = to(batch["loss_masks"]).flatten()
    labels = to(batch["labels"], torch.long).flatten().masked_fill(mask <= 0, -100)
    tokens = (mask > 0).sum()
    response = to(batch["loss_masks"]) > 0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.0)

    def step() -> float:
        with torch.autocast(device, dtype=torch.bfloat16):
            logits = model(**inputs, response_mask=response).logits
        logits = logits.float().flatten(0, 1)
        ce = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        z = z_loss * (logits.logsumexp(-1).pow(2) * (mask > 0)).sum()
        loss = (ce + z) / tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # waits for the device, as our step waits for its metrics

    return step


def first_layers(native: dict[str, np.ndarray], layers: int) -> dict[str, np.ndarray]:
    """`native` without the decoder blocks from `layers` on (official names transformer.blocks.<i>.*)."""
    return {k: v for k, v in native.items()
            if not k.startswith("transformer.blocks.") or int(k.split(".")[2]) < layers}


TORCH_BYTES_PER_PARAM = 22  # float32 params, grads, AdamW m and v; autocast's bf16 copies; foreach temporaries


def layers_to_try(native: dict[str, np.ndarray], layers: int, device: str) -> int:
    """At most `layers`; on a GPU, the most whose params take TORCH_BYTES_PER_PARAM each in 90% of its memory
    (one try then, mostly, rather than one per layer down from ours)."""
    if device != "cuda":
        return layers
    block = sum(v.size for k, v in native.items() if k.startswith("transformer.blocks.")) / layers
    fixed = sum(v.size for v in native.values()) - block * layers
    free = 0.9 * torch.cuda.mem_get_info()[1] / TORCH_BYTES_PER_PARAM
    return max(1, min(layers, int((free - fixed) // block)))


def run(src: str, params: str, layers: int, remat: str, rows: int, iters: int, smoke: bool, device: str) -> dict:
    """The official step of the first decoder layers of `params` that fit the device: `layers_to_try`, else
    one fewer per out-of-memory try (torch holds more per param than our step: autocast's bf16 weight
    copies, the foreach AdamW's temporaries), so the caller times ours at the returned "llm_layers"."""
    if remat not in ("full", "none"):
        raise ValueError(f"--remat {remat}: the official trainer has no such policy (full or none)")
    native = safetensors.numpy.load_file(params)
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    errors = []
    for n in range(layers_to_try(native, layers, device), 0, -1):
        cfg = bench_train.molmo_config(n, remat, smoke)
        seq = bench_train.molmo_seq(cfg, smoke)
        batch = bench_train.image_batch(cfg, rows, seq, [config.max_total_crops(cfg.model)] * rows)
        model = bench_forward.official_model(src, cfg.model, native=first_layers(native, n))
        from olmo.config import ActivationCheckpointingStrategy  # importable once official_model put src on the path
        model.set_activation_checkpointing(ActivationCheckpointingStrategy.whole_layer if remat == "full" else None)
        try:
            model = model.to(device).train()
            step = train_step(model, batch, device, cfg.optim.z_loss, cfg.optim.max_grad_norm)
            first_loss = step()
            (seconds, _), = bench_common.interleaved_medians({"official": step}, iters).values()
        except torch.OutOfMemoryError as e:
            errors.append(f"{n} layers: out of memory ({str(e).splitlines()[0][:120]})")
            model = step = None
            gc.collect()
            torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
        return {"reference": "official allenai/molmo train step (bf16 autocast"
                             + (", whole_layer checkpointing)" if remat == "full" else ")"),
                "llm_layers": n, "rows": rows, "seq_len": seq, "torch": torch.__version__, "step_s": seconds,
                "tokens_per_s": rows * seq / seconds, "first_step_loss": first_loss, "peak_memory_bytes": peak,
                "out_of_memory_tries": errors}
    return {"llm_layers": 0, "error": "; ".join(errors)}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="checkout of allenai/molmo")
    parser.add_argument("--params", required=True, help="safetensors of official native names")
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--remat", default="full")
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="the tiny Molmo-shaped model of bench_train --smoke")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", required=True, help="result JSON")
    args = parser.parse_args(argv)
    result = run(args.src, args.params, args.layers, args.remat, args.rows, args.iters, args.smoke, args.device)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
