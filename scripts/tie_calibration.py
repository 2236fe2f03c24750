"""Measure the perturbation a trained DT's weights carry: two continuations of its training that differ only in noise.

The shipped models keep no optimizer state and no checkpoints, so retraining noise is measured
from where training ended: AdamW's moment estimates are first rebuilt with `--warm` steps at
learning rate 0 (the weights do not move; both runs share these steps), then two runs continue
from the same weights and optimizer state for `--steps` steps at the schedule's final learning
rate (TrainConfig: lr * final_lr_ratio = 3e-5), with bfloat16 autocast, dropout, clipping and
weight decay as in training; they differ only in the minibatches drawn and the dropout masks
(`--seeds`). E = W_b - W_a is the part of the end of training that is noise, not data.

For each snapshot it prints and stores, per weight, ||E||_2 / S_0 (`surgery.analysis.subspaces.
perturbation`), and checks Wedin's bound where it matters: per triple, the angle its residual-side
vector actually turned between the two runs against noise / rel_gap. It also stores the bfloat16
floor (the weights rounded to bfloat16, the precision training computed in) and, with `--twin`, the
basis-free Weyl lower bound between the shipped model and a second-seed model.

Usage (the data need not be the model's own: the two runs share it, so a shift of distribution
moves both alike and cancels in E to first order):

    python scripts/tie_calibration.py hopper /work/twins/runs/zoo_seed1/hopper/data/hopper-mixed.npz \
        --out runs/ties/hopper.json [--twin /work/twins/runs/zoo_seed1/hopper/model]
    python scripts/tie_calibration.py summary runs/ties/*.json     # the tables of docs/analysis.md
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

import surgery
from surgery.analysis.alignment import shape
from surgery.analysis.subspaces import MAX_SIN, perturbation, ties
from surgery.core.decomposition import RESIDUAL_SIDES, decompose
from surgery.zoo import datasets
from surgery.zoo.train import Sampler, TrainConfig, loss_fn


def _continue(model, opt, sampler, cfg, steps, lr, seed, discrete, snapshots):
    """Train `steps` more steps at a constant lr; return {step: state_dict copy} at the snapshot steps."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    for g in opt.param_groups:
        g["lr"] = lr
    model.train()
    out = {}
    for step in range(1, steps + 1):
        batch = sampler.sample(cfg.batch_size, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=True):
            loss = loss_fn(model, batch, discrete)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        if step in snapshots:
            out[step] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.eval()
    return out


def _turning(a, b, noise_table) -> dict:
    """Per weight: measured angle of each residual-side vector between a and b, against Wedin's bound."""
    rows = []
    for r in noise_table.rows():
        blk, w, h = r["block"], r["weight"], r["head"]
        sa = decompose(a, blk, w, h, dtype=torch.float64)
        sb = decompose(b, blk, w, h, dtype=torch.float64)
        t = ties(sa.S.numpy(), r["rel"], shape(a, w), complement=a.d_model > sa.S.numel())
        bound = np.minimum(1.0, r["rel"] / t.rel_gap)
        for side in RESIDUAL_SIDES[w]:
            va, vb = sa.vectors(side), sb.vectors(side)
            sin = np.sqrt(np.clip(1 - ((va * vb).sum(0).abs().numpy()) ** 2, 0, 1))
            # Subspace angle of each group: the largest principal angle between the two spans.
            gsin = np.empty(sin.size)
            for first, size, _ in t.groups():
                sl = slice(first, first + size)
                c = torch.linalg.svdvals(va[:, sl].T @ vb[:, sl]).min().clamp(max=1.0).item()
                gsin[sl] = math.sqrt(max(0.0, 1 - c * c))
            rows.append({"block": blk, "weight": w, "head": h, "side": side, "rel": r["rel"],
                         "sin": sin.tolist(), "group_sin": gsin.tolist(), "bound": bound.tolist(),
                         "identifiable": t.identifiable.tolist(), "size": t.size.tolist(),
                         "rel_gap": t.rel_gap.tolist()})
    return rows


def summary(paths) -> None:
    """Per file: ||E||_2 / S_0 per weight type at each snapshot, the bf16 floor, the twin's Weyl bound, and how far
    vectors actually turned against the criterion's typical turn noise / ((sqrt m + sqrt n) rel_gap)."""
    bins = [0, 0.1, 0.25, 0.5, 1, 2, 4, math.inf]
    for path in paths:
        r = json.loads(Path(path).read_text())
        print(f"== {r['model']} ({path}; data {r['data']}; lr {r['lr']:g}, warm {r['warm']})")
        ws = ("K", "V", "OV", "QK")
        rng = lambda rows, w, k="rel": (min(x[k] for x in rows if x["weight"] == w),  # noqa: E731
                                        max(x[k] for x in rows if x["weight"] == w))
        print("||E||_2/S_0 (min..max over blocks), by continuation length:")
        for step, snap in r["snapshots"].items():
            print(f"  {int(step):5d} steps: " + "; ".join(f"{w} {rng(snap['noise'], w)[0]:.4f}..{rng(snap['noise'], w)[1]:.4f}"
                                                       for w in ws))
        print("  bf16 floor: " + "; ".join(f"{w} {rng(r['bf16'], w)[1]:.5f}" for w in ws))
        if "twin" in r:
            print("  twin (Weyl lower bound, no shared basis): "
                  + "; ".join(f"{w} {rng(r['twin']['weyl'], w, 'weyl')[0]:.3f}..{rng(r['twin']['weyl'], w, 'weyl')[1]:.3f}"
                              for w in ws))
        for step, snap in r["snapshots"].items():
            sin, turn, wedin, gsin, size = [], [], [], [], []
            for t in snap["turning"]:
                m, n = {"K": (128, 512), "V": (512, 128)}.get(t["weight"], (128, 128))  # the zoo's DT shapes
                gap = np.asarray(t["rel_gap"])
                sin += t["sin"]
                turn += list(t["rel"] / ((math.sqrt(m) + math.sqrt(n)) * gap))
                wedin += list(t["rel"] / gap)
                gsin += t["group_sin"]
                size += t["size"]
            sin, turn, wedin = np.array(sin), np.array(turn), np.array(wedin)
            gsin, size = np.array(gsin), np.array(size)
            ok = turn < MAX_SIN
            print(f"  {int(step)} steps: Wedin's bound ||E||/gap exceeded by {int((sin > wedin + 1e-9).sum())} of "
                  f"{sin.size} vectors; criterion identifiable {ok.sum()}: turned sin median {np.median(sin[ok]):.3f}, "
                  f"max {sin[ok].max():.3f}, > 0.5: {int((sin[ok] > 0.5).sum())}; tied {(~ok).sum()}: median "
                  f"{np.median(sin[~ok]):.3f}, > 0.5: {(sin[~ok] > 0.5).mean():.1%}; spans of tied groups of 2-8: "
                  f"median sin {np.median(gsin[(size > 1) & (size <= 8)]) if ((size > 1) & (size <= 8)).any() else float('nan'):.3f}")
            for lo, hi in zip(bins[:-1], bins[1:]):
                k = (turn >= lo) & (turn < hi)
                if k.sum():
                    print(f"     typical turn [{lo:g}, {hi:g}): n {k.sum():4d}, measured sin median {np.median(sin[k]):.3f}, "
                          f"95% {np.quantile(sin[k], 0.95):.3f}, max {sin[k].max():.3f}, > 0.5: {(sin[k] > 0.5).mean():.1%}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "summary":
        return summary(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="zoo name or checkpoint directory")
    ap.add_argument("data", help=".npz dataset from the same environment")
    ap.add_argument("--warm", type=int, default=200, help="steps at lr 0 rebuilding AdamW's moments (shared)")
    ap.add_argument("--steps", type=int, default=1000, help="steps of each continuation")
    ap.add_argument("--snapshots", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--seeds", type=int, nargs=2, default=[1, 2])
    ap.add_argument("--twin", help="a second-seed model of the same shape (Weyl lower bound, no shared basis)")
    ap.add_argument("--out", required=True, help="JSON file for every number")
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.monotonic()
    shipped = surgery.load(args.model)
    meta = shipped.metadata
    cfg = TrainConfig(context_len=meta.context_len, max_ep_len=meta.max_ep_len, return_scale=meta.return_scale)
    lr = cfg.lr * cfg.final_lr_ratio
    data = datasets.load(args.data)
    act_dim = meta.act_dim
    sampler = Sampler(data, cfg, act_dim, meta.discrete, np.asarray(meta.state_mean), np.asarray(meta.state_std))
    model = copy.deepcopy(shipped.model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=cfg.weight_decay)
    _continue(model, opt, sampler, cfg, args.warm, 0.0, 0, meta.discrete, set())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), shipped.model.parameters())), "lr 0 moved weights"
    start = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()))
    snaps = {}
    for seed in args.seeds:
        model.load_state_dict(start[0])
        opt.load_state_dict(start[1])
        snaps[seed] = _continue(model, opt, sampler, cfg, args.steps, lr, seed, meta.discrete, set(args.snapshots))
        print(f"continuation seed {seed}: {time.monotonic() - t0:.0f} s", flush=True)
    result = {"model": args.model, "data": args.data, "warm": args.warm, "lr": lr, "seeds": args.seeds,
              "max_sin": MAX_SIN, "snapshots": {}}
    a, b = surgery.load(args.model), surgery.load(args.model)
    for step in args.snapshots:
        a.model.load_state_dict(snaps[args.seeds[0]][step])
        b.model.load_state_dict(snaps[args.seeds[1]][step])
        noise = perturbation(a, b)
        drift = perturbation(shipped, a)
        result["snapshots"][step] = {"noise": noise.rows(), "drift": drift.rows(), "turning": _turning(a, b, noise)}
        for w in ("K", "V", "OV", "QK"):
            rel = noise.where(weight=w)["rel"]
            print(f"step {step:5d} {w:2s}: ||E||/S0 {rel.min():.4f}..{rel.max():.4f}  "
                  f"(drift from shipped {drift.where(weight=w)['rel'].max():.4f})", flush=True)
    rounded = surgery.load(args.model)
    with torch.no_grad():
        for p in rounded.model.parameters():
            p.copy_(p.to(torch.bfloat16).to(p.dtype))
    result["bf16"] = perturbation(shipped, rounded).rows()
    if args.twin:
        result["twin"] = {"path": args.twin, "weyl": perturbation(shipped, surgery.load(args.twin)).rows()}
    result["seconds"] = time.monotonic() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
