"""Figures of an alignment: top-k tables, heatmaps, overview, scatter, spectra.

Every function returns a matplotlib Figure; `png(fig)` turns it into bytes for a report.
Figures always say which block, weight, head and side they show.
"""
from __future__ import annotations

import io

import matplotlib as mpl
import numpy as np
import torch
from matplotlib.figure import Figure  # no pyplot: importing this module never switches a notebook's backend
from matplotlib.patches import Rectangle

from surgery.analysis.cosines import unit_rows
from surgery.analysis.localisation import side_name, where
from surgery.analysis.report.terminal import visible  # noqa: F401  (re-exported for reports)
from surgery.core.decomposition import decompose
from surgery.errors import SurgeryError

WEIGHT_COLORS = {"K": "tab:blue", "V": "tab:orange", "OV": "tab:green", "QK": "tab:purple"}


def png(fig, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def _subplots(*grid, figsize, **kwargs):
    """(figure, axes) like pyplot.subplots, on a bare Figure that nothing keeps alive once it is dropped."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def display_label(label: str, width: int = 18) -> str:
    """A label safe to draw: visible spaces and escapes, matplotlib's mathtext `$` escaped, long ones cut."""
    s = visible(label)
    s = s if len(s) <= width else s[:width - 1] + "…"
    return s.replace("$", r"\$")


def _cos_limit(values) -> float:
    m = float(np.nanmax(np.abs(values))) if np.size(values) else 1.0
    return max(m, 1e-6)


# ---- top-k table ---------------------------------------------------------------------------------
def tails(records, k: int) -> dict:
    """The labels to show for one singular vector's records, each label once.

    {"top": k labels of highest cos, "bottom": k of lowest} (at most as many as the alignment kept per end);
    when the set is smaller than both ends together they share labels, so {"all": every label, by cos,
    highest first}.
    Each entry is a list of (label, cos).
    """
    pairs, n = {}, 0  # by the label's index: two tokens can decode to the same text (GPT-2's bytes all print '�')
    for tail in ("top", "bottom"):
        t = records.where(tail=tail).sort("rank")
        pairs.update(zip(t["label_index"].tolist(), zip(t["label"].tolist(), t["cos"].tolist())))
        n += len(t)
    # The ends share labels only when the set is smaller than the 2 x top the alignment kept: then it holds them all.
    if len(pairs) < n:
        return {"all": sorted(pairs.values(), key=lambda lc: -lc[1])}
    out = {}
    for tail in ("top", "bottom"):
        t = records.where(tail=tail).sort("rank").head(k)
        out[tail] = list(zip(t["label"].tolist(), t["cos"].tolist()))
    return out


def topk_table(alignment, embedding: str, block: int, weight: str, head: int | None = None, side: str | None = None,
               vectors: int = 8, k: int = 5):
    """The study's top-k table: per singular vector, its most positive and most negative labels, coloured by cos
    (every label once, by cos, when the set has fewer than 2k)."""
    from surgery.core.decomposition import DEFAULT_SIDE

    side = side or DEFAULT_SIDE[weight]
    r = alignment.records.where(embedding=embedding, block=block, weight=weight, side=side,
                                head=-1 if head is None else head)
    idxs = sorted(set(r["idx"].tolist()))[:vectors]
    if not idxs:
        raise SurgeryError(f"no records for {embedding} at {where(block, weight, head, side)}; was it in the alignment?")
    cmap = mpl.colormaps["RdBu_r"]
    lim = _cos_limit(r["cos"])
    cells, colors, dark, row_labels = [], [], [], []
    for i in idxs:
        mine = r.where(idx=i)
        row_labels.append(f"#{i}  σ={mine['singular_value'][0]:.3g}")
        shown = tails(mine, k)
        row, col = [], []
        for label, c in shown.get("all") or shown["top"] + shown["bottom"]:
            row.append(f"{display_label(label, 14)}\n{c:+.2f}")
            col.append(cmap(0.5 + 0.5 * c / lim))
            dark.append((len(cells), len(row) - 1) if abs(c) > 0.6 * lim else None)
        cells.append(row)
        colors.append(col)
    if "all" in shown:
        n = len(shown["all"])
        cols, title = [f"{j + 1}" for j in range(n)], f"all {n} labels, highest cos first"
    else:
        cols, title = [f"top {j + 1}" for j in range(k)] + [f"bottom {j + 1}" for j in range(k)], \
            f"top {k} and bottom {k} labels"
    fig, ax = _subplots(figsize=(1.25 * len(cols) + 1.5, 0.55 * len(idxs) + 1.0))
    ax.axis("off")
    table = ax.table(cellText=cells, cellColours=colors, rowLabels=row_labels, colLabels=cols, loc="center",
                     cellLoc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(7)
    for rc in filter(None, dark):  # white text on the darkest cells
        table[rc[0] + 1, rc[1]].get_text().set_color("white")
    table.scale(1, 2.0)
    ax.set_title(f"{embedding} vs {where(block, weight, head, side)}: {title}", fontsize=9)
    return fig


# ---- heatmaps ------------------------------------------------------------------------------------
def cosines(model, block: int, weight: str, embedding: str, head: int | None = None, side: str | None = None,
            vectors: int = 16, fold_ln: bool = False, dtype=torch.float64):
    """(cos [vectors, labels], singular values, labels) for a weight's first singular vectors and a set."""
    from adapters import wrap
    from surgery.core.decomposition import DEFAULT_SIDE

    a = wrap(model)
    sets = a.embedding_sets()
    if embedding not in sets:
        raise SurgeryError(f"unknown embedding set {embedding!r}; this model has: {', '.join(sets)}")
    side = side or DEFAULT_SIDE[weight]
    svd = decompose(a, block, weight, head=head if weight in ("OV", "QK") else None, fold_ln=fold_ln, dtype=dtype)
    V = svd.vectors(side)[:, :vectors].to(dtype)
    E = unit_rows(sets[embedding].vectors, dtype)
    return (V.T @ E.T).numpy(), svd.S[:vectors].double().numpy(), sets[embedding].labels


def _pick_labels(cos: np.ndarray, max_labels: int) -> np.ndarray:
    """Every label if few; else the ones some shown vector aligns with most (by |cos|)."""
    n = cos.shape[1]
    if n <= max_labels:
        return np.arange(n)
    strongest = np.abs(cos).max(axis=0)
    return np.sort(np.argsort(-strongest, kind="stable")[:max_labels])


def heatmap(model, block: int, weight: str, embedding: str, head: int | None = None, side: str | None = None,
            vectors: int = 16, max_labels: int = 40, fold_ln: bool = False):
    """Singular vectors (rows) against embedding labels (columns), coloured by cos."""
    return multi_heatmap(model, block, weight, [embedding], head, side, vectors, max_labels, fold_ln)


def multi_heatmap(model, block: int, weight: str, embeddings, head: int | None = None, side: str | None = None,
                  vectors: int = 16, max_labels: int = 24, fold_ln: bool = False):
    """Several embedding sets side by side against the same singular vectors, one panel per set."""
    from surgery.core.decomposition import DEFAULT_SIDE

    side = side or DEFAULT_SIDE[weight]
    panels = []
    for name in embeddings:
        cos, S, labels = cosines(model, block, weight, name, head, side, vectors, fold_ln)
        keep = _pick_labels(cos, max_labels)
        panels.append((name, cos[:, keep], [display_label(str(labels[int(j)])) for j in keep], S))
    widths = [max(len(p[2]), 2) for p in panels]
    lim = _cos_limit(np.concatenate([p[1].ravel() for p in panels]))
    n_rows = panels[0][1].shape[0]
    fig, axes = _subplots(1, len(panels), figsize=(min(2.0 + 0.28 * sum(widths), 30), 1.2 + 0.3 * n_rows),
                          gridspec_kw={"width_ratios": widths}, squeeze=False)
    for ax, (name, cos, labels, S) in zip(axes[0], panels):
        im = ax.imshow(cos, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_yticks(range(n_rows), [f"#{i} σ={s:.2g}" for i, s in enumerate(S)] if ax is axes[0][0] else [],
                      fontsize=7)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.01, label="cos")
    fig.suptitle(f"{where(block, weight, head, side)}: first {n_rows} singular vectors", fontsize=10)
    return fig


# ---- all weights x all sets ------------------------------------------------------------------------
def overview(alignment):
    """Every (block, weight, side) against every embedding set: -log10 of the best corrected p-value.

    Heads are folded into their weight (the best head shown); cells beyond chance carry the
    number of singular vectors that beat it.
    """
    w = alignment.weights
    names = alignment.settings.embeddings
    keys = []
    for r in w.rows():
        key = (r["block"], r["weight"], r["side"])
        if key not in keys:
            keys.append(key)
    order = {k: i for i, k in enumerate(sorted(keys, key=lambda k: (k[0], ["K", "V", "OV", "QK"].index(k[1]), k[2])))}
    grid = np.zeros((len(order), len(names)))
    count = np.zeros_like(grid, dtype=int)
    col = {n: j for j, n in enumerate(names)}
    for r in w.rows():
        i, j = order[(r["block"], r["weight"], r["side"])], col[r["embedding"]]
        p = r["best_p_adj"] if r["best_p_adj"] is not None else 1.0
        grid[i, j] = max(grid[i, j], -np.log10(max(p, 1e-300)))
        count[i, j] += r["n_significant"]
    alpha = alignment.settings.alpha
    fig, ax = _subplots(figsize=(1.4 + 1.0 * len(names), 1.0 + 0.26 * len(order)))
    vmax = max(4.0, float(np.ceil(grid.max())))
    im = ax.imshow(np.minimum(grid, vmax), cmap="magma_r", vmin=0, vmax=vmax, aspect="auto")
    for (i, j), c in np.ndenumerate(count):
        if c:
            ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                    color="white" if grid[i, j] > 0.6 * vmax else "black")
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    labels = [f"b{b} {wt} {side_name(wt, s, short=True)}" for (b, wt, s) in order]
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for (i, j), c in np.ndenumerate(count):
        if c:  # outline the cells beyond chance
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="tab:cyan", lw=1.5))
    fig.colorbar(im, ax=ax, fraction=0.04, label="-log10 p_adj of the best singular vector")
    ax.set_title(f"Where each embedding is beyond chance (numbers: vectors with p_adj < {alpha:g})", fontsize=9)
    return fig


def scatter(alignment, embedding: str):
    """Singular value against the best |cos| with the set, one point per singular vector, with chance lines."""
    v = alignment.vectors.where(embedding=embedding)
    null = alignment.nulls[embedding]
    fig, ax = _subplots(figsize=(6.5, 4.2))
    for wt in ["K", "V", "OV", "QK"]:
        for side, marker in (("in", "o"), ("out", "^")):
            m = v.where(weight=wt, side=side)
            if len(m):
                ax.scatter(np.maximum(m["singular_value"].astype(float), 1e-12), m["abs_cos"].astype(float), s=6,
                           alpha=0.5, marker=marker, color=WEIGHT_COLORS[wt], label=f"{wt} {side_name(wt, side)}",
                           rasterized=True)
    ax.set_xscale("log")
    ax.axhline(alignment.threshold(embedding), color="crimson", lw=1,
               label=f"beyond chance after correction ({alignment.threshold(embedding):.3f})")
    ax.axhline(null.mean, color="gray", lw=1, ls="--", label=f"random directions, mean ({null.mean:.3f})")
    ax.set_xlabel("singular value")
    ax.set_ylabel(f"max |cos| with {embedding}")
    ax.set_title(f"{embedding}: singular value vs alignment ({len(v)} singular vectors)", fontsize=9)
    ax.legend(fontsize=6, loc="upper left", ncol=2, markerscale=2)
    return fig


def spectra(model, weights=("K", "V", "OV", "QK"), blocks=None, fold_ln: bool = False, dtype=torch.float64):
    """Singular values of every weight, one panel per weight type, one line per block (thin: per head)."""
    from adapters import wrap

    a = wrap(model)
    blocks = range(a.n_blocks) if blocks is None else blocks
    fig, axes = _subplots(1, len(weights), figsize=(3.2 * len(weights), 3.0), squeeze=False)
    cmap = mpl.colormaps["viridis"]
    for ax, wt in zip(axes[0], weights):
        for n, b in enumerate(blocks):
            S = decompose(a, b, wt, fold_ln=fold_ln, dtype=dtype).S.double().numpy()
            color = cmap(n / max(len(blocks) - 1, 1))
            if S.ndim == 2:  # per head
                for h, s in enumerate(S):
                    ax.plot(s, color=color, lw=0.6, alpha=0.6, label=f"block {b}" if h == 0 else None)
            else:
                ax.plot(S, color=color, lw=1.2, label=f"block {b}")
        ax.set_yscale("log")
        ax.set_title(f"{wt}" + (" (each head)" if wt in ("OV", "QK") else ""), fontsize=9)
        ax.set_xlabel("index")
    axes[0][0].set_ylabel("singular value")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Singular value spectra", fontsize=10)
    fig.tight_layout()
    return fig
