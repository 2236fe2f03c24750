"""The `surgery` command line: each feature module registers its own subcommands."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Before torch loads OpenMP: threads that spin while waiting starve each other when the cores are
# shared (measured: a 768x3072 SVD took 1.0 s on one thread and 4-18 s on two without this).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Each module defines `register(subparsers)`, adding its subcommands; each subcommand sets
# `func(args) -> int`. Modules are imported lazily so `surgery --help` stays fast.
COMMAND_MODULES = (
    "surgery.analyze_cli",
    "surgery.zoo.cli",
    "surgery.evaluate_cli",
    "surgery.experiments_cli",
    "surgery.lm_cli",
)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


class UserError(Exception):
    """A mistake in the user's input: printed as one clear message, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="surgery", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # a feature not built yet; anything else is a real error
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError) as e:
        # Bad input is reported as one line; bugs elsewhere still show their traceback.
        print(f"surgery {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
