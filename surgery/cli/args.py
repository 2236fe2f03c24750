"""Argument types, output-path checks and option groups shared by the command groups."""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path


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


def device(text: str) -> str:
    """argparse type: a torch device that exists on this machine (cpu, cuda, cuda:1, mps)."""
    from surgery.core.dtypes import parse_device
    from surgery.errors import SurgeryError

    try:
        parse_device(text)
    except SurgeryError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def add_rollout_arguments(p, episodes: int) -> None:
    """The model and how it is played: options shared by `evaluate` and the edit experiments."""
    p.add_argument("model", metavar="MODEL", help="zoo name (e.g. hopper) or Hugging Face checkpoint directory")
    p.add_argument("--metadata", help="metadata JSON for a checkpoint directory without metadata.json")
    p.add_argument("--episodes", type=positive_int, default=episodes, help=f"episodes per run (default {episodes})")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="run seed; episode i is reset with a seed derived from (seed, i), so every run with "
                        "this seed faces the same initial states (default 0)")
    p.add_argument("--target-return", type=float, help="return to condition on (default: the metadata's first)")
    p.add_argument("--max-steps", type=positive_int, help="cut episodes at this many steps (default: the env's limit)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 forward: faster, actions differ slightly")


def load_dt(args):
    """The decision transformer a behaviour command names, loaded through `surgery.load` with its metadata."""
    from surgery.errors import SurgeryError
    from surgery.loading import load

    model = load(args.model, metadata=args.metadata)
    if getattr(model, "metadata", None) is None:
        raise SurgeryError(f"{args.model} has no metadata.json; pass --metadata FILE with env_id, state_mean/std, "
                           "return_scale and context_len")
    return model


def check_out_file(path, force: bool = False, flag: str = "--out") -> Path:
    """Before any long work: `path` can be written as a file (an existing one only with `force`)."""
    from surgery.errors import SurgeryError

    path = Path(path)
    if path.is_dir():
        raise SurgeryError(f"{flag} {path} is a directory; name a file, e.g. {path / 'scan.json'}")
    if path.exists() and not force:
        raise SurgeryError(f"{flag} {path} exists; pass --force to overwrite it, or name another file")
    parent = path.parent
    if not parent.exists():
        raise SurgeryError(f"{flag} {path}: {parent} does not exist")
    if not parent.is_dir():
        raise SurgeryError(f"{flag} {path}: {parent} is not a directory")
    _probe(parent, flag, path)
    return path


def check_out_dir(path, flag: str = "--out") -> Path:
    """Before any long work: `path` is a directory that can be written, or one that can be made."""
    from surgery.errors import SurgeryError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SurgeryError(f"{flag} {path} exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SurgeryError(f"{flag} {path}: {existing} is a file, not a directory")
    _probe(existing, flag, path)
    return path


def _probe(directory: Path, flag: str, path: Path) -> None:
    """Create and delete a file in `directory`: permissions, read-only mounts and quotas all show up here."""
    from surgery.errors import SurgeryError

    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".surgery-write-test-"):
            pass
    except OSError as e:
        raise SurgeryError(f"{flag} {path}: cannot write in {directory} ({e.strerror or e})") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write a file whole or not at all: a temporary file beside it, then a rename."""
    fd, tmp = tempfile.mkstemp(dir=Path(path).parent, prefix=f".{Path(path).name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
