"""Rejudge an atlas against a pool of the unedited model's episodes on fresh seeds, unpaired.

    python -m surgery evaluate halfcheetah --episodes 200 --seed 1 --out runs/hc-pool-1
    python scripts/atlas_against_pool.py docs/atlas-results/halfcheetah-V-full runs/hc-pool-1 [more pools]

A pool with the atlas's own seed is not used as a pool: its first episodes are compared with the atlas's
baseline instead, which says directly whether an episode repeats (same model, seed and episode, played in
another batch).

Why: the atlas compares every edit with one shared baseline on paired seeds. Where an episode repeats
under a tiny change, pairing removes the seed's own variation. Where it does not (HalfCheetah: one float32
rounding re-rolls an episode, so the edited and the unedited episode on a seed are independent draws),
the pairing carries nothing and the 30 baseline episodes are one sample whose luck every edit is charged
(the report's placebo line). Here each edit's episodes (as many as its sequential test played) are
compared with a large pool of unedited episodes by a two-sample permutation test of the mean, unpaired:
valid whether or not episodes repeat. The sequential design's guarantee carries over: p* = min over the
looks the edit reached of p_k / w_k (weighted Bonferroni, whichever look it stopped at), then the atlas's
correction across edits. Futility stops were decided against the paired baseline; they only cost power.
Pool folders must be `surgery evaluate` runs of the unedited model under the atlas's conditions (model,
environment, episode length, target return, dtype, seeding), each seed once; anything else is refused.

Prints the pool's return and failure rate beside the atlas's baseline, the placebo (the report's: the
edits that change the weights least) against both, and which edits are significant each way.
"""
from __future__ import annotations

import argparse
import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd


def read_episodes(store: Path, sql: str) -> pd.DataFrame:
    # immutable: reading leaves no -shm/-wal files beside the store
    conn = sqlite3.connect(f"file:{store}?mode=ro&immutable=1", uri=True)
    try:
        return pd.read_sql_query(sql, conn)
    finally:
        conn.close()


def spec_of(store: Path) -> dict:
    rows = read_episodes(store, "SELECT name, value FROM experiment")
    spec = rows.loc[rows["name"] == "spec", "value"]
    if not len(spec):
        raise SystemExit(f"{store}: no experiment spec (not written by surgery evaluate or atlas)")
    return json.loads(spec.iloc[0])


# What makes two runs' episodes comparable: the same model, environment, episode length, seeding and engine.
SAME = ("weights_sha256", "env_id", "env_kwargs", "metadata", "model", "seed_scheme", "time_limit", "engine_version")


def check_pool(folder: Path, other: dict, spec: dict, settings: dict) -> None:
    """Refuse a folder that is not unedited episodes of the atlas's model under the atlas's conditions: an atlas
    (its store holds edited episodes), an edited evaluation, or another model, environment or episode length.
    A key the folder's spec lacks is a mismatch, not a pass."""
    if "experiment" in other or other.get("edits"):
        raise SystemExit(f"{folder}: not a pool of unedited episodes (its store is "
                         f"{other.get('experiment') or 'an edited evaluation'}); give folders of `surgery evaluate "
                         "MODEL --out DIR` without --edits")
    wanted = {**{k: spec.get(k) for k in SAME}, "target_return": settings["target_return"],
              "dtype": settings["dtype"]}
    for key, want in wanted.items():
        have = other.get(key)
        if key == "dtype" and have is not None:
            have = str(have).removeprefix("torch.")
        if have is None or have != want:
            raise SystemExit(f"{folder}: {key} {have!r} is not the atlas's {want!r}: its episodes are not comparable")


def pool_claim(out: pd.DataFrame, design, pool_size: int, embedding: str = "action_out", first_look=None):
    """The claim (`surgery.experiments.claim`) with damage and significance judged against the pool.
    first_look: each edit's damage against the pool over the first look's episodes (which every edit played)."""
    from types import SimpleNamespace

    from surgery.analysis.tables import Table
    from surgery.experiments.claim import claim

    cols = ["weight", f"{embedding}_abs_cos", f"{embedding}_p_adj", "singular_value", "energy"]
    table = Table({**{c: out[c].to_numpy() for c in cols}, "damage": out["damage_vs_pool"].to_numpy(float),
                   "damage_first_look": (out["damage_vs_pool"] if first_look is None else first_look).to_numpy(float),
                   "significant": out["significant_pool"].to_numpy(bool)})
    atlas = SimpleNamespace(rows=table, embeddings=(embedding,), settings=SimpleNamespace(alpha=design.alpha,
                                                                                        pool=pool_size),
                            alignment_alpha=0.05, design=design)  # the alignment's default level, as reported
    return claim(atlas, embedding)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("atlas", type=Path, help="an atlas folder (atlas.csv, plan.json, episodes.sqlite)")
    ap.add_argument("pools", type=Path, nargs="+", help="folders of `surgery evaluate --out` of the unedited model")
    ap.add_argument("--resamples", type=int, default=4000)
    ap.add_argument("--refine", type=int, default=200_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from surgery import stats
    from surgery.experiments.atlas_rows import PLACEBO_CHANGE, change_factor, placebo
    from surgery.experiments.sequential import Design

    plan = json.loads((args.atlas / "plan.json").read_text())
    design = Design(**{k: tuple(v) if k == "looks" else v for k, v in plan["design"].items()})
    looks, weights, alpha, correction = design.looks, design.weights, design.alpha, design.correction
    rows = pd.read_csv(args.atlas / "atlas.csv")
    ep = read_episodes(args.atlas / "episodes.sqlite", "SELECT edit, episode, episode_return FROM episodes")
    wide = ep.pivot(index="edit", columns="episode", values="episode_return")
    spec = spec_of(args.atlas / "episodes.sqlite")
    settings = spec["settings"] if isinstance(spec["settings"], dict) else json.loads(spec["settings"])
    if settings.get("pool"):
        raise SystemExit(f"{args.atlas}: this atlas was run with --pool {settings['pool']}: it is judged against a "
                         "pool already")
    base = wide.loc[-1].to_numpy(float)
    pools, seen = [], {}
    for folder in args.pools:
        other = spec_of(folder / "episodes.sqlite")
        check_pool(folder, other, spec, settings)
        key = (folder.resolve(), other["seed"])
        for was, (path, seed) in seen.items():
            if path == key[0] or seed == key[1]:
                raise SystemExit(f"{folder}: the same episodes as {was} (folder or seed {key[1]} given twice): a pool "
                                 "must not hold an episode twice")
        seen[folder] = key
        eps = read_episodes(folder / "episodes.sqlite", "SELECT episode, episode_return, failed FROM episodes")
        if other.get("seed") == settings["seed"]:
            # The atlas's own seeds: not independent of its episodes where episodes repeat, so no pool; but
            # the one direct answer to whether they do repeat (same model, seed, episode; another batch).
            same = eps.set_index("episode")["episode_return"].reindex(range(base.size)).to_numpy(float)
            gap = np.abs(same - base)
            print(f"{folder}: the atlas's seed {settings['seed']}: its episodes 0-{base.size - 1} against the atlas's "
                  f"baseline: median |difference| {np.nanmedian(gap):.3g}, largest {np.nanmax(gap):.4g} "
                  "(0 where an episode repeats; not used in the pool)")
            continue
        pools.append(eps)
    if not pools:
        raise SystemExit("no pool of fresh seeds: give a folder of `surgery evaluate --seed S` with S other than "
                         f"the atlas's seed {settings['seed']}")
    pool_df = pd.concat(pools)
    pool = pool_df["episode_return"].to_numpy(float)
    print(f"{args.atlas}: {len(rows)} edits; baseline {base.size} paired episodes, mean {base.mean():.1f}; "
          f"pool {pool.size} unedited episodes on fresh seeds, mean {pool.mean():.1f} "
          f"[{stats.mean_ci_t(pool).low:.1f}, {stats.mean_ci_t(pool).high:.1f}], failed "
          f"{pool_df['failed'].mean():.1%}")

    n_first = looks[0]
    first = wide.loc[rows["edit"].to_numpy(), list(range(n_first))].to_numpy(float)
    energy = rows["energy"].to_numpy(float)
    if settings["op"] == "constant":  # its change bound needs d_model, which the store does not keep
        print("placebo: see the atlas report (op constant)")
    else:
        factor = change_factor(settings["op"], settings.get("value"), d_model=1)
        paired = placebo(base[:n_first], first, energy, factor)  # the atlas report's own placebo
        pooled = placebo(pool, first, energy, factor, pooled=True)
        if paired is None:
            print(f"placebo: none (fewer than 4 edits that change their weight by at most {PLACEBO_CHANGE:.0%})")
        else:
            print(f"placebo ({paired['edits']} edits, energy share <= {paired['energy_max']:.2g}, first {n_first} "
                  f"pairs): {paired['damage']:+.1f} [{paired['low']:+.1f}, {paired['high']:+.1f}] against the paired "
                  f"baseline, {pooled['damage']:+.1f} [{pooled['low']:+.1f}, {pooled['high']:+.1f}] against the pool")

    p_star, damage = [], []
    for i, r in rows.iterrows():
        x = wide.loc[r["edit"]].dropna().to_numpy(float)
        reached = [k for k, n in enumerate(looks) if n <= x.size]
        p_star.append(min(1.0, min(stats.two_sample_p(x[: looks[k]], pool, args.resamples, args.refine,
                                                      seed=args.seed + 1000 * i + k) / weights[k] for k in reached)))
        damage.append(pool.mean() - x.mean())
    p_adj = stats.adjust_pvalues(np.array(p_star), correction)
    out = rows.assign(damage_vs_pool=damage, p_pool=p_star, p_adj_pool=p_adj, significant_pool=p_adj <= alpha)
    was, now = out["significant"].astype(bool), out["significant_pool"]
    print(f"significant ({correction}, alpha {alpha:g}): {int(was.sum())} against the paired baseline, "
          f"{int(now.sum())} against the pool; both {int((was & now).sum())}, only paired {int((was & ~now).sum())}, "
          f"only pool {int((~was & now).sum())}")
    aligned = out["action_out_p_adj"] < 0.05
    print(f"aligned with action_out beyond chance: {int(aligned.sum())}; of them significantly damaging against "
          f"the pool: {int((aligned & now & (out['damage_vs_pool'] > 0)).sum())}; unaligned: "
          f"{int((~aligned & now & (out['damage_vs_pool'] > 0)).sum())} of {int((~aligned).sum())}")
    c = pool_claim(out, design, pool.size, first_look=pool.mean() - pd.Series(first.mean(axis=1), index=out.index))
    print(f"the claim against the pool: {c.outcome.upper()}; {c.rho.describe('rho')}, "
          f"{c.within.describe('within bins')}; aligned & damaging {c.table.aligned_damaging} of "
          f"{c.table.aligned_damaging + c.table.aligned_harmless}, unaligned & damaging {c.table.unaligned_damaging}; "
          f"Fisher p {c.table.p_fisher:.2g}; {c.table_within_size.expected:.1f} aligned & damaging by size alone "
          f"(stratified exact p {c.table_within_size.p:.2g})")
    show = out[was | now].sort_values("damage_vs_pool", ascending=False)
    cols = ["block", "weight", "head", "idx", "singular_value", "action_out_abs_cos", "episodes", "damage", "p_adj",
            "damage_vs_pool", "p_adj_pool"]
    print(show[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
