"""The plain answer of `validate`: does damage follow alignment on this model?

Three criteria, the first two on per-edit paired permutation tests of the mean return difference,
corrected across all edits (level alpha):
  1. aligned edits hurt: at least half of them lower the mean return significantly;
  2. controls do not: fewer than half of the controls lower the mean return significantly
     (the study's words: "similar edits to other parts do not cause this failure");
  3. damage rises with alignment: Spearman's rho over all edited vectors has its CI above 0.
supported: all three. partly supported: 1 and one of 2, 3. not supported: otherwise.
not testable: no chosen vector is aligned beyond chance, so there is no "aligned" edit to test.
too few episodes: so few that no edit could be significant after the correction (with 5 pairs the
smallest p is 0.0625; `stats.too_few_pairs` says how many are needed): no verdict either way.
Also reported, not a criterion: a one-sided Mann-Whitney U test of aligned against control
damages, over edits (with 2 aligned and 4 controls its smallest possible p is 1/15).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from surgery import stats
from surgery.experiments.correlation import greater


@dataclass(frozen=True)
class GroupDamage:
    """Damage (mean return drop) of one group of edits, averaged over its edits."""

    group: str
    n: int
    mean: stats.Estimate | None
    """Mean over the group's edits of each edit's mean return drop, with a bootstrap CI over edits."""
    n_significant: int
    """Edits whose return drop is significant after the correction across edits."""
    mean_failure_increase: float | None
    n_fail_more: int = 0
    """Edits that fail significantly more often (McNemar, corrected across edits)."""


@dataclass(frozen=True)
class Verdict:
    outcome: str
    """"supported", "partly supported", "not supported", "not testable" or "too few episodes"."""
    sentence: str
    """One line: aligned damage, control damage, rho, and the outcome."""
    criteria: dict
    """Criterion -> {"holds": bool, "detail": str}."""
    groups: dict
    """"aligned", "controls" (both kinds), "control_same", "control_other" -> GroupDamage."""
    p_aligned_vs_controls: float


def group_damage(name: str, outcomes, alpha: float) -> GroupDamage:
    if not outcomes:
        return GroupDamage(name, 0, None, 0, None)
    d = [o.damage.value for o in outcomes]
    sig = sum(1 for o in outcomes if o.p_adj < alpha and o.damage.value > 0)
    fail = sum(1 for o in outcomes if getattr(o, "p_adj_failures", 1.0) < alpha and o.failure_increase > 0)
    inc = sum(o.failure_increase for o in outcomes) / len(outcomes)
    return GroupDamage(name, len(outcomes), stats.mean_ci(d), sig, inc, fail)


def judge(v) -> Verdict:
    """Apply the three criteria to a Validation."""
    alpha = v.settings.alpha
    aligned = v.group("aligned")
    controls = v.group("control_same") + v.group("control_other")
    groups = {"aligned": group_damage("aligned", aligned, alpha),
              "controls": group_damage("controls", controls, alpha),
              "control_same": group_damage("control_same", v.group("control_same"), alpha),
              "control_other": group_damage("control_other", v.group("control_other"), alpha)}
    p_groups = greater([o.damage.value for o in aligned], [o.damage.value for o in controls])
    rho = v.correlation
    a = groups["aligned"]
    k = groups["controls"]
    c1 = a.n_significant * 2 >= a.n and a.n_significant > 0
    c2 = k.n > 0 and k.n_significant * 2 < k.n
    c3 = bool(rho.low > 0) if not math.isnan(rho.low) else False
    correction = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[v.settings.correction]
    criteria = {
        "aligned edits hurt": {"holds": c1, "detail": f"{a.n_significant} of {a.n} aligned edits lower the mean "
                               f"return significantly (paired permutation tests, {correction}-corrected across "
                               f"{len(v.outcomes)} edits, alpha {alpha:g}); {a.n_fail_more} of {a.n} fail "
                               "significantly more often (McNemar)"},
        "controls do not hurt": {"holds": c2, "detail": "no controls were edited" if not controls else
                                 f"{k.n_significant} of {k.n} control edits lower the mean return significantly; "
                                 f"{k.n_fail_more} of {k.n} fail significantly more often (aligned > control "
                                 f"damage, one-sided Mann-Whitney over edits: p = {p_groups:.2g})"},
        "damage rises with alignment": {"holds": c3, "detail": f"{rho.describe()} over {rho.n} edited vectors"},
    }
    n_aligned_sig = sum(o.target.significant for o in aligned)
    too_few = stats.too_few_pairs(v.settings.episodes, alpha, len(v.outcomes), v.settings.correction)
    if n_aligned_sig == 0:
        outcome = "not testable"
    elif too_few:
        outcome = "too few episodes"
    elif c1 and c2 and c3:
        outcome = "supported"
    elif c1 and (c2 or c3):
        outcome = "partly supported"
    else:
        outcome = "not supported"
    sentence = (f"aligned edits: mean damage {_est(a.mean)} ({a.n_significant}/{a.n} significant); "
                f"controls: {_est(k.mean)} ({k.n_significant}/{k.n}); "
                f"{rho.describe('Spearman rho =')}, p = {rho.p:.2g}: {outcome.upper()}")
    if outcome == "too few episodes":
        sentence += f" ({too_few}: no edit could have been significant)"
    if outcome == "not testable":
        best = min(o.target.p_adj for o in aligned)
        sentence += (f" (no singular vector is aligned with {v.settings.embedding} beyond chance on this model; "
                     f"the best has p_adj {best:.2g})")
    return Verdict(outcome, sentence, criteria, groups, p_groups)


def _est(e) -> str:
    if e is None:
        return "n/a"
    return f"{e.value:.1f} [{e.low:.1f}, {e.high:.1f}]"
