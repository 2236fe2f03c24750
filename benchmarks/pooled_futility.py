"""What the pooled design's futility statistic costs and saves: two_sample_z against the paired statistics of
edited - pool mean (the first version), side by side on the same simulated atlases.

    python benchmarks/pooled_futility.py                  # m = 64 edits (8 damaging), pool 200, 10 repetitions
    python benchmarks/pooled_futility.py --edits 384 --reps 4

HalfCheetah-like returns (docs/atlas.md#placebo): 12% of episodes collapse (N(1000, 800)), the rest
N(5800, 100); a damaging edit raises the collapse rate to `--collapse`. Each repetition draws one pool and
every edit's 30 episodes; both rules see the same p-values (`sequential.pool_p`'s test with fewer resamples,
so that the script runs in minutes: its floor 1 / 20,001 allows no efficacy stop at the first look of 64
edits, which neither rule needs). Prints, per rule, the episodes an unaffected edit plays, the share of
them stopped at the first look and run to the end, the damaging edits found (power), and the family-wise
error (any unaffected edit significant). Only stopping differs between the rules: their p-values are the
same test's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgery import stats  # noqa: E402
from surgery.experiments.sequential import Design, simulate  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, default=64)
    ap.add_argument("--planted", type=int, default=8)
    ap.add_argument("--collapse", type=float, default=0.6, help="collapse rate of a damaging edit (unedited: 0.12)")
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    m, k = args.edits, args.planted
    rng = np.random.default_rng(args.seed)

    def draw(rate, *shape):
        return np.where(rng.random(shape) < rate, rng.normal(1000, 800, shape), rng.normal(5800, 100, shape))

    design = Design((6, 15, 30), m, 0.05, 0.1, "holm", 2.0)
    tally = {"paired statistics of edited - pool mean": [], "two_sample_z (now)": []}
    for rep in range(args.reps):
        pool = draw(0.12, args.pool)
        edited = np.concatenate([draw(args.collapse, k, 30), draw(0.12, m - k, 30)])
        cache = {}

        def p_value(e, look, n):  # the same p for both rules
            if (e, n) not in cache:
                cache[(e, n)] = stats.two_sample_p(edited[e, :n], pool, 1000, 20_000, seed=rep * 10_000 + e * 10 + look)
            return cache[(e, n)]

        runs = {"paired statistics of edited - pool mean": simulate(edited - pool.mean(), design, p_value=p_value),
                "two_sample_z (now)": simulate(edited, design, pool=pool, p_value=p_value)}
        for name, sim in runs.items():
            null = sim.pairs[k:]
            tally[name].append([null.mean(), np.mean(null == 6), np.mean(null == 30), sim.rejected[:k].mean(),
                                sim.rejected[k:].any()])
    print(f"m = {m} edits ({k} damaging: collapse rate {args.collapse:g} against 0.12), pool {args.pool}, looks at "
          f"6, 15, 30 episodes, futility 0.1, Holm at 0.05, {args.reps} repetitions")
    print(f"{'futility reads':<42}{'episodes/null':>14}{'stop at 6':>10}{'run 30':>8}{'power':>7}{'FWER':>6}")
    for name, rows in tally.items():
        ep, at6, at30, power, fwer = np.mean(rows, axis=0)
        print(f"{name:<42}{ep:>14.1f}{at6:>10.2f}{at30:>8.2f}{power:>7.2f}{fwer:>6.2f}")
    old, new = (np.mean(rows, axis=0)[0] for rows in tally.values())
    print(f"episodes per unaffected edit, before / now: {old / new:.2f}x")


if __name__ == "__main__":
    main()
