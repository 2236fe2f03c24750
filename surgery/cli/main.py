"""The `surgery` dispatcher: each command group registers its subcommands; one error policy for all of them."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch loads OpenMP: threads that spin while waiting starve each other when the cores are
# shared (measured: a 768x3072 SVD took 1.0 s on one thread and 4-18 s on two without this).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Each module defines `register(subparsers)`, adding its subcommands; each subcommand sets
# `func(args) -> int`. Command modules import the library inside their functions, so `surgery --help` stays fast.
COMMAND_MODULES = (
    "surgery.cli.analyze",
    "surgery.cli.zoo",
    "surgery.cli.evaluate",
    "surgery.cli.experiments",
    "surgery.cli.atlas",
    "surgery.cli.lm",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description="SVD interpretability and reversible "
                                     "singular-vector surgery on transformers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def run(func, args, command: str) -> int:
    """Call a command; user errors (SurgeryError, a missing file) become one line and exit status 2.

    Anything else is a bug (in this project, torch, numpy...) and keeps its traceback.
    """
    from surgery.errors import SurgeryError

    try:
        return int(func(args) or 0)
    except (SurgeryError, FileNotFoundError) as e:
        print(f"surgery {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"surgery {command}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    sub = next((getattr(args, k) for k in ("zoo_command", "lm_command") if getattr(args, k, None)), None)
    return run(args.func, args, args.command if sub is None else f"{args.command} {sub}")


if __name__ == "__main__":
    sys.exit(main())
