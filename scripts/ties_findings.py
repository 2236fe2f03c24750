"""How many singular triples of the shipped models are tied, and whether the published findings are rotation-unstable.

    python scripts/ties_findings.py [--noise X] [--models hopper halfcheetah lunarlander]

Prints, per model and weight type, the triples in tied groups (of all triples, and of the first 16,
where findings live), the largest group, and for every per-vector finding published in README.md,
docs/analysis.md and docs/experiments.md: its relative gap, its group, whether it is identifiable,
and its group's subspace score against the embedding set of the finding.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


import surgery  # noqa: E402
from surgery.analysis.settings import NOISE  # noqa: E402

# (model, embedding set, block, weight, head, side, idx, what was published, where)
FINDINGS = [
    ("hopper", "action_out", 0, "V", None, "out", 2, "'leg' +0.786, strongest action_out vector; validate A1",
     "README, analysis.md, experiments.md"),
    ("hopper", "action_out", 2, "V", None, "out", 1, "'thigh' 0.786; validate A2", "experiments.md"),
    ("hopper", "action_out", 2, "V", None, "out", 2, "'leg' 0.760; validate A3", "experiments.md"),
    ("hopper", "action_out", 0, "V", None, "out", 0, "'thigh' 0.753; validate A4", "experiments.md"),
    ("hopper", "action_out", 0, "V", None, "out", 1, "'foot' 0.752; validate A5, edit-eval video", "README, experiments.md"),
    ("hopper", "action_out", 2, "K", None, "in", 3, "'leg' 0.688; K validate A1", "experiments.md"),
    ("hopper", "action_out", 0, "K", None, "in", 8, "'foot' 0.681; K validate A2", "experiments.md"),
    ("hopper", "action_out", 2, "K", None, "in", 2, "'foot' 0.625; K validate A3", "experiments.md"),
    ("hopper", "action_out", 1, "K", None, "in", 5, "'foot' 0.576; K validate A4", "experiments.md"),
    ("hopper", "action_out", 0, "K", None, "in", 9, "'thigh' 0.537; K validate A5 (harmless)", "experiments.md"),
    ("hopper", "action_out", 1, "K", None, "in", 4, "'leg' 0.052; the damaging control S4", "README, experiments.md"),
    ("hopper", "state_in", 0, "V", None, "out", 6, "'vel_rooty' -0.831, strongest state_in", "analysis.md"),
    ("hopper", "action_in", 2, "OV", 0, "in", 0, "'foot' -0.855, strongest action_in", "analysis.md"),
    ("hopper", "return_in", 0, "QK", 0, "out", 0, "+0.621, strongest return_in", "analysis.md"),
    ("hopper", "time_in", 0, "V", None, "out", 2, "'t=17' +0.565, strongest time_in", "analysis.md"),
    ("halfcheetah", "action_out", 1, "V", None, "out", 4, "'ffoot' 0.884; validate A1", "README, experiments.md"),
    ("halfcheetah", "action_out", 2, "V", None, "out", 4, "'ffoot' 0.846; validate A2", "experiments.md"),
    ("halfcheetah", "action_out", 2, "V", None, "out", 3, "'fshin' 0.845; validate A3", "experiments.md"),
    ("halfcheetah", "action_out", 2, "V", None, "out", 2, "'fthigh' 0.806; validate A4 (damaging)", "experiments.md"),
    ("halfcheetah", "action_out", 0, "V", None, "out", 1, "'fshin' 0.800; validate A5", "experiments.md"),
    ("halfcheetah", "action_out", 1, "K", None, "in", 2, "'bshin' 0.700; K validate A1", "README, experiments.md"),
    ("halfcheetah", "action_out", 2, "K", None, "in", 5, "'bfoot' 0.680; K validate A2", "experiments.md"),
    ("halfcheetah", "action_out", 2, "K", None, "in", 0, "'bthigh' 0.656; K validate A3", "experiments.md"),
    ("halfcheetah", "action_out", 2, "K", None, "in", 2, "'bshin' 0.622; K validate A4", "experiments.md"),
    ("halfcheetah", "action_out", 2, "K", None, "in", 3, "'bshin' 0.587; K validate A5, edit-eval video",
     "README, experiments.md"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--noise", type=float, default=None, help="one ||E||/S_0 for every weight (default: NOISE per type)")
    ap.add_argument("--models", nargs="+", default=["hopper", "halfcheetah", "lunarlander"])
    args = ap.parse_args()
    print(f"noise: {NOISE if args.noise is None else args.noise} (||E||_2 / S_0)\n")
    results = {}
    for name in args.models:
        model = surgery.load(name)
        sets = sorted({f[1] for f in FINDINGS if f[0] == name}) or ["action_out"]
        a = surgery.alignment(model, embeddings=sets, noise=args.noise)
        results[name] = a
        v = a.vectors.where(embedding=sets[0])
        print(f"{name}: triples in tied groups (per weight type, over blocks and heads; residual side)")
        for w in ("K", "V", "OV", "QK"):
            mine = v.where(weight=w, side="out" if w in ("V", "OV") else "in")
            tied = ~mine["identifiable"].astype(bool)
            lead = mine["idx"] < 16
            print(f"  {w:2s}: {tied.sum():4d} of {len(mine):4d} ({tied.mean():.0%}); first 16 of each: "
                  f"{tied[lead].sum():3d} of {lead.sum():3d}; largest group {mine['group_size'].max()}; "
                  f"identifiable indices: {_ranges(mine.take(~tied))}")
        print()
    print("published findings:")
    for name, emb, block, weight, head, side, idx, what, where in FINDINGS:
        if name not in results:
            continue
        r = results[name].vectors.where(embedding=emb, block=block, weight=weight, head=-1 if head is None else head,
                                        side=side, idx=idx).row(0)
        first, size = r["group"], r["group_size"]
        group = "alone" if size == 1 else f"#{first}-#{first + size - 1}"
        status = "identifiable" if r["identifiable"] else "ROTATION-UNSTABLE"
        h = "" if head is None else f" head {head}"
        print(f"  {name} {emb} block {block} {weight}{h} {side} #{idx} ({what}; {where}): cos {r['cos']:+.3f} "
              f"p_adj {r['p_adj']:.2g}; gap {r['rel_gap']:.4f}; {group}: {status}; span {r['subspace_cos']:.3f} "
              f"{r['subspace_label']!r} p_adj {r['subspace_p_adj']:.2g}")


def _ranges(t) -> str:
    """'0-3, 5' per (block, head): the identifiable indices of each location, compressed."""
    out = []
    for key in sorted({(b, h) for b, h in zip(t["block"], t["head"])}):
        idx = sorted(t.where(block=key[0], head=key[1])["idx"].tolist())
        runs, start = [], None
        for i, x in enumerate(idx):
            if start is None:
                start = x
            if i + 1 == len(idx) or idx[i + 1] != x + 1:
                runs.append(f"{start}" if start == x else f"{start}-{x}")
                start = None
        out.append(f"b{key[0]}{'' if key[1] == -1 else f'h{key[1]}'}: {','.join(runs)}")
    return "; ".join(out) if out else "none"


if __name__ == "__main__":
    main()
