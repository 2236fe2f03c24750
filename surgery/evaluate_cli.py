"""`surgery evaluate MODEL`: play a decision transformer for N episodes and summarise its behaviour."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from surgery.cli import non_negative_int, positive_int


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


def register(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="play a model for N episodes in lockstep; return, score, failures",
                              description=__doc__)
    add_rollout_arguments(p, episodes=100)
    p.add_argument("--out", type=Path, help="directory for episodes.sqlite: every finished episode is saved, "
                   "and rerunning the same command resumes")
    p.add_argument("--json", action="store_true", help="print the summary and records as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from surgery.evaluation import evaluate
    from surgery.loading import load

    model = load(args.model, metadata=args.metadata)
    if getattr(model, "metadata", None) is None:
        raise ValueError(f"{args.model} has no metadata.json; pass --metadata FILE with env_id, state_mean/std, "
                         "return_scale and context_len")
    result = evaluate(model, episodes=args.episodes, seed=args.seed, target_return=args.target_return,
                      dtype=torch.bfloat16 if args.bf16 else torch.float32, progress=not args.quiet,
                      max_steps=args.max_steps, out=args.out)
    if args.json:
        print(json.dumps({"summary": result.summary(), "records": [asdict(r) for r in result.records]},
                         default=_jsonable, indent=2))
    else:
        print(result)
        if args.out:
            print(f"episodes saved in {Path(args.out) / 'episodes.sqlite'}")
    return 0


def _jsonable(x):
    if hasattr(x, "__dataclass_fields__"):
        return asdict(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
