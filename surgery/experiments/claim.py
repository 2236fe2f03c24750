"""The study's claim on a whole atlas: does alignment with an embedding predict damage, beyond the vector's size?

Damage is each edit's mean return drop against the shared baseline; alignment its best |cos| with
the embedding set (the atlas's alignment columns). Size is the confound to beat: large singular
triples carry more of a weight, and in the shipped models the most aligned vectors are also among
the largest. Criteria (alpha is the atlas's):
  1. damage rises with alignment: Spearman's rho of |cos| against damage over all edits has its
     (bootstrap) confidence interval, at confidence 1 - alpha, above 0;
  2. beyond size: both size-adjusted measures have their intervals above 0: the pooled rho within
     bins of singular value (about `per_bin` vectors of one weight type each, so only vectors of about
     the same size are compared) and the partial rho holding the singular value fixed. Either alone
     can be fooled: coarse bins leave size differences inside each bin, and the partial rho assumes
     a roughly linear relation between the ranks; tests/test_atlas.py plants both cases.
  3. aligned vectors are the damaging ones: among vectors aligned beyond chance (alignment p_adj
     below the alignment's alpha), significantly damaging edits are over-represented (Fisher's
     exact test, one-sided p < alpha).
supported: 1, 2 and 3. partly supported: 2 and one of 1, 3. explained by size: 1 or 3 without 2.
not supported: neither 1 nor 3. not testable: no edit lowers the return significantly. too few
episodes: the same, when with the atlas's episodes no edit could have (`Design.reachable`).
Also reported, not criteria: rho per weight type, partial rho holding the singular value (and
the energy share) fixed, the size-damage rho itself, precision and recall of "aligned" as a
predictor of "significantly damaging".
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps

from surgery.errors import SurgeryError
from surgery.experiments.correlation import Correlation, partial_spearman, spearman

RESAMPLES = 1999  # bootstrap resamples per rho: each is a Python-level spearmanr, thousands of points


@dataclass(frozen=True)
class Stratum:
    """One bin of singular values within one weight type."""

    weight: str
    low: float
    high: float
    """Singular values in [low, high]."""
    n: int
    rho: float
    """Spearman rho of |cos| against damage in the bin (nan if undefined)."""


@dataclass(frozen=True)
class Table2x2:
    """Aligned beyond chance x significantly damaging, with Fisher's exact test."""

    aligned_damaging: int
    aligned_harmless: int
    unaligned_damaging: int
    unaligned_harmless: int
    odds_ratio: float
    p_fisher: float
    """One-sided: damaging edits are over-represented among the aligned."""

    @property
    def precision(self) -> float:
        """P(significantly damaging | aligned beyond chance)."""
        n = self.aligned_damaging + self.aligned_harmless
        return self.aligned_damaging / n if n else float("nan")

    @property
    def recall(self) -> float:
        """P(aligned beyond chance | significantly damaging)."""
        n = self.aligned_damaging + self.unaligned_damaging
        return self.aligned_damaging / n if n else float("nan")

    @property
    def base_rate(self) -> float:
        """P(significantly damaging) over all edits: what precision must beat."""
        n = self.aligned_damaging + self.aligned_harmless + self.unaligned_damaging + self.unaligned_harmless
        return (self.aligned_damaging + self.unaligned_damaging) / n if n else float("nan")


@dataclass(frozen=True)
class SizeMatchedTable:
    """Aligned-and-damaging edits against what size alone gives, within bins of singular value."""

    observed: int
    expected: float
    """Expected count if, within each bin, damaging edits were indifferent to alignment."""
    p: float
    """One-sided exact p (stratified Fisher): P(count >= observed)."""


@dataclass(frozen=True)
class Claim:
    """Alignment against damage over every edit of an atlas (or one weight type's edits)."""

    embedding: str
    weights: tuple
    n: int
    rho: Correlation
    """|cos| against damage (bootstrap interval)."""
    size: Correlation
    """Singular value against damage (bootstrap interval): what size alone explains."""
    partial_size: Correlation
    """|cos| against damage with the singular value held fixed (partial Spearman)."""
    partial_energy: Correlation
    """|cos| against damage with the energy share held fixed."""
    within: Correlation
    """Pooled within-bin rho (Fisher z, weighted by n - 3, over the strata)."""
    strata: tuple
    table: Table2x2
    outcome: str
    """"supported", "partly supported", "explained by size", "not supported", "not testable" or "too few episodes"."""
    sentence: str
    criteria: dict
    """Criterion -> {"holds": bool, "detail": str}."""
    table_within_size: SizeMatchedTable | None = None
    """The 2x2 table within bins of singular value (stratified exact test): reported, not a criterion."""
    first_look: Correlation | None = None
    """|cos| against the damage on the first look's pairs, which every edit played (a check of `rho`, not a
    criterion: `damage` is measured at each edit's stopping look, where the sequential design chose the edits
    that go on, and a catastrophe in a later baseline episode reaches only the edits still open)."""
    per_weight: dict = field(default_factory=dict)
    """Weight type -> its own Claim (when the atlas has several)."""


def claim(atlas, embedding: str = "action_out", per_bin: int = 20, seed: int = 0, weights=None) -> Claim:
    """Test the claim on `atlas`'s rows (all weight types, and each on its own)."""
    if embedding not in atlas.embeddings:
        raise SurgeryError(f"embedding {embedding!r} has no alignment columns in this atlas; it has: "
                           f"{', '.join(atlas.embeddings)}")
    if isinstance(per_bin, bool) or not isinstance(per_bin, int) or per_bin < 4:
        raise SurgeryError(f"per_bin={per_bin!r} must be an integer of at least 4 (vectors per bin of singular value)")
    rows = atlas.rows
    mask = np.ones(len(rows), bool) if weights is None else np.isin(rows["weight"], list(weights))
    r = rows.take(mask)
    alpha = atlas.settings.alpha
    cos = np.asarray(r[f"{embedding}_abs_cos"], float)
    damage = np.asarray(r["damage"], float)
    first = np.asarray(r["damage_first_look"], float) if "damage_first_look" in r.columns else None
    sv = np.asarray(r["singular_value"], float)
    energy = np.asarray(r["energy"], float)
    ok = np.isfinite(cos) & np.isfinite(damage)
    cos, damage, sv, energy, weight = cos[ok], damage[ok], sv[ok], energy[ok], np.asarray(r["weight"])[ok]
    first = None if first is None else first[ok]
    aligned = np.asarray(r[f"{embedding}_p_adj"], float)[ok] < atlas.alignment_alpha
    damaging = (np.asarray(r["significant"], bool) & (np.asarray(r["damage"], float) > 0))[ok]
    # Every criterion at the atlas's level: intervals at 1 - alpha, Fisher's test at alpha.
    boot = dict(method="bootstrap", n_resamples=RESAMPLES, seed=seed, confidence=1 - alpha)
    rho, size = spearman(cos, damage, **boot), spearman(sv, damage, **boot)
    strata, within = _within_bins(cos, damage, sv, weight, per_bin, 1 - alpha)
    table = _table(aligned, damaging)
    matched = _table_within_bins(aligned, damaging, sv, weight, per_bin)
    kinds = tuple(dict.fromkeys(weight.tolist()))
    first_look = None if first is None else spearman(cos, first, **boot)
    out = _judge(embedding, kinds, len(cos), rho, size, partial_spearman(cos, damage, sv, 1 - alpha),
                 partial_spearman(cos, damage, energy, 1 - alpha), within, tuple(strata), table, alpha, damaging.any(),
                 atlas.design, first_look, matched, getattr(atlas.settings, "pool", 0))
    if weights is None and len(kinds) > 1:
        per = {w: claim(atlas, embedding, per_bin, seed, weights=(w,)) for w in kinds}
        out = Claim(**{**out.__dict__, "per_weight": per})
    return out


def _bins(sv, weight, per_bin: int):
    """(weight type, indices) of bins of about `per_bin` consecutive singular values within each weight type."""
    for w in dict.fromkeys(weight.tolist()):
        mine = np.flatnonzero(weight == w)
        order = mine[np.argsort(sv[mine], kind="stable")]
        for part in np.array_split(order, max(1, order.size // per_bin)):
            if part.size:
                yield w, part


def _table_within_bins(aligned, damaging, sv, weight, per_bin: int) -> SizeMatchedTable:
    """The 2x2 table's aligned-and-damaging count against what size alone gives: its exact distribution when,
    within each bin of singular value, the damaging edits fall on vectors regardless of alignment (a sum over
    bins of independent hypergeometric counts, margins fixed: the stratified version of Fisher's test)."""
    dist, observed = np.array([1.0]), 0
    for _, part in _bins(sv, weight, per_bin):
        a, d = aligned[part], damaging[part]
        n, n_al, n_dmg = int(part.size), int(a.sum()), int(d.sum())
        lo, hi = max(0, n_al + n_dmg - n), min(n_al, n_dmg)
        pmf = np.zeros(hi + 1)
        pmf[lo:] = sps.hypergeom.pmf(np.arange(lo, hi + 1), n, n_dmg, n_al)
        dist, observed = np.convolve(dist, pmf), observed + int((a & d).sum())
    expected = float(np.dot(np.arange(dist.size), dist))
    return SizeMatchedTable(observed, expected, float(min(1.0, dist[observed:].sum())))


def _within_bins(cos, damage, sv, weight, per_bin: int, confidence: float = 0.95):
    """Spearman rho within bins of about `per_bin` consecutive singular values per weight type, pooled by Fisher's z."""
    strata, zs, ws = [], [], []
    for w, part in _bins(sv, weight, per_bin):
        c = spearman(cos[part], damage[part], n_resamples=99)  # the point value only; the pool has the CI
        strata.append(Stratum(w, float(sv[part].min()), float(sv[part].max()), int(part.size), c.rho))
        if part.size > 3 and not math.isnan(c.rho):
            zs.append(math.atanh(max(min(c.rho, 1 - 1e-12), -1 + 1e-12)))
            ws.append(part.size - 3)
    n = int(sum(s.n for s in strata))
    if not ws:
        return strata, Correlation(float("nan"), float("nan"), float("nan"), float("nan"), n, "within-bin fisher-z")
    z = float(np.dot(zs, ws) / np.sum(ws))
    se = math.sqrt(1.06 / np.sum(ws))  # each bin's atanh(rho) has variance 1.06 / (n - 3) (Fieller et al.)
    half = float(sps.norm.isf((1 - confidence) / 2)) * se
    p = float(2 * sps.norm.sf(abs(z) / se))
    return strata, Correlation(math.tanh(z), math.tanh(z - half), math.tanh(z + half), p, n, "within-bin fisher-z",
                               confidence)


def _table(aligned, damaging) -> Table2x2:
    a, b = int(np.sum(aligned & damaging)), int(np.sum(aligned & ~damaging))
    c, d = int(np.sum(~aligned & damaging)), int(np.sum(~aligned & ~damaging))
    res = sps.fisher_exact([[a, b], [c, d]], alternative="greater")
    return Table2x2(a, b, c, d, float(res.statistic), float(res.pvalue))


def _above(c: Correlation) -> bool:
    return not math.isnan(c.low) and c.low > 0


def _judge(embedding, weights, n, rho, size, partial_size, partial_energy, within, strata, table, alpha,
           any_damage, design, first_look=None, matched=None, pool: int = 0) -> Claim:
    c1, c2 = _above(rho), _above(within) and _above(partial_size)
    testable_2x2 = table.aligned_damaging + table.aligned_harmless > 0
    c3 = testable_2x2 and table.p_fisher < alpha
    t = table
    criteria = {
        "damage rises with alignment": {"holds": c1, "detail": f"{rho.describe()} over {rho.n} edits" + (
            "" if first_look is None else f"; on the first look's {design.looks[0]} episodes, which every edit played: "
            f"{first_look.describe()}")},
        "beyond size": {"holds": c2, "detail": f"within {len(strata)} bins of singular value: "
                        f"{within.describe('pooled rho')}; holding the singular value fixed: "
                        f"{partial_size.describe('partial rho')}; size alone: {size.describe('rho(S, damage)')}"},
        "aligned vectors are the damaging ones": {
            "holds": c3, "detail": "no vector is aligned beyond chance" if not testable_2x2 else
            f"{t.aligned_damaging} of {t.aligned_damaging + t.aligned_harmless} aligned vectors are significantly "
            f"damaging (precision {t.precision:.2f} against a base rate of {t.base_rate:.2f}; recall "
            f"{t.recall:.2f}); Fisher's exact p = {t.p_fisher:.2g} (one-sided)" + (
                "" if matched is None else f"; within bins of singular value {matched.observed} against "
                f"{matched.expected:.1f} that size alone gives, stratified exact p = {matched.p:.2g}")},
    }
    unreachable = not design.reachable(pool)
    if not any_damage:
        outcome = "too few episodes" if unreachable else "not testable"
    elif c1 and c2 and c3:
        outcome = "supported"
    elif c2 and (c1 or c3):
        outcome = "partly supported"
    elif c1 or c3:
        outcome = "explained by size"
    else:
        outcome = "not supported"
    which = "/".join(weights)
    n_aligned, n_unaligned = t.aligned_damaging + t.aligned_harmless, t.unaligned_damaging + t.unaligned_harmless
    sentence = (f"{which}, {n} edits: |cos| with {embedding} vs damage {rho.describe('rho')}; within bins of "
                f"singular value {within.describe('rho')}; {t.aligned_damaging}/{n_aligned} aligned and "
                f"{t.unaligned_damaging}/{n_unaligned} unaligned vectors significantly damaging: {outcome.upper()}")
    if outcome == "not testable":
        sentence += " (no edit lowers the return significantly: there is no damage to predict)"
    elif outcome == "too few episodes":
        sentence += (f" (no edit could be significant: with {design.looks[-1]} episodes per edit the smallest p is "
                     "above the last look's bound; " + (f"the pool of {pool} is too small)" if pool else
                                                        f"at least {design.pairs_needed()} episodes are needed)"))
    return Claim(embedding, tuple(weights), n, rho, size, partial_size, partial_energy, within, strata, table, outcome,
                 sentence, criteria, matched, first_look)
