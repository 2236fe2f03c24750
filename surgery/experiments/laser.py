"""LASER on our agents: does cutting a weight's rank ever *improve* the return beyond chance?

LASER (Sharma, Ash and Misra, ICLR 2024) replaces a weight by its best rank-k approximation and
reports gains, decision transformers in MuJoCo among them. Here every (block, weight type, kept
fraction) is one edit, `keep_top` with k = max(1, round(fraction x rank)) triples kept (for OV and
QK in every head at once), played as lanes of one batched rollout against one shared baseline on
the same episode seeds (`evaluate_runs`: no weights are patched).

The question is one-sided, so is the test: per cut, the paired sign-flip test of the mean return
difference (edited - baseline), one-sided for an increase (half the exact two-sided p when the mean
rose, 1 when it did not: the null distribution is symmetric), corrected across all cuts (Holm by
default). A cut "improves" when its corrected p is below alpha. Damage is reported too (the
two-sided p), but the sweep's verdict is about improvement only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from surgery import stats
from surgery.analysis.tables import Table
from surgery.checks import level
from surgery.errors import SurgeryError
from surgery.experiments.settings import LASER_FRACTIONS, LASER_WEIGHTS
from surgery.files import markdown_table
from surgery.names import CORRECTIONS

__all__ = ["laser", "LaserSweep", "cuts"]

FRACTIONS = LASER_FRACTIONS
CSV, MD, JSON = "laser.csv", "laser.md", "laser.json"


@dataclass
class LaserSweep:
    """The cuts, each one's effect against the shared baseline, and the one-sentence answer."""

    rows: Table
    """Per cut: block, weight, kept (k), rank, fraction, baseline and edited mean return, change [CI],
    p_improve (one-sided), p_adj_improve, improves, p_two_sided, failures baseline -> edited."""
    baseline: object
    """The baseline's EvalResult."""
    settings: dict
    sentence: str
    files: dict = field(default_factory=dict)

    def markdown(self) -> str:
        s = self.settings
        head = ["cut", "kept", "return change [95% CI]", "p (increase)", "p_adj", "two-sided p", "failed b → e"]
        lines = [f"# LASER rank cuts: {s['model']}", "",
                 f"{len(self.rows)} cuts ({', '.join(s['weights'])}; kept fractions "
                 f"{', '.join(f'{f:g}' for f in s['fractions'])}), {s['episodes']} paired episodes each against one "
                 f"baseline (mean return {float(self.baseline.returns.mean()):.1f}), seed {s['seed']}; one-sided "
                 f"paired sign-flip tests for an increase, {s['correction']}-corrected across the cuts at alpha "
                 f"{s['alpha']:g}.", "", f"**{self.sentence}**", ""]
        rows = []
        for r in self.rows.rows():
            rows.append([
                f"block {r['block']} {r['weight']}", f"{r['kept']}/{r['rank']} ({r['fraction']:g})",
                f"{r['change']:+.1f} [{r['change_low']:+.1f}, {r['change_high']:+.1f}]", f"{r['p_improve']:.3g}",
                f"{r['p_adj_improve']:.3g}" + (" **improves**" if r["improves"] else ""), f"{r['p_two_sided']:.3g}",
                f"{100 * r['failures_baseline']:.0f}% → {100 * r['failures_edited']:.0f}%"])
        return "\n".join(lines) + "\n" + markdown_table(head, rows) + "\n"


def cuts(adapter, weights=LASER_WEIGHTS, blocks=None, fractions=FRACTIONS) -> list[tuple[int, str, int, float]]:
    """(block, weight, k, fraction) of every cut; fractions that keep the whole rank are dropped."""
    bad = [w for w in weights if w not in ("K", "V", "OV", "QK")]
    if bad or not weights:
        raise SurgeryError(f"weights={tuple(weights)!r}: valid weights are 'K', 'V', 'OV', 'QK'")
    if not fractions or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1
                            for f in fractions):
        raise SurgeryError(f"fractions={tuple(fractions)!r} must be numbers between 0 and 1 (the kept share of rank)")
    blocks = range(adapter.n_blocks) if blocks is None else blocks
    for b in blocks:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < adapter.n_blocks:
            raise SurgeryError(f"block {b!r} is out of range: this model has {adapter.n_blocks} blocks")
    out = []
    for b in blocks:
        for w in weights:
            rank = adapter.rank(w)
            for f in sorted(set(fractions)):
                k = max(1, round(f * rank))
                if k < rank and (b, w, k) not in {(c[0], c[1], c[2]) for c in out}:
                    out.append((b, w, k, float(f)))
    if not out:
        raise SurgeryError(f"no cuts: every fraction in {tuple(fractions)!r} keeps the whole rank of these weights")
    return out


def laser(model, *, weights=LASER_WEIGHTS, blocks=None, fractions=FRACTIONS, episodes: int = 30, seed: int = 0,
          target_return: float | None = None, max_steps: int | None = None, alpha: float = 0.05,
          correction: str = "holm", out: str | Path | None = None, progress: bool = True, source=None) -> LaserSweep:
    """Cut each (block, weight) to each kept fraction of its rank; test each cut for an increase of the return.

    out: a directory; every episode is stored as it ends (one store per cut, one baseline), so rerunning
    the same call resumes; laser.csv, laser.md and laser.json are written at the end.
    """
    from surgery.behaviour.evaluation import Run, evaluate_runs
    from surgery.core.patching import Edit
    from surgery.experiments.output import adapter_with_metadata, model_identity

    if correction not in CORRECTIONS:
        raise SurgeryError(f"correction={correction!r} is not known; valid: {', '.join(map(repr, CORRECTIONS))}")
    level(alpha)
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2:
        raise SurgeryError(f"episodes must be an integer of at least 2, got {episodes!r}")
    adapter = adapter_with_metadata(model, "laser")
    plan = cuts(adapter, tuple(weights), blocks, tuple(fractions))
    out = None if out is None else Path(out)
    heads = range(adapter.n_heads)
    runs = [Run(out=None if out is None else out / "baseline")]
    for b, w, k, _ in plan:
        edits = [Edit(b, w, 0, head=h, op="keep_top", value=k) for h in heads] if w in ("OV", "QK") else \
            [Edit(b, w, 0, op="keep_top", value=k)]
        runs.append(Run(edits, None if out is None else out / "cuts" / f"b{b}-{w}-keep{k}",
                        {"block": b, "weight": w, "keep_top": k}))
    base, *edited = evaluate_runs(adapter, runs, episodes, seed, target_return, progress=progress,
                                  max_steps=max_steps, desc=f"laser: baseline + {len(plan)} rank cuts")
    rows = _rows(adapter, plan, base, edited, correction, alpha)
    n_up = int(rows["improves"].sum()) if len(rows) else 0
    settings = {"model": model_identity(adapter, source)["model"], "weights": list(weights),
                "blocks": None if blocks is None else list(blocks), "fractions": [float(f) for f in fractions],
                "episodes": episodes, "seed": seed, "target_return": base.target_return, "max_steps": max_steps,
                "alpha": alpha, "correction": correction}
    rows_improving = rows.take(np.asarray(rows["improves"], bool))
    # One-sided (does the cut *raise* the return): the smallest p is 2^-n, half the two-sided one.
    too_few = stats.too_few_pairs(episodes, alpha, len(plan), correction, sides=1)
    best = rows.row(int(np.argmax(rows["change"]))) if len(rows) else None
    if too_few and n_up == 0:
        sentence = f"{too_few}: no cut could have been shown to improve the return"
    elif n_up == 0:
        sentence = (f"no rank cut raises the return beyond chance: 0 of {len(plan)} (the largest mean change, "
                    f"block {best['block']} {best['weight']} kept {best['kept']}/{best['rank']}: "
                    f"{best['change']:+.1f} [{best['change_low']:+.1f}, {best['change_high']:+.1f}], p_adj "
                    f"{best['p_adj_improve']:.2g})")
    else:
        names = ", ".join(f"block {r['block']} {r['weight']} kept {r['kept']}/{r['rank']} ({r['change']:+.1f})"
                          for r in rows_improving.rows())
        sentence = f"{n_up} of {len(plan)} rank cuts raise the return beyond chance: {names}"
    result = LaserSweep(rows, base, settings, sentence)
    if out is not None:
        _write(result, out)
    return result


def _rows(adapter, plan, base, edited, correction: str, alpha: float) -> Table:
    b_ret, b_fail = base.returns, base.failed
    cols = {k: [] for k in ("block", "weight", "kept", "rank", "fraction", "baseline_return", "edited_return",
                            "change", "change_low", "change_high", "p_improve", "p_two_sided", "failures_baseline",
                            "failures_edited")}
    for (b, w, k, f), res in zip(plan, edited):
        d = res.returns - b_ret
        ci = stats.mean_ci(d)
        p2 = stats.sign_flip_p(d)
        for name, value in (("block", b), ("weight", w), ("kept", k), ("rank", adapter.rank(w)), ("fraction", f),
                            ("baseline_return", float(b_ret.mean())), ("edited_return", float(res.returns.mean())),
                            ("change", ci.value), ("change_low", ci.low), ("change_high", ci.high),
                            # One-sided for an increase: half the two-sided p when the mean rose (symmetric null).
                            ("p_improve", p2 / 2 if d.mean() > 0 else 1.0), ("p_two_sided", p2),
                            ("failures_baseline", float(b_fail.mean())), ("failures_edited", float(res.failed.mean()))):
            cols[name].append(value)
    p_adj = stats.adjust_pvalues(np.asarray(cols["p_improve"], float), correction)
    return Table({**{k: np.asarray(v, dtype=object if k == "weight" else None) for k, v in cols.items()},
                  "p_adj_improve": p_adj, "improves": p_adj < alpha})


def _write(result: LaserSweep, out: Path) -> None:
    from surgery.files import to_json, write_atomic

    result.files["csv"] = write_atomic(out / CSV, result.rows.to_csv())
    result.files["md"] = write_atomic(out / MD, result.markdown())
    result.files["json"] = write_atomic(out / JSON, to_json({"settings": result.settings, "sentence": result.sentence,
                                                              "rows": result.rows.rows()}))
