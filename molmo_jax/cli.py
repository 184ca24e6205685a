"""The `molmo-jax` command line: a registry of subcommands, each a parser set-up and a run function.

    molmo-jax predict --checkpoint DIR --image cat.jpg --prompt "Point to the cat." --draw out.png
    molmo-jax convert --checkpoint DIR --to orbax --out EXPORT_DIR
    molmo-jax export --checkpoint runs/s1 --to hf_release --out s1_hf     # a training run -> a model

Other modules add subcommands with `register(Command(...))` and list themselves in `EXTENSIONS`.
Errors print one line `molmo-jax <command>: error: ...` on stderr and exit with status 1; `--debug`
(before or after the subcommand) shows the traceback instead; `--import MODULE` loads a user module (e.g.
one registering a pooling) first. Both are `molmo_jax.entry_points`.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from typing import Callable, Sequence

from etils import epath

from molmo_jax import entry_points

# Modules that register more subcommands when imported.
EXTENSIONS: tuple[str, ...] = ("molmo_jax.eval.runner", "molmo_jax.finetune_cli", "molmo_jax.plan",
                               "molmo_jax.data_cli")


@dataclasses.dataclass(frozen=True)
class Command:
    """A subcommand: `add_arguments(parser)` declares its flags, `run(args)` does the work (-> exit code)."""
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def register(command: Command) -> Command:
    if command.name in COMMANDS:
        raise ValueError(f"subcommand {command.name!r} is already registered")
    COMMANDS[command.name] = command
    return command


# ----------------------------------------------------------------------------- shared pieces

def _add_checkpoint_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory (local or gs://): native, HF release, Orbax export or a "
                             "training run (its workdir, checkpoints/ or one step); a released model is the HF hub "
                             "repo allenai/<name>, e.g. allenai/Molmo-7B-D-0924")
    parser.add_argument("--vision-json", type=epath.Path,
                        help="JSON of official ViT fields (e.g. {\"image_emb_dim\": 1024}) for an HF release whose "
                             "vision tower is not the released CLIP")


def _vision(args) -> dict | None:
    return json.loads(args.vision_json.read_text()) if args.vision_json else None


def _load_bundle(args):
    from molmo_jax import api
    entry_points.check_release_dir(args.checkpoint)
    return api.load(args.checkpoint, vision=_vision(args), progress=True)


# ----------------------------------------------------------------------------- predict

def _predict_arguments(parser: argparse.ArgumentParser):
    _add_checkpoint_arguments(parser)
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


def _predict(args) -> int:
    from molmo_jax import points
    if args.draw and not args.image:
        raise ValueError("--draw needs --image")
    image = _read_image(args.image) if args.image else None  # a bad image fails before the model loads
    bundle = _load_bundle(args)
    sampling = bundle.sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                               top_p=args.top_p)
    pred = bundle.predict(image, args.prompt, sampling=sampling, stop_strings=args.stop, seed=args.seed)
    print(pred.text.strip())
    for i, (x, y) in enumerate(pred.points, start=1):
        print(f"point {i}: x={x:.1f} y={y:.1f}")
    if args.draw:
        points.save_drawing(image, pred.points, args.draw)
    return 0


# ----------------------------------------------------------------------------- export / convert

EXPORT_FORMATS = ("native", "hf_release", "orbax")  # molmo_jax.io.EXPORT_FORMATS (not imported: keeps --help fast)


def _export_arguments(parser: argparse.ArgumentParser):
    _add_checkpoint_arguments(parser)
    parser.add_argument("--to", required=True, choices=EXPORT_FORMATS, help="output format")
    parser.add_argument("--out", required=True, help="new (or empty) output directory (local or gs://)")


def _export(args) -> int:
    from molmo_jax import io
    out = io.export(args.checkpoint, args.out, args.to, vision=_vision(args))
    print(f"wrote {args.to} model (config, weights, tokenizer) to {out}")
    return 0


register(Command("predict", "answer a prompt about an image (prints the answer and its points)",
                 _predict_arguments, _predict))
register(Command("export", "write the model of any checkpoint (a training run included) as a native, HF "
                 "release or Orbax model directory", _export_arguments, _export))
register(Command("convert", "convert a checkpoint between the native, HF release and Orbax formats (= export)",
                 _export_arguments, _export))


# ----------------------------------------------------------------------------- entry point

def _add_common_arguments(parser: argparse.ArgumentParser, default):
    """--debug and --import, accepted before and after the subcommand (`default` is SUPPRESS on the
    subcommand's parser, so it does not overwrite what was given before it)."""
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="show the full traceback of an error")
    parser.add_argument("--import", dest="imports", action="append", default=default([]), metavar="MODULE",
                        help="import this module (name, or .py file) first, e.g. one that registers a pooling "
                             "(repeatable)")


def build_parser() -> argparse.ArgumentParser:
    for module in EXTENSIONS:
        importlib.import_module(module)
    parser = argparse.ArgumentParser(prog="molmo-jax", description="Molmo vision-language models in JAX")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_common_arguments(parser, lambda value: value)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_arguments(common, lambda value: argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS.values():
        command.add_arguments(sub.add_parser(command.name, help=command.help, description=command.help,
                                             parents=[common]))
    return parser


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("molmo-jax")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one subcommand; returns its exit status (0 ok, 1 error, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    try:
        with entry_points.one_line_errors(f"molmo-jax {args.command}", args.debug):
            entry_points.import_extensions(args.imports)
            return COMMANDS[args.command].run(args) or 0
    except SystemExit as e:
        return e.code


if __name__ == "__main__":  # run as `python -m molmo_jax.cli`: extensions register in molmo_jax.cli
    from molmo_jax import cli

    sys.exit(cli.main())
