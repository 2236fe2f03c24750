"""`surgery zoo list | build | eval`."""
from __future__ import annotations

import json
import os
from pathlib import Path

from surgery.cli.args import check_out_dir, finite_float, non_negative_int, positive_float, positive_int


def default_out() -> Path:
    """Where builds go unless --out is given: $SURGERY_CACHE/zoo or ~/.cache/svd-surgery/zoo."""
    base = os.environ.get("SURGERY_CACHE") or Path.home() / ".cache" / "svd-surgery"
    return Path(base) / "zoo"


def register(subparsers) -> None:
    zoo = subparsers.add_parser("zoo", help="shipped decision transformers: list, build, evaluate")
    sub = zoo.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)

    p = sub.add_parser("list", help="the shipped models and their measured scores")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("build", help="expert -> datasets -> DT training -> evaluated checkpoint (resumable)")
    p.add_argument("env", metavar="ENV", help="zoo name or gymnasium id: hopper, halfcheetah, lunarlander")
    p.add_argument("--out", type=Path, default=None, help=f"working directory (default {default_out()})")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seed for ARS, data collection and training (default 0)")
    p.add_argument("--train-seed", type=non_negative_int, help="seed for DT training only (default: --seed); "
                   "another value trains a twin on the same expert and data")
    p.add_argument("--expert-iters", type=positive_int, help="ARS iterations (default: the recipe's)")
    p.add_argument("--expert-minutes", type=positive_float,
                   help="wall-clock cap on ARS (makes the run non-reproducible)")
    p.add_argument("--episodes", type=positive_int, help="episodes per dataset level (default: the recipe's)")
    p.add_argument("--train-steps", type=positive_int, help="DT gradient steps (default: the recipe's)")
    p.add_argument("--eval-episodes", type=positive_int, default=100, help="evaluation episodes (default 100)")
    p.add_argument("--eval-seed", type=non_negative_int, default=0,
                   help="run seed of the final evaluation, as in surgery evaluate (default 0)")
    p.add_argument("--no-bf16", action="store_true", help="train in float32 instead of bfloat16 autocast")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--stop-after", choices=("expert", "data", "train", "model"), help="stop after this stage")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("eval", help="play a model for N episodes; mean/std return and D4RL score")
    p.add_argument("model", metavar="NAME", help="zoo name or checkpoint directory")
    p.add_argument("--metadata", help="metadata JSON for a checkpoint without metadata.json")
    p.add_argument("--episodes", type=positive_int, default=100, help="episodes (default 100)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="run seed; episode seeds as in surgery evaluate (default 0)")
    p.add_argument("--target-return", type=finite_float, help="return to condition on (default: the metadata's first)")
    p.add_argument("--json", action="store_true", help="print the full result as JSON")
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)


def cmd_list(args) -> int:
    from surgery.behaviour.metadata import DTMetadata
    from surgery.zoo import names, resolve

    w = max(len(n) for n in [*names(), "name"])  # the twins' names are longer than the recipes'
    print(f"{'name':<{w}} {'env':<16} {'return (mean +- std)':<22} {'D4RL score':<10} episodes")
    for name in names():
        meta = DTMetadata.load(resolve(name))
        ev = meta.evaluation
        ret = f"{ev['return_mean']:.1f} +- {ev['return_std']:.1f}" if ev else "not evaluated"
        score = f"{ev['normalized_score']:.1f}" if ev.get("normalized_score") is not None else "-"
        print(f"{name:<{w}} {meta.env_id:<16} {ret:<22} {score:<10} {ev.get('episodes', '-')}")
    return 0


def cmd_build(args) -> int:
    from surgery.zoo.build import BuildOptions, build

    opts = BuildOptions(
        out=check_out_dir(args.out or default_out()), seed=args.seed, train_seed=args.train_seed,
        expert_iters=args.expert_iters,
        expert_minutes=args.expert_minutes, episodes=args.episodes, train_steps=args.train_steps,
        eval_episodes=args.eval_episodes, eval_seed=args.eval_seed, bf16=not args.no_bf16, progress=not args.quiet,
        threads=args.threads, stop_after=args.stop_after,
    )
    model_dir = build(args.env, opts)
    if args.stop_after not in (None, "model"):
        print(f"stopped after {args.stop_after}: {model_dir}")
        return 0
    ev = json.loads((model_dir / "metadata.json").read_text())["evaluation"]
    print(f"model: {model_dir}")
    print(_result_line(ev))
    return 0


def cmd_eval(args) -> int:
    from surgery.cli.args import load_dt
    from surgery.core.threads import torch_threads
    from surgery.zoo.rollout import play

    model = load_dt(args)
    with torch_threads(args.threads):
        result = play(model.model, model.metadata, args.episodes, args.seed, args.target_return,
                      progress=not args.quiet)
    print(json.dumps(result, indent=2) if args.json else _result_line(result))
    return 0


def _result_line(ev: dict) -> str:
    score = "" if ev.get("normalized_score") is None else f", D4RL-normalised score {ev['normalized_score']:.1f}"
    return (f"return {ev['return_mean']:.1f} +- {ev['return_std']:.1f} (min {ev['return_min']:.1f}, "
            f"max {ev['return_max']:.1f}) over {ev['episodes']} episodes ({ev['seeds']}), "
            f"target {ev['target_return']:.0f}{score}")
