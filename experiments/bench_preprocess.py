"""Throughput of molmo_jax.preprocess vs the official allenai/molmo preprocessor, side by side.

Both run in this process on the same synthetic photos (smooth colour fields + texture + shapes, several
sizes and aspect ratios), from the decoded uint8 array to the model input arrays (crops, masks, token
ids, image_input_idx; prompt formatting and tokenisation included, file decoding excluded since both use
the same PIL call). Single thread for both (torch.set_num_threads(1) and one BLAS thread).

The official code is imported from --official-src (a checkout of allenai/molmo). It needs torchvision,
which does not import beside this torch build (its compiled ops are missing), so `torchvision._meta_registrations`
is stubbed out before import: the official resize only calls torchvision.transforms.Resize /
convert_image_dtype, which run on torch.nn.functional.interpolate. If the official code still cannot be
imported, the reference falls back to torch_reference(): the official algorithm re-expressed with
torch.nn.functional.interpolate (stated in the output as "reference=torch-fallback").

    python -m experiments.bench_preprocess --official-src /tmp/molmo --quick --out bench.json
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import types

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments import bench_common  # noqa: E402
from molmo_jax import config as config_lib  # noqa: E402
from molmo_jax import preprocess, tokenizer  # noqa: E402

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "molmo_ref",
                       "qwen2_7b_d")
PROMPT = "Point to the cup."
SIZES = [(224, 224), (480, 640), (640, 480), (1080, 1920), (300, 1200), (1536, 2048), (3000, 4000)]
QUICK_SIZES = [(224, 224), (480, 640), (1080, 1920), (300, 1200), (3000, 4000)]


def synthetic_photo(h: int, w: int, seed: int) -> np.ndarray:
    """uint8[h, w, 3]: smooth colour gradients, fine texture and a few solid discs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w].astype(np.float32)
    img = np.stack([np.sin(x / w * rng.uniform(1, 6) + c) * np.cos(y / h * rng.uniform(1, 6) - c)
                    for c in range(3)], -1) * 90 + 128
    img += rng.normal(0, 12, (h, w, 3)).astype(np.float32)
    for _ in range(5):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.05, 0.2) * min(h, w)
        img[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(0, 255, 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def _stub(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    sys.modules[name] = mod
    return mod


def _load(name: str, path: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def import_official(src: str):
    """(model_preprocessor, data_formatter, tokenizer) modules of the official code, heavy deps stubbed."""
    bench_common.stub_torchvision_ops()
    pkg = os.path.join(src, "olmo")
    _stub("olmo", __path__=[pkg])
    _stub("olmo.data", __path__=[os.path.join(pkg, "data")])
    _stub("olmo.torch_util", get_local_rank=lambda: 0, barrier=lambda: None)
    _stub("olmo.util", is_url=lambda s: "://" in str(s))
    tok = _load("olmo.tokenizer", os.path.join(pkg, "tokenizer.py"))
    fmt = _load("olmo.data.data_formatter", os.path.join(pkg, "data", "data_formatter.py"))
    mp = _load("olmo.data.model_preprocessor", os.path.join(pkg, "data", "model_preprocessor.py"))
    return mp, fmt, tok


def official_preprocessor(src: str, cfg, max_crops: int):
    """The official Preprocessor built as olmo/data/__init__.py:build_mm_preprocessor(for_inference=True)."""
    from transformers import PreTrainedTokenizerFast
    mp, fmt, tok = import_official(src)
    hf = PreTrainedTokenizerFast(tokenizer_file=os.path.join(FIXTURE, "tokenizer.json"), eos_token="<|endoftext|>")
    wrapper = tok.HfTokenizerWrapper(hf, bos_token_id=hf.eos_token_id)
    f = cfg.formatting
    return mp.Preprocessor(
        fmt.DataFormatter(prompt_templates=f.prompt_type, message_format=f.message_formatting,
                          system_prompt=f.system_prompt_kind, always_start_with_space=f.always_start_with_space,
                          default_inference_len=f.default_inference_len),
        mp.MultiModalPreprocessor(
            tokenizer=wrapper, normalize=cfg.vit.kind, crop_mode=cfg.preprocess.crop_mode, max_crops=max_crops,
            overlap_margins=tuple(cfg.preprocess.overlap_margins), resize=cfg.preprocess.resize_mode,
            use_col_tokens=cfg.preprocess.use_col_tokens, base_image_input_size=tuple(cfg.vit.image_size),
            image_pooling_w=cfg.connector.pooling_w, image_pooling_h=cfg.connector.pooling_h,
            image_token_length_w=12, image_token_length_h=12, image_patch_size=cfg.vit.patch_size,
            image_padding_mask=1, pad_value=cfg.preprocess.pad_value),
        for_inference=True)


def torch_reference(ours: preprocess.Preprocessor):
    """Fallback reference: our pipeline with every resize done by torch.nn.functional.interpolate."""
    def resize(image, size, pad_value=0.0):
        h, w = image.shape[:2]
        sh, sw = preprocess.scaled_size(h, w, *size)
        t = torch.from_numpy(image).permute(2, 0, 1).to(torch.float32) / 255.0
        t = torch.nn.functional.interpolate(t[None], size=(sh, sw), mode="bilinear", align_corners=False,
                                            antialias=True)[0].clip(0, 1).permute(1, 2, 0).numpy()
        top, left = (size[0] - sh) // 2, (size[1] - sw) // 2
        pad = ((top, size[0] - sh - top), (left, size[1] - sw - left))
        return np.pad(t, pad + ((0, 0),), constant_values=pad_value), np.pad(np.ones((sh, sw), bool), pad)

    def run(example):
        original = preprocess.resize_and_pad
        preprocess.resize_and_pad = resize
        try:
            return ours(example["image"], example["prompt"])
        finally:
            preprocess.resize_and_pad = original
    return run


def throughput(fn, arg, min_time: float, min_reps: int) -> tuple[float, object]:
    out = fn(arg)  # warm-up (caches, first-touch)
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_time:
        fn(arg)
        reps += 1
    return reps / (time.perf_counter() - start), out


def main(argv=None) -> dict:
    ap = bench_common.arg_parser(__doc__)
    ap.add_argument("--official-src", default="/tmp/molmo", help="checkout of allenai/molmo")
    ap.add_argument("--max-crops", type=int, default=12, help="12 as the released models")
    args = bench_common.parse(ap, argv, __file__)
    torch.set_num_threads(1)

    cfg = config_lib.from_official(json.load(open(os.path.join(FIXTURE, "config.json"))))
    cfg.preprocess.max_crops = args.max_crops
    ours = preprocess.Preprocessor(cfg, tokenizer.load_tokenizer(os.path.join(FIXTURE, "tokenizer.json"),
                                                                 cfg.llm.vocab_size))
    try:
        official = official_preprocessor(args.official_src, cfg, args.max_crops)
        reference, ref_name = official, "official"
    except Exception as e:  # noqa: BLE001 - any import failure means: use the fallback
        print(f"official code not importable from {args.official_src} ({type(e).__name__}: {e}); "
              "reference=torch-fallback (torch interpolate in our pipeline)")
        reference, ref_name = torch_reference(ours), "torch-fallback"

    sizes, min_time, min_reps = {"smoke": (QUICK_SIZES[:1], 0.0, 1), "quick": (QUICK_SIZES, 1.5, 2),
                                 "full": (SIZES, 4.0, 5)}[args.mode]
    rows = []
    print(f"reference={ref_name}, max_crops={args.max_crops}, one thread, images/s from decoded uint8 arrays")
    print(f"{'h x w':>11} {'crops':>5} {'ours img/s':>11} {'ref img/s':>10} {'speedup':>8} {'max|dimg|':>10} {'ids equal':>9}")
    for k, (h, w) in enumerate(sizes):
        image = synthetic_photo(h, w, seed=k)
        example = {"image": image, "prompt": PROMPT, "style": "demo"}
        ours_ips, a = throughput(lambda ex: ours(ex["image"], ex["prompt"]), example, min_time, min_reps)
        ref_ips, b = throughput(reference, example, min_time, min_reps)
        row = dict(h=h, w=w, crops=int(a["images"].shape[0]), ours_images_per_s=ours_ips,
                   reference_images_per_s=ref_ips, speedup=ours_ips / ref_ips,
                   max_abs_diff_images=float(np.abs(a["images"] - b["images"]).max()),
                   max_abs_diff_image_masks=float(np.abs(a["image_masks"] - b["image_masks"]).max()),
                   input_tokens_equal=bool(np.array_equal(a["input_tokens"], b["input_tokens"])),
                   image_input_idx_equal=bool(np.array_equal(a["image_input_idx"], b["image_input_idx"])))
        rows.append(row)
        print(f"{h:>5} x {w:<5} {row['crops']:>5} {ours_ips:>11.2f} {ref_ips:>10.2f} {row['speedup']:>7.2f}x "
              f"{row['max_abs_diff_images']:>10.2e} {str(row['input_tokens_equal'] and row['image_input_idx_equal']):>9}")
    result = dict(reference=ref_name, official_src=args.official_src, max_crops=args.max_crops,
                  threads=1, speedup=min(r["speedup"] for r in rows), rows=rows)
    return bench_common.finish(result, args, f"worst row, ours / {ref_name}")


if __name__ == "__main__":
    main()
