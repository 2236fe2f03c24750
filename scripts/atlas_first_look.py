"""The claim's first criterion on common pairs, for atlas folders written before `damage_first_look` existed.

    python scripts/atlas_first_look.py docs/atlas-results/hopper-top16 docs/atlas-results/halfcheetah-top16

For each folder, the claim (`surgery.experiments.claim`) twice: on `damage` at each edit's stopping look,
as the report states it, and on the damage over the first look's pairs, which every edit played (read from
the episode store); the significance decisions are the atlas's in both.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import pandas as pd


def first_look_damage(folder: Path) -> pd.Series:
    """Per edit: mean(baseline - edited) over the first look's episodes."""
    n = json.loads((folder / "plan.json").read_text())["design"]["looks"][0]
    # immutable: reading leaves no -shm/-wal files beside the store
    conn = sqlite3.connect(f"file:{folder / 'episodes.sqlite'}?mode=ro&immutable=1", uri=True)
    try:
        ep = pd.read_sql_query("SELECT edit, episode, episode_return FROM episodes WHERE episode < ?", conn,
                               params=(n,))
    finally:
        conn.close()
    wide = ep.pivot(index="edit", columns="episode", values="episode_return")
    if wide.isna().any().any() or wide.shape[1] != n:
        raise SystemExit(f"{folder}: the store lacks some of the first {n} episodes")
    return (wide.loc[-1] - wide.drop(index=-1)).mean(axis=1)


def claims(folder: Path, embedding: str):
    """The claim judged twice on one atlas folder: on `damage` (as its report) and on the first look's damage."""
    from types import SimpleNamespace

    from surgery.analysis.tables import Table
    from surgery.experiments.claim import claim
    from surgery.experiments.sequential import Design

    plan = json.loads((folder / "plan.json").read_text())
    design = Design(**{k: tuple(v) if k == "looks" else v for k, v in plan["design"].items()})
    rows = pd.read_csv(folder / "atlas.csv")
    first = rows["edit"].map(first_look_damage(folder))
    cols = ["weight", f"{embedding}_abs_cos", f"{embedding}_p_adj", "singular_value", "energy", "significant"]
    out = []
    for damage in (rows["damage"], first):
        table = Table({**{c: rows[c].to_numpy() for c in cols}, "damage": damage.to_numpy(float)})
        # `significant` stays the sequential test's decision: only the ruler of the rank measures changes.
        atlas = SimpleNamespace(rows=table, embeddings=(embedding,),
                                settings=SimpleNamespace(alpha=plan["design"]["alpha"]),
                                alignment_alpha=0.05, design=design)  # the alignment's default level, as reported
        out.append(claim(atlas, embedding))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--embedding", default="action_out")
    args = ap.parse_args()
    for folder in args.folders:
        print(f"{folder}:")
        for ruler, c in zip(("at the stopping look", "on the first look's pairs"), claims(folder, args.embedding)):
            print(f"  {ruler}: {c.outcome.upper()}; {c.rho.describe('rho')}, {c.within.describe('within bins')}, "
                  f"{c.partial_size.describe('partial (S fixed)')}; aligned & damaging {c.table.aligned_damaging}, "
                  f"{c.table_within_size.expected:.1f} by size alone (stratified exact p {c.table_within_size.p:.2g})")
            for w, sub in c.per_weight.items():
                print(f"    {w}: {sub.rho.describe('rho')}")


if __name__ == "__main__":
    main()
