"""Figures of an atlas: damage over blocks x triples per weight, damage against alignment and against size.

Each function takes the atlas's rows (a `Table`) and returns a `matplotlib.figure.Figure` built
without pyplot, like surgery/experiments/figures.py.
"""
from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from surgery.errors import SurgeryError

WEIGHT_COLORS = {"K": "#c0392b", "V": "#2471a3", "OV": "#27ae60", "QK": "#8e44ad"}


def _limit(damage: np.ndarray) -> float:
    """A symmetric colour limit: the 99th percentile of |damage|, so one outlier does not wash out the rest."""
    d = np.abs(damage[np.isfinite(damage)])
    return float(max(np.percentile(d, 99), 1e-9)) if d.size else 1.0


def damage_heatmap(rows, reference: str = "baseline") -> Figure:
    """Mean return drop of every edit: one panel per weight, blocks (x heads for OV, QK) down, triple index across.

    Red lowers the return, blue raises it; a dot marks an edit significant after the correction. `reference`
    names what damage is measured from ("baseline" paired, "pool mean" with a pool).
    """
    if not len(rows):
        raise SurgeryError("no rows to plot")
    weights = list(dict.fromkeys(rows["weight"].tolist()))
    limit = _limit(np.asarray(rows["damage"], float))
    panels = []
    for w in weights:
        r = rows.where(weight=w)
        places = sorted({(int(b), int(h)) for b, h in zip(r["block"], r["head"])})
        width = int(r["idx"].max()) + 1
        grid = np.full((len(places), width), np.nan)
        sig = np.zeros_like(grid, dtype=bool)
        where = {p: i for i, p in enumerate(places)}
        for b, h, i, dmg, s in zip(r["block"], r["head"], r["idx"], r["damage"], r["significant"]):
            grid[where[(int(b), int(h))], int(i)] = dmg
            sig[where[(int(b), int(h))], int(i)] = s
        labels = [f"b{b}" if h < 0 else f"b{b} h{h}" for b, h in places]
        panels.append((w, grid, sig, labels))
    heights = [max(1.2, 0.28 * len(p[3]) + 0.9) for p in panels]
    fig = Figure(figsize=(11, sum(heights) + 0.6), layout="constrained")
    axes = fig.subplots(len(panels), 1, height_ratios=heights, squeeze=False)[:, 0]
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    for ax, (w, grid, sig, labels) in zip(axes, panels):
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ys, xs = np.nonzero(sig)
        ax.scatter(xs, ys, s=6, c="black", marker="o", linewidths=0, label="significant")
        ax.set_yticks(range(len(labels)), labels, fontsize=7 if len(labels) > 12 else 8)
        ax.set_title(f"{w}: mean return drop per edited triple", fontsize=9, loc="left")
        ax.set_xlabel("singular triple index (0 = largest)", fontsize=8)
    fig.colorbar(im, ax=list(axes), label=f"return drop ({reference} - edited)", shrink=0.8)
    return fig


def damage_vs_alignment(rows, embedding: str, threshold: float | None = None, correlation=None,
                        placebo: float | None = None, reference: str = "baseline") -> Figure:
    """Each edit's damage (with its interval) against its best |cos| with `embedding`, coloured by weight type.

    Filled markers: significant after the correction. The dashed line: the |cos| that beats chance. The
    dotted one: the placebo's damage (`atlas_rows.placebo`), the level damage is to be read against.
    """
    col = f"{embedding}_abs_cos"
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    _points(ax, rows, col)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="#555", ls="--", lw=0.8, label="beyond chance")
    _finish(ax, f"best |cos| with {embedding}", f"damage against alignment with {embedding}", correlation, placebo,
            reference)
    return fig


def damage_vs_size(rows, correlation=None, placebo: float | None = None, reference: str = "baseline") -> Figure:
    """Each edit's damage against its singular value (log scale), coloured by weight type: the confound."""
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    _points(ax, rows, "singular_value")
    if np.all(np.asarray(rows["singular_value"], float) > 0):
        ax.set_xscale("log")
    _finish(ax, "singular value", "damage against size", correlation, placebo, reference)
    return fig


def _finish(ax, xlabel: str, title: str, correlation, placebo: float | None = None,
            reference: str = "baseline") -> None:
    """The zero line (and the placebo's), labels, the title with the correlation when there is one, grid, legend."""
    ax.axhline(0, color="black", lw=0.8)
    if placebo is not None and np.isfinite(placebo):
        ax.axhline(placebo, color="#b30000", ls=":", lw=1.2, label=f"placebo {_signed(placebo)}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"mean return drop ({reference} - edited)")
    if correlation is not None and np.isfinite(correlation.rho):
        title += f": {correlation.describe()}"
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _signed(x: float) -> str:
    """+432, -0.4: whole numbers where that keeps two significant digits (a -0.4 placebo is not '-0')."""
    return f"{x:+.0f}" if abs(x) >= 10 else f"{x:+.2g}"


def _points(ax, rows, x_col: str) -> None:
    for w in dict.fromkeys(rows["weight"].tolist()):
        r = rows.where(weight=w)
        x, y = np.asarray(r[x_col], float), np.asarray(r["damage"], float)
        err = np.clip(np.array([y - np.asarray(r["damage_low"], float), np.asarray(r["damage_high"], float) - y]), 0,
                      None)
        sig = np.asarray(r["significant"], bool)
        color = WEIGHT_COLORS.get(w, "#555")
        ax.errorbar(x, y, yerr=err, fmt="none", ecolor=color, alpha=0.25, lw=0.6)
        ax.scatter(x[~sig], y[~sig], s=12, facecolors="none", edgecolors=color, linewidths=0.7, alpha=0.7,
                   label=f"{w} ({len(r)})")
        ax.scatter(x[sig], y[sig], s=14, color=color, alpha=0.9, label=f"{w}, significant ({int(sig.sum())})")
