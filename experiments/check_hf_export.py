"""Does the official Hugging Face loading code read our HF-release export and compute our logits?

    python -m experiments.check_hf_export --remote-code /tmp/molmo_remote --remote-code /tmp/molmoe_remote \
        --checkpoint tests/fixtures/molmo_ref/qwen2_7b_d --checkpoint tests/fixtures/molmo_ref/olmoe_1b \
        [--out result.json]

Exports each `--checkpoint` (any checkpoint directory) as `hf_release`, puts the release's remote code next to
it (`--remote-code`: a directory with the hub repo's `config_molmo.py` and `modeling_molmo.py`, from
allenai/Molmo-7B-D-0924, or MolmoE-1B-0924's `config_molmoe.py` and `modeling_molmoe.py`; they are third-party
code and not part of this repository), loads it with
`transformers.AutoModelForCausalLM.from_pretrained(..., trust_remote_code=True)` and compares its logits
with ours on an image that tiles into several crops (our pre-processing feeds both: the hub processor
resizes with TensorFlow). Needs torch, transformers and einops (the `test` extra).

The dense release's remote code hard-codes the CLIP ViT-L/14-336 sizes (MolmoE's sizes `pad_embed` from the
defaults); for a model with another ViT (the tiny fixtures) the script overrides those sizes in the remote
`VisionBackboneConfig` with the export's own, the only change made to the loaded code. The remote code
predates transformers 5 (there `from_pretrained` fails: `'MolmoForCausalLM' object has no attribute
'all_tied_weights_keys'`): run it with transformers 4.46.3, the version the release fixtures were made
with. Prints one JSON line (with the commit, command and machine); exit status 1 when any checkpoint's logits
differ by more than --tol.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments import bench_common, provenance

bench_common.stub_torchvision_ops()

# ViT sizes the dense remote code hard-codes (official VisionBackboneConfig names)
_VIT_SIZES = ("image_emb_dim", "image_num_heads", "image_num_key_value_heads", "image_num_layers",
              "image_head_dim", "image_mlp_dim", "image_num_pos", "image_default_input_size")


def remote_model(export: Path, vision: dict):
    """The remote-code model of `export` via from_pretrained, its VisionBackboneConfig sized as `vision`."""
    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = json.loads((export / "config.json").read_text())["auto_map"]
    model_class = get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], str(export))
    module = sys.modules[model_class.__module__]
    original = module.VisionBackboneConfig
    overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in vision.items() if k in _VIT_SIZES}
    module.VisionBackboneConfig = lambda **kw: original(**{**kw, **overrides})
    try:
        model = AutoModelForCausalLM.from_pretrained(str(export), trust_remote_code=True)  # float32 weights
    except AttributeError as e:  # the remote code predates transformers 5's loading hooks
        raise SystemExit(f"check_hf_export: the release's remote code does not load under transformers "
                         f"{transformers.__version__} ({e}); run this with transformers 4.46.3") from e
    finally:
        module.VisionBackboneConfig = original
    return model.eval()


def example(bundle, prompt: str) -> dict:
    """Our model inputs for a 500 x 900 image (global view + 1 x 3 crops at max_crops 4)."""
    image = np.random.default_rng(0).integers(0, 256, (500, 900, 3), dtype=np.uint8)
    return bundle.preprocessor(image, prompt)


def check(checkpoint: str, remote_code: Path, prompt: str, tol: float) -> dict:
    """Exports `checkpoint` as hf_release next to `remote_code`'s files, loads it with the remote code and
    compares the logits on `example`."""
    import torch
    import molmo_jax
    from molmo_jax.models.molmo import Molmo

    bundle = molmo_jax.load(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        molmo_jax.save(bundle, export, "hf_release")
        for f in sorted(remote_code.glob("*.py")):
            shutil.copy(f, export / f.name)
        full = export / "molmo_jax.json"  # dense; MolmoE's config.json is the full official config
        vision = json.loads((full if full.exists() else export / "config.json").read_text())["vision_backbone"]
        start = time.perf_counter()
        model = remote_model(export, vision)
        load_s = time.perf_counter() - start
    ex = example(bundle, prompt)
    ours = np.asarray(Molmo(bundle.cfg).apply(
        {"params": bundle.params}, ex["input_tokens"][None].astype(np.int32), images=ex["images"][None],
        image_masks=ex["image_masks"][None], image_input_idx=ex["image_input_idx"][None]))[0]
    with torch.no_grad():
        theirs = model(input_ids=torch.from_numpy(ex["input_tokens"][None].astype(np.int64)),
                       images=torch.from_numpy(ex["images"][None]),
                       image_masks=torch.from_numpy(ex["image_masks"][None]),
                       image_input_idx=torch.from_numpy(ex["image_input_idx"][None].astype(np.int64))).logits[0].numpy()
    diff = float(np.abs(ours - theirs).max())
    return {"checkpoint": str(checkpoint),
            "remote_code": {f.name: hashlib.sha256(f.read_bytes()).hexdigest()
                            for f in sorted(remote_code.glob("*.py"))},
            "crops": int(ex["images"].shape[0]), "tokens": int(ex["input_tokens"].shape[0]),
            "logits_shape": list(theirs.shape), "max_abs_diff": diff, "logit_std": float(ours.std()),
            "same_argmax": bool((ours.argmax(-1) == theirs.argmax(-1)).all()), "load_seconds": round(load_s, 2),
            "ok": diff <= tol}


def remote_code_for(checkpoint: str, remote_codes: list[Path]) -> Path:
    """The directory of `remote_codes` holding the modeling file the checkpoint's family loads with."""
    from molmo_jax import io
    wanted = "modeling_molmoe.py" if io.load_config(checkpoint).llm.block_type == "moe" else "modeling_molmo.py"
    for directory in remote_codes:
        if (directory / wanted).exists():
            return directory
    raise SystemExit(f"check_hf_export: no --remote-code directory holds {wanted} (needed by {checkpoint})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--remote-code", required=True, type=Path, action="append",
                        help="directory holding the release's config_molmo.py and modeling_molmo.py (or "
                             "MolmoE's config_molmoe.py and modeling_molmoe.py); repeatable")
    parser.add_argument("--checkpoint", required=True, action="append",
                        help="any checkpoint directory (exported as hf_release); repeatable")
    parser.add_argument("--prompt", default="Point to the square.")
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument("--out", type=Path, help="also write the result JSON here")
    args = parser.parse_args(argv)

    import transformers
    runs = {Path(c).name: check(c, remote_code_for(c, args.remote_code), args.prompt, args.tol)
            for c in args.checkpoint}
    result = {**provenance.describe(), "transformers": transformers.__version__, "runs": runs}
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0 if all(run["ok"] for run in runs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
