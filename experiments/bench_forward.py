"""Prefill throughput of molmo-jax (jax.jit, CPU) against PyTorch on the same CPU, in one run.

Rows, for a "tiny" config (the test model: ViT 64 x 9, LLM 64 x 2) and a "small" one (real 336 px / 14 px
ViT geometry with a 256-wide 6-layer ViT, LLM 512 wide x 8 layers, Qwen2 family):
  text   text-only prefill of SEQ tokens: ours vs transformers' Qwen2ForCausalLM with the same weights
         (the HF model is built at random and converted with molmo_jax.convert_base)
  image  image + text prefill (1 image of 5 crops = 720 image tokens, SEQ tokens in all): ours vs the
         official allenai/molmo `olmo.model.Molmo` loaded with `checkpoints.params_to_native` of our params;
         only with --official-src
Each timing is the median of several runs after compilation; ours and the reference take turns
(`bench_common.interleaved_medians`: a turn's first call is not timed, it runs while the other
framework's threads still spin), so a shared machine's changing load affects both alike. torch uses as many
threads as the machine has cores, as XLA's CPU backend does (`--threads 1`: one each, the comparison that
survives other jobs' load: PyTorch's threads collapse under it). Each row also records the max |logit
difference| to its reference, so a throughput is only compared between models that compute the same thing.
JSON (--out): per-row numbers and top-level "speedup" = min over rows of ours / reference throughput.

Run (text rows only; the project venv, transformers 5):
  .venv/bin/python -m experiments.bench_forward --quick --out /tmp/bench_forward.json
Run with the official reference (needs transformers 4.46.3, so a venv of its own, NOT the project's):
  python3 -m venv /tmp/bench-venv
  /tmp/bench-venv/bin/pip install torch==2.13.0 transformers==4.46.3 'tokenizers<0.21' numpy einops \
      jax==0.10.2 jaxlib==0.10.2 flax==0.12.8 ml_collections safetensors absl-py pillow \
      omegaconf rich boto3 cached_path
  /tmp/bench-venv/bin/pip install --no-deps torchvision==0.28.0
  /tmp/bench-venv/bin/pip install --no-deps -e /work/main
  git clone https://github.com/allenai/molmo /tmp/molmo   # any checkout of allenai/molmo
  HF_HUB_OFFLINE=1 /tmp/bench-venv/bin/python -m experiments.bench_forward --quick \
      --official-src /tmp/molmo --out /tmp/bench_forward.json
torchvision's compiled ops do not load beside this torch build; the official model never calls them, so
`torchvision._meta_registrations` is stubbed before transformers imports torchvision.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

from experiments import bench_common

bench_common.stub_torchvision_ops()

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from molmo_jax import checkpoints, config, convert_base  # noqa: E402
from molmo_jax.models.molmo import Molmo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_TEMPLATE = ROOT / "tests" / "fixtures" / "molmo_ref" / "qwen2_7b_d" / "config.json"
TEXT_TOKENS = 48  # text positions besides the image tokens


# ----------------------------------------------------------------------------- configs and weights

def hf_qwen2_config(cfg) -> transformers.Qwen2Config:
    """The transformers config of `cfg`'s (Qwen2-family) LLM."""
    llm = cfg.llm
    return transformers.Qwen2Config(
        vocab_size=llm.embedding_size, hidden_size=llm.d_model, intermediate_size=llm.mlp_hidden,
        num_hidden_layers=llm.n_layers, num_attention_heads=llm.n_heads, num_key_value_heads=llm.n_kv_heads,
        rms_norm_eps=llm.norm_eps, rope_theta=llm.rope_theta, tie_word_embeddings=False, eos_token_id=None,
        pad_token_id=None, bos_token_id=None, max_position_embeddings=llm.max_sequence_length)


def small_config():
    """LLM 512 x 8 (8 heads, 4 kv heads), ViT at the real 336/14 geometry but 256 wide x 6 layers."""
    cfg = config.tiny("qwen2")
    cfg.name = "small-qwen2"
    cfg.vit.update(d_model=256, n_heads=4, n_kv_heads=4, head_dim=64, mlp_hidden=1024, n_layers=6)
    cfg.vit_layers = (-2, -5)
    cfg.llm.update(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, head_dim=64, mlp_hidden=1536,
                   vocab_size=8192, embedding_size=8192)
    cfg.connector.projector_hidden = 1536
    return config.validate(cfg)


def width_7b_d_config(n_layers: int = 2):
    """Molmo-7B-D's geometry (ViT-L/14 at 336 px, Qwen2-7B width and vocabulary) with `n_layers` decoder
    layers: the accelerator rows (`GPU_CONFIGS`)."""
    cfg = config.get_config("Molmo-7B-D-0924")
    cfg.name = "7b-d-width"
    cfg.llm.n_layers = n_layers
    return config.validate(cfg)


CONFIGS = {"tiny": lambda: config.tiny("qwen2"), "small": small_config}
GPU_CONFIGS = {"7b-d-width": width_7b_d_config}  # by name only (--configs): minutes of setup on a CPU


def build_models(cfg, seed: int = 0):
    """(HF Qwen2ForCausalLM on `bench_common.torch_device()`, our params) with the same LLM weights; ViT and
    connector random."""
    torch.manual_seed(seed)
    with torch.device(bench_common.torch_device()):
        hf = transformers.Qwen2ForCausalLM(hf_qwen2_config(cfg)).eval()
    params = convert_base.init_params_from_hf(cfg, jax.random.key(seed), llm=(hf.state_dict(), hf.config))
    return hf, params


def official_model(src: str, cfg, params=None, native: dict[str, np.ndarray] | None = None):
    """The official torch Molmo of `cfg` (its dropout rates too) holding our params (via the official native
    names) or `native`, {official native name: array}."""
    sys.path.insert(0, src)
    bench_common.stub_official_downloads()
    from olmo import ModelConfig, Molmo as OfficialMolmo
    d = {k: v for k, v in json.loads(OFFICIAL_TEMPLATE.read_text()).items() if not k.startswith("_")}
    v, llm = cfg.vit, cfg.llm
    d.update(d_model=llm.d_model, n_heads=llm.n_heads, n_kv_heads=llm.n_kv_heads, n_layers=llm.n_layers,
             mlp_hidden_size=2 * llm.mlp_hidden, vocab_size=llm.vocab_size, embedding_size=llm.embedding_size,
             rope_theta=llm.rope_theta, layer_norm_eps=llm.norm_eps, vit_layers=list(cfg.vit_layers),
             max_crops=cfg.preprocess.max_crops, init_device="cpu",
             **{k: llm[k] for k in ("attention_dropout", "embedding_dropout", "residual_dropout",
                                    "response_residual_dropout")})
    d["vision_backbone"].update(image_emb_dim=v.d_model, image_num_heads=v.n_heads,
                                image_num_key_value_heads=v.n_kv_heads, image_head_dim=v.head_dim,
                                image_mlp_dim=v.mlp_hidden, image_num_layers=v.n_layers, image_num_pos=v.num_pos,
                                image_default_input_size=list(v.image_size), image_patch_size=v.patch_size)
    model = OfficialMolmo(ModelConfig.new(**d), init_params=False)
    native = checkpoints.params_to_native(params, cfg) if native is None else native
    tensors = {k: torch.from_numpy(np.require(x, requirements="W")) for k, x in native.items()}
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def prefill_inputs(cfg, seed: int = 0) -> dict[str, np.ndarray]:
    """Batch of one: an image of every crop (random pixels), its tokens after TEXT_TOKENS // 2 text ids."""
    crops, patches = config.max_total_crops(cfg), int(np.prod(config.patch_grid(cfg)))
    per_crop = int(np.prod(config.pooled_grid(cfg)))
    seq = crops * per_crop + TEXT_TOKENS
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, cfg.llm.vocab_size, (1, seq), dtype=np.int32),
            "images": rng.normal(size=(1, crops, patches, cfg.vit.patch_size ** 2 * 3)).astype(np.float32),
            "image_masks": np.ones((1, crops, patches), np.float32),
            "image_input_idx": (TEXT_TOKENS // 2 + np.arange(crops * per_crop, dtype=np.int32)).reshape(1, crops, -1)}


# ----------------------------------------------------------------------------- timing

def ours_call(cfg, params, inputs: dict[str, np.ndarray]) -> Callable[[], np.ndarray]:
    """Our jitted forward on `inputs` (compiled by its first call)."""
    forward = jax.jit(Molmo(cfg).apply)
    args = {k: jax.device_put(x) for k, x in inputs.items()}
    return lambda: np.asarray(forward({"params": params}, **args).block_until_ready())


def torch_call(model, inputs: dict[str, np.ndarray], **fixed) -> Callable[[], np.ndarray]:
    """`model(**inputs, **fixed).logits` under inference mode."""
    args = {k: torch.from_numpy(x).long() if k.endswith(("ids", "idx")) else torch.from_numpy(x)
            for k, x in inputs.items()}
    def call():
        with torch.inference_mode():
            return model(**args, **fixed).logits.float().numpy()
    return call


def row(name: str, workload: str, inputs, ours: Callable, ref: Callable, reference: str, repeats: int,
        min_seconds: float = 0.0) -> dict:
    """Times ours against the reference on `inputs`; throughputs, ratio and max |logit difference|, and
    ours timed right after a reference call (`bench_common.after_switch_median`)."""
    timed = bench_common.interleaved_medians({"ours": ours, "reference": ref}, repeats, min_seconds)
    (t_ours, logits_ours), (t_ref, logits_ref) = timed["ours"], timed["reference"]
    tokens = inputs["input_ids"].size
    images = inputs["input_ids"].shape[0] if workload == "image" else 0
    t_switch = bench_common.after_switch_median(ours, ref, repeats)
    return dict(config=name, workload=workload, reference=reference, tokens=tokens,
                ours_tokens_per_s=tokens / t_ours, reference_tokens_per_s=tokens / t_ref,
                ours_after_reference_tokens_per_s=tokens / t_switch,
                ours_images_per_s=images / t_ours, reference_images_per_s=images / t_ref,
                ours_seconds=t_ours, reference_seconds=t_ref, speedup=t_ref / t_ours,
                max_abs_logit_diff=float(np.abs(logits_ours - logits_ref).max()))


def bench_config(name: str, repeats: int, official_src: str | None, min_seconds: float = 0.0) -> list[dict]:
    cfg = CONFIGS[name]()
    hf, params = build_models(cfg)
    inputs = prefill_inputs(cfg)
    text = {"input_ids": inputs["input_ids"]}
    rows = [row(name, "text", text, ours_call(cfg, params, text), torch_call(hf, text, use_cache=False),
                f"transformers {transformers.__version__} Qwen2", repeats, min_seconds)]
    if official_src:
        official = official_model(official_src, cfg, params)
        rows.append(row(name, "image", inputs, ours_call(cfg, params, inputs), torch_call(official, inputs),
                        "official allenai/molmo", repeats, min_seconds))
    return rows


def print_table(rows: list[dict]):
    print(f"{'config':7} {'workload':8} {'framework':34} {'tokens/s':>10} {'images/s':>9} {'ratio':>6} "
          f"{'max|dlogit|':>11}")
    for r in rows:
        for who, label in (("ours", "molmo-jax (jax.jit)"), ("reference", r["reference"])):
            ratio, diff = (f"{r['speedup']:.2f}", f"{r['max_abs_logit_diff']:.1e}") if who == "ours" else ("", "")
            print(f"{r['config']:7} {r['workload']:8} {label:34} {r[f'{who}_tokens_per_s']:10.0f} "
                  f"{r[f'{who}_images_per_s']:9.2f} {ratio:>6} {diff:>11}")


def main(argv=None) -> dict:
    parser = bench_common.arg_parser(__doc__)
    parser.add_argument("--official-src", help="checkout of allenai/molmo: adds image+text prefill rows")
    bench_common.add_threads_flag(parser)
    args = bench_common.parse(parser, argv, __file__)
    threads = args.threads
    bench_common.set_threads(threads)
    configs, repeats, min_seconds = {"smoke": (["tiny"], 1, 0), "quick": (CONFIGS, 5, 2), "full": (CONFIGS, 15, 5)}[
        args.mode]
    rows = [r for name in configs for r in bench_config(name, repeats, args.official_src, min_seconds)]
    print_table(rows)
    result = dict(speedup=min(r["speedup"] for r in rows), threads=threads, repeats=repeats, min_seconds=min_seconds,
                  official_src=args.official_src, torch=torch.__version__, transformers=transformers.__version__,
                  rows=rows)
    return bench_common.finish(result, args, "min over rows, ours / reference throughput")


if __name__ == "__main__":
    main()
