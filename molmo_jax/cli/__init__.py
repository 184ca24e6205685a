"""The `molmo-jax` command line: one module per command, listed in `COMMANDS`.

    molmo-jax predict --checkpoint DIR --image cat.jpg --prompt "Point to the cat." --draw out.png
    molmo-jax convert --checkpoint DIR --to orbax --out EXPORT_DIR
    molmo-jax export --checkpoint runs/s1 --to hf_release --out s1_hf     # a training run -> a model

A command module has `HELP`, `add_arguments(parser)` (its flags) and `run(args)` (the work -> exit code);
heavy modules are imported inside `run`. Errors print one line `molmo-jax <command>: error: ...` on stderr
and exit with status 1; `--debug` (before or after the command) shows the traceback instead; `--import
MODULE` loads a user module (e.g. one registering a pooling) first (`entry_points`). This package is the
only place with argparse; the library never imports it.
"""
from __future__ import annotations

import argparse
import dataclasses
from types import ModuleType
from typing import Sequence

from molmo_jax.cli import (check_data, download, elo, entry_points, eval, export, finetune, plan, predict,
                           validate_data)


@dataclasses.dataclass(frozen=True)
class Command:
    """A command name and its module (`help` overrides the module's HELP, for an alias)."""
    name: str
    module: ModuleType
    help: str | None = None

    @property
    def description(self) -> str:
        return self.help or self.module.HELP


COMMANDS: tuple[Command, ...] = (
    Command("predict", predict),
    Command("export", export),
    Command("convert", export, "convert a checkpoint between the native, HF release and Orbax formats (= export)"),
    Command("eval", eval),
    Command("elo", elo),
    Command("validate-data", validate_data),
    Command("finetune", finetune),
    Command("plan", plan),
    Command("check-data", check_data),
    Command("download", download),
)


def _add_common_arguments(parser: argparse.ArgumentParser, default):
    """--debug and --import, accepted before and after the command (`default` is SUPPRESS on the command's
    parser, so it does not overwrite what was given before it)."""
    parser.add_argument("--debug", action="store_true", default=default(False),
                        help="show the full traceback of an error")
    parser.add_argument("--import", dest="imports", action="append", default=default([]), metavar="MODULE",
                        help="import this module (name, or .py file) first, e.g. one that registers a pooling "
                             "(repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="molmo-jax", description="Molmo vision-language models in JAX")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _add_common_arguments(parser, lambda value: value)
    common = argparse.ArgumentParser(add_help=False)
    _add_common_arguments(common, lambda value: argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.module.add_arguments(sub.add_parser(command.name, help=command.description,
                                                    description=command.description, parents=[common]))
    return parser


def _version() -> str:
    from importlib import metadata
    try:
        return metadata.version("molmo-jax")
    except metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one command; returns its exit status (0 ok, 1 error, 2 bad usage)."""
    args = build_parser().parse_args(argv)
    module = next(c.module for c in COMMANDS if c.name == args.command)
    try:
        with entry_points.one_line_errors(f"molmo-jax {args.command}", args.debug):
            entry_points.import_extensions(args.imports)
            return module.run(args) or 0
    except SystemExit as e:
        return e.code
