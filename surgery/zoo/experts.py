"""The expert stage: train (or rebuild) the behaviour policies a zoo dataset is collected with."""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from surgery.zoo.ars import ARSConfig, train_ars
from surgery.zoo.policies import LinearPolicy

EXPERT_FILE = "expert.npz"
SNAPSHOTS_FILE = "snapshots.npz"
SUMMARY_FILE = "expert.json"


def train_expert(cfg: ARSConfig, out_dir: str | Path, progress: bool = True) -> dict:
    """Run ARS, write the best policy, every evaluated snapshot and a JSON summary into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = train_ars(cfg, progress=progress)
    res.best.save(out / EXPERT_FILE, eval_return=res.best_return)
    its, rets, pols = zip(*res.snapshots)
    np.savez(
        out / SNAPSHOTS_FILE,
        iters=np.asarray(its), returns=np.asarray(rets),
        M=np.stack([p.M for p in pols]), mean=np.stack([p.mean for p in pols]), std=np.stack([p.std for p in pols]),
    )
    summary = {
        "method": "ARS V2-t (Mania et al. 2018), linear policy, observation normalisation",
        "config": asdict(cfg),
        "iters_done": res.iters_done,
        "seconds": round(res.seconds, 1),
        "best_eval_return": res.best_return,
        "best_iteration": next(i for i, _, p in res.snapshots if p is res.best),
        "eval_seeds": f"{2**31}..{2**31 + cfg.eval_episodes - 1} (snapshots), "
                      f"{2**31 + 1000}..{2**31 + 1000 + cfg.select_episodes - 1} (final selection of the best)",
        "snapshots": [[int(i), float(r)] for i, r in zip(its, rets)],
    }
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def load_expert(out_dir: str | Path) -> LinearPolicy:
    """The best ARS policy of a finished expert stage."""
    return LinearPolicy.load(Path(out_dir) / EXPERT_FILE)


def load_snapshot(out_dir: str | Path, fraction: float) -> tuple[LinearPolicy, int, float]:
    """The snapshot whose evaluated return is closest to `fraction` of the best: a "medium" policy.

    Returns (policy, iteration, evaluated return).
    """
    path = Path(out_dir) / SNAPSHOTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no ARS snapshots at {path}; run the expert stage first")
    with np.load(path, allow_pickle=False) as f:
        rets = f["returns"]
        goal = fraction * rets.max()
        i = int(np.argmin(np.abs(rets - goal)))  # ties go to the earliest
        return LinearPolicy(f["M"][i], f["mean"][i], f["std"][i]), int(f["iters"][i]), float(rets[i])
