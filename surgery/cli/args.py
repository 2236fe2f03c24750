"""Argument types and option groups shared by the command groups."""
from __future__ import annotations

import argparse


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
