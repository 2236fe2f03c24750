"""What early stopping costs and saves: power and pairs used by the atlas's sequential design against a fixed design.

    python benchmarks/sequential_power.py                    # m = 64 edits, N = 30 pairs, 200 repetitions
    python benchmarks/sequential_power.py --edits 768 --episodes 50 --reps 50

Each repetition draws paired differences for m edits against one shared baseline (so the edits'
tests are dependent, as in an atlas): most edits do nothing, `--planted` of them shift every
difference by delta standard deviations of a paired difference. For each delta it prints the
share of planted edits found (power) and of null edits wrongly flagged (family-wise error over
repetitions), and the pairs used per edit, for a fixed design of N pairs (one look) and for the
sequential design with looks (0.2, 0.5, 1) at several futility thresholds. Pure numpy: the same
`surgery.experiments.sequential.simulate` the tests use.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgery.experiments.sequential import Design, schedule, simulate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=64)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--planted", type=int, default=8)
    p.add_argument("--reps", type=int, default=200)
    p.add_argument("--deltas", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0])
    p.add_argument("--futility", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    m, n = args.edits, args.episodes
    designs = {"fixed": Design((n,), m)}
    for f in args.futility:
        designs[f"looks, futility {f:g}"] = Design(schedule(n, (0.2, 0.5, 1.0)), m, futility=f)
    print(f"m = {m} edits ({args.planted} with an effect), N = {n} pairs, {args.reps} repetitions, Holm at 0.05; "
          "differences = round(20 * (edited - baseline)), shared baseline")
    print(f"{'delta':>6}  {'design':<24}{'power':>7}{'FWER':>7}{'pairs/null edit':>17}{'pairs/planted':>15}")
    for delta in args.deltas:
        rng = np.random.default_rng(args.seed)
        found = {k: 0 for k in designs}
        errors = {k: 0 for k in designs}
        pairs_null = {k: 0.0 for k in designs}
        pairs_planted = {k: 0.0 for k in designs}
        for _ in range(args.reps):
            base, edited = rng.normal(0, 1, n), rng.normal(0, 1, (m, n))
            edited[:args.planted] -= delta * np.sqrt(2)  # delta sd of a paired difference (sd sqrt 2)
            D = np.round(20 * (edited - base))  # integers: the exact sign-flip p needs no discretisation
            for k, design in designs.items():
                sim = simulate(D, design)
                found[k] += sim.rejected[:args.planted].sum()
                errors[k] += sim.rejected[args.planted:].any()
                pairs_null[k] += sim.pairs[args.planted:].mean()
                pairs_planted[k] += sim.pairs[:args.planted].mean()
        for k in designs:
            print(f"{delta:>6g}  {k:<24}{found[k] / (args.planted * args.reps):>7.2f}{errors[k] / args.reps:>7.3f}"
                  f"{pairs_null[k] / args.reps:>17.1f}{pairs_planted[k] / args.reps:>15.1f}")


if __name__ == "__main__":
    main()
