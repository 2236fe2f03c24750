"""What early stopping costs and saves: the atlas's sequential design against a fixed design, by simulation.

    python benchmarks/sequential_power.py                    # m = 64 edits, N = 30 pairs, 100 repetitions
    python benchmarks/sequential_power.py --edits 768 --episodes 50 --reps 20

Each repetition draws returns for a baseline and m edits on N paired episodes (one shared baseline,
so the edits' tests are dependent, as in an atlas); most edits do nothing, `--planted` of them
damage. Three worlds: "normal" (returns +-40, a planted edit lowers every return by `--shift`),
"flips" (the same plus, in 4% of all episodes, a -1500 catastrophe: HalfCheetah flipping over),
"falls" (returns +-40; a planted edit makes 30% of its episodes fall, -2500: Hopper). For each
design it prints the share of planted edits found (power), how many of those a fixed design of N
pairs finds clearly (Holm p_adj < 0.01) the design also finds, the family-wise error over
repetitions, and the pairs used per null and per planted edit. Pure numpy: the same
`surgery.experiments.sequential.simulate` the atlas and the tests use.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgery.experiments.sequential import Design, schedule, simulate  # noqa: E402


def draw(rng, world: str, m: int, n: int, planted: int, shift: float) -> np.ndarray:
    """Paired differences [m, n], integer-valued (the exact p needs no discretisation then)."""
    base, edited = rng.normal(0, 40, n), rng.normal(0, 40, (m, n))
    if world == "flips":
        base += np.where(rng.random(n) < 0.04, -1500, 0)
        edited += np.where(rng.random((m, n)) < 0.04, -1500, 0)
    if world == "falls":
        edited[:planted] += np.where(rng.random((planted, n)) < 0.3, -2500, 0)
    else:
        edited[:planted] -= shift
    return np.round(edited - base)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--edits", type=int, default=64)
    p.add_argument("--episodes", type=int, default=30)
    p.add_argument("--planted", type=int, default=8)
    p.add_argument("--reps", type=int, default=100)
    p.add_argument("--worlds", nargs="+", default=["normal", "flips", "falls"])
    p.add_argument("--shift", type=float, default=60.0, help="damage of a planted edit in normal and flips")
    p.add_argument("--futility", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.2])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    m, n, k = args.edits, args.episodes, args.planted
    fixed = Design((n,), m, futility=0.0)
    designs = {"fixed N": fixed, "looks, no futility": Design(schedule(n, (0.2, 0.5, 1.0)), m, futility=0.0)}
    for f in args.futility:
        designs[f"looks, futility {f:g}"] = Design(schedule(n, (0.2, 0.5, 1.0)), m, futility=f)
    print(f"m = {m} edits ({k} damaging), N = {n} pairs, looks at {schedule(n, (0.2, 0.5, 1.0))}, "
          f"{args.reps} repetitions, Holm at 0.05, one shared baseline")
    print(f"{'world':<8}{'design':<22}{'power':>7}{'clear found':>13}{'FWER':>7}{'pairs/null':>12}{'pairs/damaging':>16}")
    for world in args.worlds:
        rng = np.random.default_rng(args.seed)
        tally = {d: np.zeros(6) for d in designs}  # found, clear found, clear, errors, pairs null, pairs planted
        for _ in range(args.reps):
            D = draw(rng, world, m, n, k, args.shift)
            clear = simulate(D, fixed).p_adjusted[:k] < 0.01
            for name, design in designs.items():
                sim = simulate(D, design)
                tally[name] += [sim.rejected[:k].sum(), (sim.rejected[:k] & clear).sum(), clear.sum(),
                                sim.rejected[k:].any(), sim.pairs[k:].mean(), sim.pairs[:k].mean()]
        for name, (found, cf, c, errors, pn, pp) in tally.items():
            print(f"{world:<8}{name:<22}{found / (k * args.reps):>7.2f}{f'{int(cf)}/{int(c)}':>13}"
                  f"{errors / args.reps:>7.2f}{pn / args.reps:>12.1f}{pp / args.reps:>16.1f}")


if __name__ == "__main__":
    main()
