"""What every command-line entry point shares (`molmo-jax`, `python -m experiments.train`, ...).

    with entry_points.one_line_errors("experiments.train", debug=FLAGS.debug):
        entry_points.import_extensions(FLAGS["import"].value)   # user modules, e.g. a new pooling
        ...

- `--import MODULE` (repeatable) imports a user module before any config is read or validated, so what
  it registers (e.g. `connector.register_pooling("max", ...)`) is known to every command. MODULE is a
  module name importable from the working directory (`my_poolings`) or a file (`my_poolings.py`).
- Errors print one line `<program>: error: <message>` on stderr and exit with status 1; `--debug`
  shows the traceback instead.
- The released models live on the Hugging Face hub (`RELEASES`); a command given a released model's name
  that is not a local directory says which repo to download.
- `--checkpoint` / `--vision-json` of the commands that load one model (`add_checkpoint_arguments`,
  `load_bundle`).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from etils import epath

# Released model name -> its Hugging Face hub repo (the HF release format, which `molmo_jax.load` reads).
RELEASES = {name: f"allenai/{name}" for name in
            ("MolmoE-1B-0924", "Molmo-7B-O-0924", "Molmo-7B-D-0924", "Molmo-72B-0924")}


def one_line(error: BaseException, limit: int = 2000) -> str:
    """The error message on one line (at most `limit` characters); the type too unless it is a plain
    ValueError / OSError subclass, whose messages already name the problem."""
    text = " ".join(str(error).split()) or "(no message)"
    if not isinstance(error, (ValueError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


@contextlib.contextmanager
def one_line_errors(program: str, debug: bool = False) -> Iterator[None]:
    """Turns an exception into `<program>: error: <one line>` on stderr and SystemExit(1) (unless debug)."""
    try:
        yield
    except Exception as e:  # one line per error; the traceback only on request
        if debug:
            raise
        print(f"{program}: error: {one_line(e)}", file=sys.stderr)
        raise SystemExit(1) from None


def import_extensions(modules: Sequence[str]) -> None:
    """Imports each user module (a name importable from the working directory, or a .py file)."""
    if modules and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for module in modules:
        try:
            if module.endswith(".py"):
                path = Path(module)
                spec = importlib.util.spec_from_file_location(path.stem, path)
                if spec is None or not path.is_file():
                    raise FileNotFoundError(f"no such file {path}")
                loaded = importlib.util.module_from_spec(spec)
                sys.modules[path.stem] = loaded
                spec.loader.exec_module(loaded)
            else:
                importlib.import_module(module)
        except Exception as e:
            raise ValueError(f"--import {module}: cannot import it ({one_line(e)})") from e


def check_release_dir(path: str | os.PathLike) -> None:
    """Raises FileNotFoundError naming the hub repo to download when `path` (e.g. "Molmo-7B-D-0924") does
    not exist and is a released model's name."""
    path = epath.Path(path)
    repo = RELEASES.get(path.name)
    if repo and not path.exists():
        raise FileNotFoundError(f"{path}: no such directory; {path.name} is the Hugging Face hub repo {repo}: "
                                f"`hf download {repo} --local-dir {path}` (huggingface_hub)")


def add_checkpoint_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint directory (local or gs://): native, HF release, Orbax export or a "
                             "training run (its workdir, checkpoints/ or one step); a released model is the HF hub "
                             "repo allenai/<name>, e.g. allenai/Molmo-7B-D-0924")
    parser.add_argument("--vision-json", type=epath.Path,
                        help="JSON of official ViT fields (e.g. {\"image_emb_dim\": 1024}) for an HF release whose "
                             "vision tower is not the released CLIP")


def vision(args: argparse.Namespace) -> dict | None:
    """The --vision-json fields, or None."""
    return json.loads(args.vision_json.read_text()) if args.vision_json else None


def load_bundle(args: argparse.Namespace):
    """The model of --checkpoint (`molmo_jax.load`), with a released model's name explained."""
    from molmo_jax import api
    check_release_dir(args.checkpoint)
    return api.load(args.checkpoint, vision=vision(args), progress=True)
