"""Train the same DT in float32 and under bfloat16 autocast from one seed; print speed, loss curves and returns.

Usage: python scripts/zoo_precision.py runs/zoo/hopper/data/hopper-mixed.npz Hopper-v5 --steps 2000
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from surgery.behaviour.envs import env_info
from surgery.behaviour.metadata import DTMetadata
from surgery.zoo import datasets
from surgery.zoo.rollout import play
from surgery.zoo.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("data")
    ap.add_argument("env_id")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--return-scale", type=float, default=1000.0)
    ap.add_argument("--episodes", type=int, default=20, help="evaluation episodes per model (surgery.evaluate, run seed 0)")
    args = ap.parse_args()
    data = datasets.load(args.data)
    info = env_info(args.env_id)
    act_dim = len(info.action_names) if info.discrete else data["actions"].shape[1]
    rets = [e["rewards"].sum() for e in datasets.episodes(data)]
    target = math.ceil(max(rets) / 100) * 100
    width = max(args.steps // 10, 1)
    print(f"steps {args.steps}, target {target}, {args.episodes} evaluation episodes (run seed 0)", flush=True)
    for bf16 in (False, True):
        cfg = TrainConfig(steps=args.steps, warmup_steps=min(1000, args.steps // 10), return_scale=args.return_scale, bf16=bf16)
        res = train(cfg, data, act_dim, info.discrete, progress=False)
        meta = DTMetadata(env_id=args.env_id, state_dim=data["observations"].shape[1], act_dim=act_dim,
                          discrete=info.discrete, state_mean=list(res["state_mean"]), state_std=list(res["state_std"]),
                          return_scale=args.return_scale, target_returns=[target])
        ev = play(res["model"], meta, args.episodes, 0, progress=False) if args.episodes else None
        curve = [np.mean(res["losses"][i:i + width]) for i in range(0, args.steps, width)]
        played = f"return {ev['return_mean']:.1f} +- {ev['return_std']:.1f}" if ev else "not played"
        print(f"{'bf16' if bf16 else 'fp32'}: {1000 * res['seconds'] / args.steps:.1f} ms/step; {played}; "
              f"loss per {width} steps: " + " ".join(f"{x:.4f}" for x in curve), flush=True)


if __name__ == "__main__":
    main()
