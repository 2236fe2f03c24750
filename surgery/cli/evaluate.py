"""`surgery evaluate MODEL`: play a decision transformer for N episodes and summarise its behaviour."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from surgery.cli.args import add_rollout_arguments, load_dt, output_lock, saved_note


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
    with output_lock(args.out):  # a second run on the same --out is refused before anything is loaded
        return _run(args)


def _run(args) -> int:
    import torch

    from surgery.behaviour.evaluation import evaluate
    from surgery.behaviour.results_store import RESULTS_FILE, saved

    model = load_dt(args)
    before = saved(args.out, below=args.episodes) if args.out else 0
    try:
        result = evaluate(model, episodes=args.episodes, seed=args.seed, target_return=args.target_return,
                          dtype=torch.bfloat16 if args.bf16 else torch.float32, progress=not args.quiet,
                          max_steps=args.max_steps, out=args.out)
    except KeyboardInterrupt:
        if args.out:
            raise KeyboardInterrupt(saved_note(args.out)) from None
        raise
    if args.json:
        print(json.dumps({"summary": result.summary(), "records": [asdict(r) for r in result.records]},
                         default=_jsonable, indent=2))
    else:
        print(result)
        if args.out:
            reused = f" ({before} of them from an earlier run)" if before else ""
            print(f"{args.episodes} episodes saved in {Path(args.out) / RESULTS_FILE}{reused}")
    return 0


def _jsonable(x):
    if hasattr(x, "__dataclass_fields__"):
        return asdict(x)
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)
