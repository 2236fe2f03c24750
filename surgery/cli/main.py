"""The `surgery` dispatcher: each command group registers its subcommands; one error policy for all of them."""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys

# Before torch loads OpenMP: threads that spin while waiting starve each other when the cores are
# shared (measured: a 768x3072 SVD took 1.0 s on one thread and 4-18 s on two without this).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Before numpy loads OpenBLAS: its AVX-512 ("SkylakeX") kernels round the zoo's ARS policy products
# differently from the AVX2 ("Haswell") ones the shipped datasets were built with, and ARS amplifies
# that (measured: iteration 90 evaluated 1071.57 vs 1208.69; with Haswell kernels a rebuild of the
# Hopper datasets is byte-identical to the shipped ones). Only x86 OpenBLAS knows these names.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("OPENBLAS_CORETYPE", "Haswell")

# Each module defines `register(subparsers)`, adding its subcommands; each subcommand sets
# `func(args) -> int`. Command modules import the library inside their functions, so `surgery --help` stays fast.
COMMAND_MODULES = (
    "surgery.cli.analyze",
    "surgery.cli.zoo",
    "surgery.cli.evaluate",
    "surgery.cli.experiments",
    "surgery.cli.export",
    "surgery.cli.atlas",
    "surgery.cli.lm",
    "surgery.cli.compare",
)


class Parser(argparse.ArgumentParser):
    """argparse with the error policy of the commands: one line, `PROG: error: MESSAGE`, exit status 2.

    argparse's own error() prints the whole usage block first; subcommand parsers inherit this class.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="surgery", description="SVD interpretability and reversible "
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
    except KeyboardInterrupt as e:  # a command may say what was saved: raise KeyboardInterrupt(note)
        print(f"surgery {command}: interrupted{f': {e}' if str(e) else ''}", file=sys.stderr)
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
