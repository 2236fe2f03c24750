"""The atlas against today's way of testing many edits, side by side in one run, on the shipped Hopper and HalfCheetah.

    python benchmarks/atlas_throughput.py                                   # 64 edits x 50 episodes (hours on 2 cores)
    python benchmarks/atlas_throughput.py --edits 16 --episodes 20 --max-steps 200   # minutes

For each model, the same sample of edits is measured four ways: a uniform random sample of the K
and V triples of every block (what a full atlas is made of; `--sample large` takes half of them
among each weight's 16 largest triples instead, where the damaging edits are), fixed seed:
  (a) today's way: one `surgery.evaluate` of all N episodes per edit under `surgery.patch`, plus one
      baseline; each edit's paired permutation p (exact, `stats.sign_flip_p`) Holm-corrected;
  (b) the atlas in one process: edits as lanes, looks with early stopping (`surgery.atlas`, workers=0);
  (c) the atlas on a Dask LocalCluster of 1 and of 2 worker processes (cluster start and model
      loading on the workers are done before the clock starts: a long atlas amortises them).
It prints wall time, CPU time (this process, plus the Dask workers' processes: on a machine shared
with other jobs wall time swings with their load, CPU time much less), edits per minute,
environment steps and steps per second, and whether (a) and
(b) reach the same decision on every edit (a) finds clearly damaging (p_adj < 0.01) or clearly
harmless (raw p > 0.5). Targets (issue 11): (b) agrees on those, with >= 3x fewer env steps and
>= 3x less wall time than (a); (c) 2 workers >= 1.6x one worker when both cores are free.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sample(adapter, n: int, seed: int, kind: str) -> list[tuple]:
    """n (block, weight, idx) triples of K and V: uniformly at random, or half among each weight's 16 largest."""
    rng = np.random.default_rng(seed)
    every = [(b, w, i) for w in ("K", "V") for b in range(adapter.n_blocks) for i in range(adapter.rank(w))]
    if kind == "uniform":
        pick = [every[i] for i in rng.choice(len(every), n, replace=False)]
    else:
        big = [t for t in every if t[2] < 16]
        rest = [t for t in every if t[2] >= 16]
        pick = [big[i] for i in rng.choice(len(big), n // 2, replace=False)]
        pick += [rest[i] for i in rng.choice(len(rest), n - n // 2, replace=False)]
    return sorted(pick, key=lambda t: (t[1], t[0], t[2]))


def todays_way(adapter, triples, args) -> dict:
    """(a): a baseline evaluate, then one evaluate per edit under a patch; exact permutation p, Holm."""
    import surgery
    from surgery import stats

    start, cpu = time.perf_counter(), time.process_time()
    run = dict(episodes=args.episodes, seed=args.seed, max_steps=args.max_steps, batch_size=args.lanes,
               progress=False)
    base = surgery.evaluate(adapter, **run)
    steps = int(base.lengths.sum())
    p, damage = [], []
    for b, w, i in triples:
        with surgery.patch(adapter, block=b, weight=w, idx=i, op="zero"):
            edited = surgery.evaluate(adapter, **run)
        steps += int(edited.lengths.sum())
        d = edited.returns - base.returns
        p.append(stats.sign_flip_p(d))
        damage.append(-float(d.mean()))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    p = np.array(p)
    return {"wall": wall, "cpu": cpu, "env_steps": steps, "episodes": (len(triples) + 1) * args.episodes, "p": p,
            "p_adj": stats.adjust_pvalues(p, "holm"), "damage": np.array(damage)}


def atlas_way(adapter, triples, args, **where) -> dict:
    """(b) and (c): the atlas, fresh (nothing to resume), in one process or on the given Dask client."""
    import surgery

    client = where.get("client")
    workers = (lambda: sum(client.run(time.process_time).values())) if client is not None else (lambda: 0.0)
    start, cpu, cpu_workers = time.perf_counter(), time.process_time(), workers()
    a = surgery.atlas(adapter, triples=triples, op="zero", episodes=args.episodes, seed=args.seed,
                      max_steps=args.max_steps, lanes=args.lanes, progress=False, out=None, source=args.model, **where)
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu + workers() - cpu_workers
    return {"wall": wall, "cpu": cpu, "env_steps": a.cost["env_steps_this_run"], "episodes": a.cost["episodes"],
            "p": np.asarray(a.rows["p"]), "p_adj": np.asarray(a.rows["p_adj"]), "damage": np.asarray(a.rows["damage"]),
            "stopped": a.cost["stopped"]}


def warm(client, model: str, sha: str) -> None:
    """Load the model on every worker (imports, checkpoint, hash): a cost a long atlas pays once."""
    from surgery.experiments.distribute import ModelRef, _load

    client.run(lambda: _load(ModelRef(model, sha)) and None)


def compare(a: dict, b: dict) -> str:
    """Does (b) decide as (a) where (a) is clear?"""
    sig_a, sig_b = a["p_adj"] <= 0.05, b["p_adj"] <= 0.05
    damaging = a["p_adj"] < 0.01
    harmless = a["p"] > 0.5
    agree_d = int(np.sum(damaging & sig_b & (np.sign(a["damage"]) == np.sign(b["damage"]))))
    agree_h = int(np.sum(harmless & ~sig_b))
    other = ~damaging & ~harmless
    return (f"decisions: (a) clearly damaging (p_adj < 0.01): {int(damaging.sum())}, (b) agrees on {agree_d}; "
            f"(a) clearly harmless (p > 0.5): {int(harmless.sum())}, (b) agrees on {agree_h}; in between: "
            f"{int(other.sum())}, (a) rejects {int((other & sig_a).sum())}, (b) {int((other & sig_b).sum())}; "
            f"overall (a) rejects {int(sig_a.sum())}, (b) {int(sig_b.sum())}, "
            f"they differ on {int((sig_a != sig_b).sum())}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["hopper", "halfcheetah"])
    p.add_argument("--edits", type=int, default=64)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--max-steps", type=int, default=None, help="cut episodes (default: the env's 1000)")
    p.add_argument("--lanes", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", choices=["uniform", "large"], default="uniform")
    p.add_argument("--modes", nargs="+", default=["a", "b", "c1", "c2"], choices=["a", "b", "c1", "c2"])
    args = p.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)  # one core per process, as each Dask worker has: the comparison is per core

    import surgery
    from surgery.behaviour.evaluation import weights_sha256
    from surgery.experiments.distribute import Runner

    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f} at the start; torch {torch.__version__}")
    for name in args.models:
        args.model = name
        adapter = surgery.load(name)
        triples = sample(adapter, args.edits, args.seed, args.sample)
        print(f"\n{name} ({adapter.metadata.env_id}): {len(triples)} edits (op zero, K and V, {args.sample} sample), "
              f"{args.episodes} episodes, max {args.max_steps or 'env'} steps, lanes {args.lanes}")
        results = {}
        if "a" in args.modes:
            results["(a) evaluate per edit under patch"] = todays_way(adapter, triples, args)
        if "b" in args.modes:
            results["(b) atlas, one process"] = atlas_way(adapter, triples, args, workers=0)
        for n in (1, 2):
            if f"c{n}" not in args.modes:
                continue
            t = time.perf_counter()
            with Runner(workers=n) as runner:
                warm(runner.client, name, weights_sha256(adapter.model))
                ready = time.perf_counter() - t
                results[f"(c) atlas, Dask {n} worker{'s' * (n > 1)}"] = atlas_way(adapter, triples, args,
                                                                                 client=runner.client)
            print(f"  (Dask {n}: cluster start and model load on the workers {ready:.0f} s, not counted)")
        print(f"  {'mode':<36}{'wall s':>9}{'CPU s':>8}{'edits/min':>11}{'episodes':>10}{'env steps':>11}"
              f"{'steps/s':>9}{'steps/CPU s':>13}")
        for mode, r in results.items():
            print(f"  {mode:<36}{r['wall']:>9.1f}{r['cpu']:>8.1f}{len(triples) / r['wall'] * 60:>11.1f}"
                  f"{r['episodes']:>10}{r['env_steps']:>11}{r['env_steps'] / r['wall']:>9.0f}"
                  f"{r['env_steps'] / r['cpu']:>13.0f}")
        keys = list(results)
        if "(a) evaluate per edit under patch" in results and "(b) atlas, one process" in results:
            a, b = results[keys[0]], results["(b) atlas, one process"]
            print(f"  (b) against (a): {a['env_steps'] / b['env_steps']:.1f}x fewer env steps, "
                  f"{a['wall'] / b['wall']:.1f}x less wall time, {a['cpu'] / b['cpu']:.1f}x less CPU time; "
                  f"stopped {b['stopped']}")
            print("  " + compare(a, b))
        c = [results.get(f"(c) atlas, Dask {n} worker{'s' * (n > 1)}") for n in (1, 2)]
        if all(c):
            print(f"  (c) 2 workers against 1: {c[0]['wall'] / c[1]['wall']:.2f}x wall time "
                  f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
