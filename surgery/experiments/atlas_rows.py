"""An atlas's rows: each edit's size and alignment, and its effect measured on the pairs it used."""
from __future__ import annotations

import dataclasses

import numpy as np

from surgery import stats
from surgery.analysis.tables import Table
from surgery.names import RESIDUAL_SIDES


def alignment_columns(align, edits, op: str) -> tuple[dict, tuple]:
    """Per embedding set: each edit's best |cos|, its label, side, z and p_adj, from one `alignment` result;
    per edit: whether the triple is identifiable (not in a tied group) and near-null (below the noise floor).

    A zero or scale edit changes the whole triple, so where both sides face the residual stream (OV,
    QK) the side with the smaller p_adj (then the larger |cos|) speaks for it; a constant edit
    replaces one side's vector, so that side's alignment is the one recorded.
    """
    v = align.vectors
    key = {}
    for i, (emb, b, w, h, side, idx) in enumerate(zip(v["embedding"], v["block"], v["weight"], v["head"], v["side"],
                                                       v["idx"])):
        key[(emb, int(b), w, int(h), side, int(idx))] = i
    sets = tuple(align.settings.embeddings)
    cols = {}
    for emb in sets:
        abs_cos, cos, label, side_col, z, p_adj = [], [], [], [], [], []
        for e in edits:
            sides = (e.side,) if op == "constant" else RESIDUAL_SIDES[e.weight]
            head = -1 if e.head is None else e.head
            found = [key[k] for k in ((emb, e.block, e.weight, head, sd, e.idx) for sd in sides) if k in key]
            if not found:
                abs_cos.append(np.nan), cos.append(np.nan), label.append(""), side_col.append(""), z.append(np.nan)
                p_adj.append(np.nan)
                continue
            i = min(found, key=lambda r: (v["p_adj"][r], -v["abs_cos"][r]))
            abs_cos.append(v["abs_cos"][i]), cos.append(v["cos"][i]), label.append(str(v["label"][i]))
            side_col.append(v["side"][i]), z.append(v["z"][i]), p_adj.append(v["p_adj"][i])
        cols.update({f"{emb}_abs_cos": np.array(abs_cos, float), f"{emb}_cos": np.array(cos, float),
                     f"{emb}_label": np.array(label, dtype=object), f"{emb}_side": np.array(side_col, dtype=object),
                     f"{emb}_z": np.array(z, float), f"{emb}_p_adj": np.array(p_adj, float)})
    # Properties of the triple, not of an embedding (one spectrum): whether its vector is identifiable one
    # by one (not inside a tied group: its per-vector alignment would be rotation-unstable), and near-null.
    first = sets[0] if sets else None
    ident, null = [], []
    for e in edits:
        k = (first, e.block, e.weight, -1 if e.head is None else e.head, RESIDUAL_SIDES[e.weight][0], e.idx)
        i = key.get(k)
        ident.append(bool(v["identifiable"][i]) if i is not None else True)
        null.append(bool(v["near_null"][i]) if i is not None else False)
    cols.update({"identifiable": np.array(ident, bool), "near_null": np.array(null, bool)})
    return cols, sets


def sizes(adapter, edits) -> tuple[np.ndarray, np.ndarray]:
    """Each edited triple's singular value and energy share S_i^2 / sum S^2 of its weight (its head for OV, QK)."""
    from surgery.core.decomposition import decompose

    cache, sv, energy = {}, [], []
    for e in edits:
        if (e.block, e.weight) not in cache:
            cache[(e.block, e.weight)] = decompose(adapter, e.block, e.weight).S.double().numpy()
        S = cache[(e.block, e.weight)]
        S = S[e.head] if e.weight in ("OV", "QK") else S
        sv.append(S[e.idx]), energy.append(S[e.idx] ** 2 / np.sum(S ** 2))
    return np.array(sv), np.array(energy)


PLACEBO_CHANGE = 0.1
"""Largest change of a placebo edit: ||edited - W|| / ||W|| at most 10% (zeroing a triple: energy share <= 0.01)."""


def change_factor(op: str, value: float | None, d_model: int) -> float:
    """||W_edited - W|| / S_i for one edited triple: the edit is S_i (u' - u) v^T with u the residual-facing
    vector. zero: u' = 0, so 1; scale: u' = value u, so |value - 1|; constant: u' = value * ones, at most
    1 + |value| sqrt(d_model) (a bound: the placebo must not take in an edit that changes more than it says)."""
    if op == "zero":
        return 1.0
    if op == "scale":
        return abs(float(value) - 1.0)
    return 1.0 + abs(float(value)) * float(np.sqrt(d_model))


def placebo(reference: np.ndarray, edited: np.ndarray, energy: np.ndarray, factor: float = 1.0,
            pooled: bool = False) -> dict | None:
    """What an edit that changes almost nothing does: of the quarter of edits that change their weight least,
    those changing it by at most PLACEBO_CHANGE of its norm (factor * sqrt(energy share), `change_factor`), their
    mean return drop over the first look's episodes, with a 95% interval.

    reference: paired, the baseline's returns over the first look's pairs (interval: Student's t over the
    pairs); pooled, the pool's returns (interval: Welch's, so that the pool mean's own error is in it).
    edited: [edits, episodes] returns over the first look; energy: per edit.
    Near zero where a paired episode repeats under a tiny change. Where it does not (chaotic dynamics: one
    float32 rounding re-rolls a HalfCheetah episode), every edit is an independent draw and the shared
    baseline's own luck is charged to all of them: this level is what damage is to be read against.
    None with fewer than 4 such edits (an atlas of a few large triples, or of edits that are all large, has none).
    """
    change = factor * np.sqrt(energy)
    quarter = np.argsort(change, kind="stable")[: len(change) // 4]
    small = quarter[change[quarter] <= PLACEBO_CHANGE]
    if small.size < 4:
        return None
    per_episode = edited[small].mean(axis=0)
    drop = stats.welch_ci(reference, per_episode) if pooled else stats.mean_ci_t(reference - per_episode)
    return {"edits": int(small.size), "energy_max": float(energy[small].max()), "pairs": int(edited.shape[1]),
            "damage": drop.value, "low": drop.low, "high": drop.high}


def placebo_warning(p: dict | None, pooled: bool = False) -> list[str]:
    if p is None or p["low"] <= 0 <= p["high"]:
        return []
    if pooled:
        return [f"the {p['edits']} edits that change the weights least (energy share <= {p['energy_max']:.2g}) move "
                f"the return by {p['damage']:+.0f} [{p['low']:+.0f}, {p['high']:+.0f}] against the pool over the "
                f"first look's {p['pairs']} episodes: even the smallest edits change behaviour, or the pool is not "
                "typical of the model's episodes (docs/atlas.md#placebo)"]
    return [f"the {p['edits']} edits that change the weights least (energy share <= {p['energy_max']:.2g}) move the "
            f"return by {p['damage']:+.0f} [{p['low']:+.0f}, {p['high']:+.0f}] over the first look's {p['pairs']} "
            "pairs: a paired episode does not repeat under a change this small, so the shared baseline's own draw "
            "is charged to every edit; damage of this size is no evidence of a vector's role (docs/atlas.md#placebo)"]


def build(sweep, seq, done: dict, align, steps: dict) -> dict:
    """The fields of the Atlas of a finished sweep (atlas.py makes the Atlas: this module does not import it)."""
    from surgery.behaviour.evaluation import EpisodeRecord, EvalResult
    from surgery.experiments.output import model_identity

    d, s, edits = sweep.design, sweep.s, sweep.edits
    N = d.looks[-1]
    baseline = [done[(-1, j)] for j in range(N) if (-1, j) in done]
    b_ret = np.array([r.episode_return for r in baseline])
    b_fail = np.array([r.failed for r in baseline])
    # Pooled (s.pool > 0): every edit against the unedited episodes [N, N + pool), unpaired.
    pool = [done[(-1, j)] for j in range(N, N + s.pool)]
    r_ret, r_fail = np.array([r.episode_return for r in pool]), np.array([r.failed for r in pool])
    p_star = seq.p_final()
    # Every edit played the first look's pairs, before any stopping chose among them: damage measured there is
    # comparable across edits (a baseline catastrophe shifts all alike), unlike `damage` at the stopping look.
    n_first = d.looks[0]
    cols = {k: [] for k in ("episodes", "looks", "stopped", "baseline_return", "edited_return", "damage",
                            "damage_low", "damage_high", "damage_first_look", "failures_baseline", "failures_edited",
                            "p_failures", "env_steps")}
    for e, track in enumerate(seq.tracks):
        n = d.looks[track.looks - 1]
        mine = [done[(e, j)] for j in range(n)]
        x = np.array([r.episode_return for r in mine])
        f = np.array([r.failed for r in mine])
        # Confidence 1 - alpha w_k at look k: over all looks together 1 - alpha (weighted Bonferroni), so the
        # interval holds at whichever look the edit stopped. Student's t, not the bootstrap: at 6 pairs and
        # 99.8% the bootstrap's interval cannot reach its level (stats.mean_ci_t).
        level = 1 - d.alpha * d.weights[track.looks - 1]
        if pool:
            drop = stats.welch_ci(r_ret, x, confidence=level)
            p_fail = d.p_final([stats.unpaired_failures_p(r_fail, f[:m]) for m in d.looks[:track.looks]])
            ref_ret, ref_first, ref_fail = float(r_ret.mean()), float(r_ret.mean()), float(r_fail.mean())
        else:
            drop = stats.mean_ci_t(b_ret[:n] - x, confidence=level)
            p_fail = d.p_final([stats.paired_failures(b_fail[:m], f[:m]).p_mcnemar for m in d.looks[:track.looks]])
            ref_ret, ref_first = float(b_ret[:n].mean()), float(b_ret[:n_first].mean())
            ref_fail = float(b_fail[:n].mean())
        for name, value in (("episodes", n), ("looks", track.looks), ("stopped", track.stopped),
                            ("baseline_return", ref_ret), ("edited_return", float(x.mean())),
                            ("damage", drop.value), ("damage_low", drop.low), ("damage_high", drop.high),
                            ("damage_first_look", ref_first - float(np.mean(x[:n_first]))),
                            ("failures_baseline", ref_fail), ("failures_edited", float(f.mean())),
                            ("p_failures", p_fail), ("env_steps", int(sum(r.length for r in mine)))):
            cols[name].append(value)
    p_adj = stats.adjust_pvalues(p_star, s.correction)
    p_adj_fail = stats.adjust_pvalues(np.array(cols["p_failures"]), s.correction)
    sv, energy = sizes(sweep.adapter, edits)
    edited_first = np.array([[done[(e, j)].episode_return for j in range(n_first)] for e in range(len(edits))])
    control = placebo(r_ret if pool else b_ret[:n_first], edited_first, energy,
                      change_factor(s.op, s.value, sweep.adapter.d_model), pooled=bool(pool))
    align_cols, sets = alignment_columns(align, edits, s.op)
    rows = Table({
        "edit": np.arange(len(edits)),
        "block": np.array([e.block for e in edits]),
        "weight": np.array([e.weight for e in edits], dtype=object),
        "head": np.array([-1 if e.head is None else e.head for e in edits]),
        "idx": np.array([e.idx for e in edits]),
        "side": np.array([e.side if s.op == "constant" else ",".join(RESIDUAL_SIDES[e.weight]) for e in edits],
                         dtype=object),
        "singular_value": sv, "energy": energy,
        **align_cols,
        "episodes": np.array(cols["episodes"]), "looks": np.array(cols["looks"]),
        "stopped": np.array(cols["stopped"], dtype=object),
        "baseline_return": np.array(cols["baseline_return"]), "edited_return": np.array(cols["edited_return"]),
        "damage": np.array(cols["damage"]), "damage_low": np.array(cols["damage_low"]),
        "damage_high": np.array(cols["damage_high"]), "damage_first_look": np.array(cols["damage_first_look"]),
        "p": p_star, "p_adj": p_adj, "significant": p_adj <= s.alpha,
        "failures_baseline": np.array(cols["failures_baseline"]), "failures_edited": np.array(cols["failures_edited"]),
        "failure_change": np.array(cols["failures_edited"]) - np.array(cols["failures_baseline"]),
        "p_failures": np.array(cols["p_failures"]), "p_adj_failures": p_adj_fail,
        "env_steps": np.array(cols["env_steps"]),
    }, nullable=("head",))
    fields = [f.name for f in dataclasses.fields(EpisodeRecord)]
    base = EvalResult(records=[EpisodeRecord(**{k: getattr(r, k) for k in fields}) for r in (pool or baseline)],
                      env_id=sweep.env_id, target_return=s.target_return, seed=s.seed, dtype=s.dtype,
                      time_limit=sweep.time_limit)
    unedited = baseline + pool
    used = int(rows["episodes"].sum()) + len(unedited)
    planned = (len(edits) + (0 if pool else 1)) * N + s.pool  # pooled: the pool instead of a paired baseline
    cost = {
        "episodes": used, "episodes_fixed_design": planned,
        "env_steps": int(rows["env_steps"].sum()) + int(sum(r.length for r in unedited)),
        "env_steps_this_run": int(sum(steps.values())),
        "seconds_all_runs": float(sweep.seconds_all_runs),
        "stopped": {why: int(np.sum(rows["stopped"] == why)) for why in ("efficacy", "futility", "complete")},
        "where": sweep.runner.describe(),
    }
    return dict(model=model_identity(sweep.adapter, sweep.source, sweep.base_patch), settings=s,
                alignment_settings=align.settings, rows=rows, baseline=base, design=d, cost=cost, embeddings=sets,
                alignment_alpha=align.settings.alpha, thresholds={e: float(align.threshold(e)) for e in sets},
                warnings=list(sweep.warnings) + placebo_warning(control, bool(pool)), placebo=control)
