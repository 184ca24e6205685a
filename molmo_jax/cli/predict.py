"""`molmo-jax predict`: answer one prompt about an image with a checkpoint.

    molmo-jax predict --checkpoint DIR --image cat.jpg --prompt "Point to the cat." --draw out.png
"""
from __future__ import annotations

import argparse

from etils import epath

from molmo_jax.cli import entry_points

HELP = "answer a prompt about an image (prints the answer and its points)"


def add_arguments(parser: argparse.ArgumentParser):
    entry_points.add_checkpoint_arguments(parser)
    parser.add_argument("--image", type=epath.Path, help="image file (omit for a text-only prompt)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--max-new-tokens", type=int, help="default: the config's default_inference_len")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--draw", type=epath.Path, help="write the image with the answer's points to this PNG")


def _read_image(path: epath.Path):
    """`preprocess.load_image`, with PIL's own errors on corrupt files (which may not name the file)
    turned into an ImageError naming it."""
    from molmo_jax.preprocess import ImageError, load_image
    try:
        return load_image(path)
    except ImageError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error... on corrupt data
        raise ImageError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e


def run(args: argparse.Namespace) -> int:
    from molmo_jax import points
    if args.draw and not args.image:
        raise ValueError("--draw needs --image")
    image = _read_image(args.image) if args.image else None  # a bad image fails before the model loads
    bundle = entry_points.load_bundle(args)
    sampling = bundle.sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p)
    pred = bundle.predict(image, args.prompt, sampling=sampling, stop_strings=args.stop, seed=args.seed)
    print(pred.text.strip())
    for i, (x, y) in enumerate(pred.points, start=1):
        print(f"point {i}: x={x:.1f} y={y:.1f}")
    if args.draw:
        points.save_drawing(image, pred.points, args.draw)
    return 0
