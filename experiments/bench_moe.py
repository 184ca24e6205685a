"""MoE feed-forward throughput: our two MoE paths vs a dense SwiGLU MLP of equal active FLOPs vs
transformers' OlmoeSparseMoeBlock (PyTorch), same weights, same device, one run.

Rows, per size and mode (forward; forward + backward w.r.t. the params and the input):
  ragged  molmo_jax.models.moe.MoeMlp, llm.moe_impl="ragged" (sort + jax.lax.ragged_dot), jax.jit
  blocked MoeMlp, llm.moe_impl="blocked" (sort, each expert's group padded to blocks, a scan over them)
  dense   MoeMlp, llm.moe_impl="dense" (every expert on every token, combined by the routing weights)
  mlp     molmo_jax.models.layers.Mlp (SwiGLU) with hidden = top_k * expert hidden: the FLOPs the MoE's
          experts do per token, without the routing (the ceiling a grouped matmul can reach)
  torch   transformers' OlmoeSparseMoeBlock (norm_topk_prob=False, as MolmoE) with our MoE's weights
"ours" is the path `moe_impl="auto"` picks on this backend without an expert-parallel mesh
(`moe.moe_kernel`: blocked on CPU, ragged on GPU / TPU); each row records whether that pick was the fastest
of the three here.
Tokens/s is the median over repeats after compilation; all take turns (a turn's first call untimed:
`bench_common.interleaved_medians`), so a shared machine's changing load affects all alike. torch uses
as many threads as there are cores (on a GPU it runs on "cuda", synchronised after each call). XLA's CPU
backend lowers `ragged_dot` to one dense matmul of every routed copy with every expert (the routed rows
expanded to [n * top_k, E * d] with zeros outside their group): top_k times the dense path's FLOPs, hence
the blocked path on CPU and the small MolmoE-size token count. GPU / TPU backends have grouped kernels.
The outputs and input gradients of the three paths and torch are compared (max |diff| printed and stored).
JSON (--out): the rows and top-level "speedup" = min over sizes and modes of ours / torch tokens/s.

    .venv/bin/python -m experiments.bench_moe --quick --out /tmp/bench_moe.json
"""
from __future__ import annotations

import os
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import OlmoeConfig
from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock

from experiments import bench_common
from molmo_jax import config as config_lib
from molmo_jax.models.layers import Mlp
from molmo_jax.models.moe import MoeMlp, moe_kernel

MOE_PATHS = ("ragged", "blocked", "dense")
# (name, d_model, experts, top_k, expert hidden, batch, length)
SIZES = {
    "tiny": ("tiny", 64, 4, 2, 32, 1, 16),
    "small": ("small", 512, 16, 4, 256, 4, 256),
    "molmoe": ("MolmoE-1B layer", 2048, 64, 8, 1024, 1, 256),
}


def moe_config(d: int, experts: int, top_k: int, hidden: int, impl: str = "auto"):
    cfg = config_lib.tiny("olmoe")
    cfg.llm.update(d_model=d, mlp_hidden=hidden, moe_num_experts=experts, moe_top_k=top_k, moe_impl=impl)
    return cfg


def torch_block(params, d: int, experts: int, top_k: int, hidden: int) -> OlmoeSparseMoeBlock:
    """OlmoeSparseMoeBlock holding our MoE params (router [d, E]; gate/up [E, d, F]; down [E, F, d])."""
    block = OlmoeSparseMoeBlock(OlmoeConfig(hidden_size=d, intermediate_size=hidden, num_experts=experts,
                                            num_experts_per_tok=top_k, norm_topk_prob=False))
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))
    p = jax.tree.map(np.asarray, params)
    with torch.no_grad():
        block.gate.weight.copy_(t(p["router"]["kernel"].T))
        block.experts.gate_up_proj.copy_(t(np.concatenate([p["gate"], p["up"]], -1).transpose(0, 2, 1)))
        block.experts.down_proj.copy_(t(p["down"].transpose(0, 2, 1)))
    return block.to(bench_common.torch_device())


def jax_fns(module: nn.Module, params, x: np.ndarray, ct: np.ndarray) -> dict[str, Callable[[], object]]:
    """Jitted forward and forward+backward (grads of sum(out * ct) w.r.t. params and x), compiled."""
    fwd = jax.jit(lambda p, v: module.apply({"params": p}, v))
    loss = lambda p, v: jnp.sum(module.apply({"params": p}, v) * ct)
    bwd = jax.jit(jax.grad(loss, argnums=(0, 1)))
    x = jnp.asarray(x)
    return {"forward": lambda: jax.block_until_ready(fwd(params, x)),
            "forward+backward": lambda: jax.block_until_ready(bwd(params, x))}


def torch_fns(block: OlmoeSparseMoeBlock, x: np.ndarray, ct: np.ndarray) -> dict[str, Callable[[], object]]:
    device = bench_common.torch_device()
    xt, ctt = torch.from_numpy(x).to(device), torch.from_numpy(ct).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None

    def forward():
        with torch.no_grad():
            out = block(xt)
        sync()
        return out

    def forward_backward():
        block.zero_grad(set_to_none=True)
        xg = xt.clone().requires_grad_(True)
        (block(xg) * ctt).sum().backward()
        sync()
        return xg.grad

    return {"forward": forward, "forward+backward": forward_backward}


def agreement(moe: nn.Module, params, block, x: np.ndarray, ct: np.ndarray) -> dict[str, float]:
    """max |ours - torch| of the outputs and of the input gradients."""
    ours = np.asarray(moe.apply({"params": params}, x))
    ours_dx = np.asarray(jax.grad(lambda v: jnp.sum(moe.apply({"params": params}, v) * ct))(jnp.asarray(x)))
    theirs = torch_fns(block, x, ct)
    as_numpy = lambda t: t.float().cpu().numpy()
    return {"output": float(np.abs(ours - as_numpy(theirs["forward"]())).max()),
            "input_grad": float(np.abs(ours_dx - as_numpy(theirs["forward+backward"]())).max())}


def bench_size(size, repeats: int, seed: int = 0) -> list[dict]:
    name, d, experts, top_k, hidden, batch, length = size
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, length, d)).astype(np.float32)
    ct = rng.normal(size=x.shape).astype(np.float32)
    moes = {impl: MoeMlp(moe_config(d, experts, top_k, hidden, impl)) for impl in MOE_PATHS}
    mlp = Mlp(top_k * hidden, gated=True, act="silu")
    moe_params = nn.meta.unbox(moes["ragged"].init(jax.random.key(seed), x)["params"])
    mlp_params = nn.meta.unbox(mlp.init(jax.random.key(seed), x)["params"])
    block = torch_block(moe_params, d, experts, top_k, hidden)
    diffs = {impl: agreement(moe, moe_params, block, x, ct) for impl, moe in moes.items()}
    for impl, diff in diffs.items():
        print(f"{name} {impl}: max |ours - torch| output {diff['output']:.2e}, input grad {diff['input_grad']:.2e}")
    impls = {**{impl: jax_fns(moe, moe_params, x, ct) for impl, moe in moes.items()},
             "mlp": jax_fns(mlp, mlp_params, x, ct), "torch": torch_fns(block, x, ct)}
    auto = moe_kernel("auto")
    rows = []
    for mode in ("forward", "forward+backward"):
        timed = bench_common.interleaved_medians({k: fns[mode] for k, fns in impls.items()}, repeats)
        tps = {k: batch * length / seconds for k, (seconds, _) in timed.items()}
        rows.append({"size": name, "mode": mode, "d_model": d, "experts": experts, "top_k": top_k,
                     "expert_hidden": hidden, "tokens": batch * length, "auto_path": auto,
                     **{f"{k}_tokens_per_s": v for k, v in tps.items()},
                     "auto_is_faster": tps[auto] >= max(tps[impl] for impl in MOE_PATHS),
                     "ours_vs_mlp": tps[auto] / tps["mlp"], "ours_vs_torch": tps[auto] / tps["torch"],
                     "max_abs_diff_vs_torch": diffs})
    return rows


def table(rows: list[dict]) -> str:
    head = ["size", "mode", "tokens", "ragged tok/s", "blocked tok/s", "dense tok/s", "mlp tok/s", "torch tok/s",
            "ours", "ours/mlp", "ours/torch"]
    lines = [head, ["---"] * len(head)]
    for r in rows:
        lines.append([r["size"], r["mode"], str(r["tokens"]), f"{r['ragged_tokens_per_s']:.0f}",
                      f"{r['blocked_tokens_per_s']:.0f}", f"{r['dense_tokens_per_s']:.0f}",
                      f"{r['mlp_tokens_per_s']:.0f}", f"{r['torch_tokens_per_s']:.0f}",
                      r["auto_path"] + ("" if r["auto_is_faster"] else " (slower)"),
                      f"{r['ours_vs_mlp']:.2f}", f"{r['ours_vs_torch']:.2f}"])
    return "\n".join("| " + " | ".join(r) + " |" for r in lines)


def main(argv=None) -> dict:
    parser = bench_common.arg_parser(__doc__)
    args = bench_common.parse(parser, argv, __file__)
    torch.set_num_threads(os.cpu_count())
    sizes, repeats = {"smoke": (["tiny"], 1), "quick": (["small"], 3), "full": (["small", "molmoe"], 5)}[args.mode]
    rows = [row for size in sizes for row in bench_size(SIZES[size], repeats)]
    print(table(rows))
    result = {"rows": rows, "speedup": min(r["ours_vs_torch"] for r in rows), "torch_threads": torch.get_num_threads()}
    return bench_common.finish(result, args, "worst ours / torch")


if __name__ == "__main__":
    main()
