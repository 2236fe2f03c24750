"""Environment steps per second of many edits: one `evaluate` per edit under `patch`, against all edits as lanes.

    python benchmarks/lane_throughput.py                                  # shipped Hopper, 16 edits x 8 episodes
    python benchmarks/lane_throughput.py --edits 4 --episodes 2 --steps 20 --rounds 1   # quick

Both sides produce the same thing: a baseline and every edit's episodes 0..episodes-1 (the
study's constant edit of one singular vector each, spread over blocks and weight types).
(a) is how edit experiments ran before lanes: `evaluate` for the baseline, then for each edit
`with patch(...): evaluate(...)`, each a lockstep batch of `episodes` rows. (b) is one
`evaluate_runs` call: the baseline and every edit as lanes of one batched forward per step
(surgery/behaviour/lanes.py). Episodes end as they do (a damaging edit ends them early), capped at
--steps. Each round measures both, interleaved; the table shows medians over rounds.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgery import patch  # noqa: E402
from surgery.behaviour.evaluation import Run, evaluate, evaluate_runs  # noqa: E402
from surgery.core.patching import Edit  # noqa: E402


def spread_edits(n_blocks: int, n: int) -> list[Edit]:
    """n single-vector edits (the study's constant edit): every block x K, V, OV, QK at idx 0, then idx 1, ..."""
    out, idx = [], 0
    while len(out) < n:
        for block in range(n_blocks):
            for weight in ("K", "V", "OV", "QK"):
                out.append(Edit(block, weight, idx, head=0 if weight in ("OV", "QK") else None))
        idx += 1
    return out[:n]


def per_edit(adapter, edits, run: dict):
    """(a): the baseline, then one evaluate per edit under its patch; (results, env steps, seconds)."""
    t = time.perf_counter()
    results = [evaluate(adapter, **run)]
    for e in edits:
        with patch(adapter.model, [e]):
            results.append(evaluate(adapter, **run))
    return results, sum(int(r.lengths.sum()) for r in results), time.perf_counter() - t


def as_lanes(adapter, edits, run: dict, lanes: int):
    """(b): the baseline and every edit as lanes of one run; (results, env steps, seconds)."""
    t = time.perf_counter()
    results = evaluate_runs(adapter, [Run()] + [Run([e]) for e in edits], batch_size=lanes, **run)
    return results, sum(int(r.lengths.sum()) for r in results), time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hopper", help="zoo name or checkpoint directory (default: the shipped hopper)")
    p.add_argument("--edits", type=int, default=16)
    p.add_argument("--episodes", type=int, default=8, help="episodes per edit (and of the baseline)")
    p.add_argument("--steps", type=int, default=300, help="cap on each episode's length")
    p.add_argument("--lanes", type=int, default=256, help="rows of one forward in (b)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bfloat16 forwards on both sides")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from surgery.loading import load

    adapter = load(args.model)
    edits = spread_edits(adapter.n_blocks, args.edits)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    run = dict(episodes=args.episodes, seed=0, max_steps=args.steps, dtype=dtype, progress=False)
    rates = {"a": [], "b": []}
    for rnd in range(args.rounds):
        res_a, steps_a, secs_a = per_edit(adapter, edits, run)
        res_b, steps_b, secs_b = as_lanes(adapter, edits, run, args.lanes)
        rates["a"].append(steps_a / secs_a), rates["b"].append(steps_b / secs_b)
        print(f"round {rnd + 1}/{args.rounds}: (a) {steps_a} steps in {secs_a:.1f} s, "
              f"(b) {steps_b} steps in {secs_b:.1f} s", flush=True)
    a, b = statistics.median(rates["a"]), statistics.median(rates["b"])
    jobs = (len(edits) + 1) * args.episodes
    print(f"\nmodel {args.model} ({adapter.metadata.env_id}), {len(edits)} edits + baseline x {args.episodes} episodes "
          f"= {jobs} episodes capped at {args.steps} steps; {str(dtype).replace('torch.', '')}; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; medians of {args.rounds} round(s)")
    print(f"{'':44s} {'env steps/s':>12s}")
    print(f"{'(a) one evaluate per edit under patch':44s} {a:12.0f}   batches of {args.episodes} rows")
    print(f"{'(b) all edits as lanes of one run':44s} {b:12.0f}   up to {min(args.lanes, jobs)} rows")
    print(f"{'ratio (b) / (a)':44s} {b / a:12.2f}")
    # Do both measure the same thing? Baselines: same seeds, other batch; edits: patched vs lane arithmetic.
    same_base = sum(x == y for x, y in zip(res_a[0].records, res_b[0].records))
    diffs = [abs(x.returns.mean() - y.returns.mean()) for x, y in zip(res_a[1:], res_b[1:])]
    effects = [abs(x.returns.mean() - res_a[0].returns.mean()) for x in res_a[1:]]
    print(f"\nbaseline records identical in (a) and (b): {same_base}/{args.episodes}; "
          f"per edit, |mean return (a) - (b)|: "
          f"max {max(diffs):.2g} (the edits' own effect on the mean return: median {np.median(effects):.3g}, "
          f"max {max(effects):.3g})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
