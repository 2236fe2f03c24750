"""Figures of behaviour: return distributions, Kaplan-Meier survival curves, damage against alignment.

Each function returns a `matplotlib.figure.Figure` built without pyplot (no GUI backend, no
global state); save it with `fig.savefig(path)` or show it in a notebook by leaving it last in a cell.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from surgery.errors import SurgeryError

GROUP_COLORS = {"aligned": "#c0392b", "control_same": "#2471a3", "control_other": "#7d8b99", "baseline": "#222222"}
GROUP_NAMES = {"aligned": "aligned with the embedding", "control_same": "control: same weight, unaligned",
               "control_other": "control: other weight, unaligned"}
_PAIR_COLORS = ("#222222", "#c0392b")


def return_distributions(results: Mapping[str, object], paired: bool = False, title: str | None = None,
                         colors: Sequence[str] | None = None) -> Figure:
    """Each run's episode returns (violin, points, mean with its CI); `paired` adds edited - baseline for two runs."""
    from surgery import stats

    names = list(results)
    if not names:
        raise SurgeryError("no results to plot")
    if paired and len(names) != 2:
        raise SurgeryError(f"paired=True needs exactly two results (baseline, edited), got {len(names)}")
    colors = list(colors or (_PAIR_COLORS if len(names) == 2 else [GROUP_COLORS["baseline"]] * len(names)))
    wide = max(6.0, 0.55 * len(names) + 2)
    fig = Figure(figsize=(wide + (4.5 if paired else 0), 4.2), layout="constrained")
    axes = fig.subplots(1, 2, width_ratios=[wide, 4.5]) if paired else [fig.subplots()]
    ax = axes[0]
    rng = np.random.default_rng(0)  # jitter only; fixed so figures are reproducible
    for i, name in enumerate(names):
        r = np.asarray(results[name].returns, dtype=float)
        color = colors[i % len(colors)]
        if r.size > 1 and np.ptp(r) > 0:
            parts = ax.violinplot(r, positions=[i], widths=0.8, showextrema=False)
            for body in parts["bodies"]:
                body.set_facecolor(color), body.set_alpha(0.25)
        ax.scatter(i + rng.uniform(-0.18, 0.18, r.size), r, s=6, color=color, alpha=0.5, linewidths=0)
        m = stats.mean_ci(r)
        ax.errorbar([i], [m.value], yerr=[[m.value - m.low], [m.high - m.value]], fmt="o", color="black",
                    capsize=4, markersize=5, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=0 if len(names) <= 3 else 60,
                  ha="center" if len(names) <= 3 else "right", fontsize=9 if len(names) <= 3 else 7)
    ax.set_ylabel("episode return")
    ax.set_title("returns per episode (mean, 95% CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if paired:
        base, edited = (results[n] for n in names)
        _differences(axes[1], base, edited)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def _differences(ax, baseline, edited) -> None:
    """Histogram of edited - baseline on the same seeds, with the mean and its CI."""
    from surgery import stats

    b = {r.seed: r.episode_return for r in baseline.records}
    d = np.array([r.episode_return - b[r.seed] for r in edited.records if r.seed in b])
    lo, hi = min(d.min(), 0.0), max(d.max(), 0.0)  # include 0 so "no change" is on the axis
    ax.hist(d, bins=min(30, max(5, d.size // 4)), range=(lo, hi) if hi > lo else None, color=_PAIR_COLORS[1],
            alpha=0.6)
    m = stats.mean_ci(d)
    ax.axvline(0, color="black", lw=0.8)
    ax.axvline(m.value, color=_PAIR_COLORS[1], lw=1.5, label=f"mean {m.value:+.1f}")
    ax.axvspan(m.low, m.high, color=_PAIR_COLORS[1], alpha=0.15, label=f"95% CI [{m.low:+.1f}, {m.high:+.1f}]")
    ax.set_xlabel("edited - baseline return (same seed)")
    ax.set_ylabel("episodes")
    ax.set_title("paired differences", fontsize=10)
    ax.legend(fontsize=8)


def survival_curves(results: Mapping[str, object], title: str | None = None, colors: Mapping[str, str] | None = None,
                    bands: bool | None = None) -> Figure:
    """Kaplan-Meier P(not failed by step t) for each run; runs that never failed stay at 1 (censored)."""
    names = list(results)
    if not names:
        raise SurgeryError("no results to plot")
    bands = len(names) <= 3 if bands is None else bands
    default = dict(zip(names, _PAIR_COLORS)) if len(names) <= 2 else {}
    many = len(names) > 4
    fig = Figure(figsize=(9.5 if many else 7, 4.2), layout="constrained")
    ax = fig.subplots()
    limit = max(int(results[n].time_limit) for n in names)
    for i, name in enumerate(names):
        res = results[name]
        km = res.survival()
        color = (colors or {}).get(name) or default.get(name) or f"C{i}"
        label = f"{name} ({km.failures}/{km.episodes} failed)"
        t = np.concatenate([[0], km.times, [res.time_limit]])
        p = np.concatenate([[1.0], km.probability, [km.probability[-1] if km.probability.size else 1.0]])
        ax.step(t, p, where="post", color=color, lw=1.5 if len(names) <= 3 else 1.0, label=label)
        if bands and km.times.size:
            lo = np.concatenate([[1.0], km.low, [km.low[-1]]])
            hi = np.concatenate([[1.0], km.high, [km.high[-1]]])
            ax.fill_between(t, lo, hi, step="post", color=color, alpha=0.15, linewidth=0)
    ax.set_xlim(0, limit)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("environment step")
    ax.set_ylabel("P(not failed yet)")
    ax.set_title("survival (Kaplan-Meier" + (", 95% log-log band" if bands else "") + ")", fontsize=10)
    ax.grid(alpha=0.3)
    if many:  # beside the axes: inside, a long legend hides the curves
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize=8, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def damage_vs_alignment(points: Sequence[Mapping], correlation=None, title: str | None = None,
                        damage_label: str = "mean return drop (baseline - edited)") -> Figure:
    """One point per edited vector: |cos| with the embedding against its damage (with CI), coloured by group.

    points: dicts with abs_cos, damage, low, high, group (aligned / control_same / control_other), name.
    correlation: an object with rho, low, high, p (surgery.experiments.correlation.Correlation).
    """
    if not points:
        raise SurgeryError("no points to plot")
    fig = Figure(figsize=(7, 4.6), layout="constrained")
    ax = fig.subplots()
    for group in GROUP_COLORS:
        pts = [p for p in points if p["group"] == group]
        if not pts:
            continue
        x = np.array([p["abs_cos"] for p in pts])
        y = np.array([p["damage"] for p in pts])
        err = np.array([[p["damage"] - p["low"] for p in pts], [p["high"] - p["damage"] for p in pts]])
        ax.errorbar(x, y, yerr=np.clip(err, 0, None), fmt="o", color=GROUP_COLORS[group], capsize=3, markersize=5,
                    label=GROUP_NAMES.get(group, group), alpha=0.9)
        for p in pts:
            ax.annotate(p.get("name", ""), (p["abs_cos"], p["damage"]), fontsize=6, alpha=0.7,
                        xytext=(3, 3), textcoords="offset points")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("|cos| with the embedding (best label)")
    ax.set_ylabel(damage_label)
    heading = "damage against alignment"
    if correlation is not None and np.isfinite(correlation.rho):
        heading += f": {correlation.describe()}, p {correlation.p:.2g}"
    ax.set_title(heading, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
