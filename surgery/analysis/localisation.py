"""`surgery.locate`: which weights carry an embedding, found by significance instead of by eye.

The study picked "manually which weights show the greatest cosine similarity". Here every
(block, weight, head, side, idx) is ranked by its chance-corrected p-value against the set,
weights are ranked by how many of their singular vectors beat chance, and each set gets a
one-line answer: where it is most aligned, and which weight is most selective for it. A vector
whose singular value is tied with a neighbour's (`surgery.analysis.subspaces`) is marked
rotation-unstable, with its group's subspace score beside it.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from surgery.analysis.alignment import Alignment, alignment
from surgery.analysis.settings import AlignmentSettings
from surgery.analysis.tables import Table


def side_name(weight: str, side: str, short: bool = False) -> str:
    """"read side"/"write side"; QK has no write side: both read, the query ("in") and the key ("out")."""
    name = {"in": "query", "out": "key"}[side] if weight == "QK" else {"in": "read", "out": "write"}[side]
    return name if short else f"{name} side"


@dataclass
class Location:
    """Ranked singular vectors and weights for one or more embedding sets."""

    ranking: Table
    """Every searched singular vector, most significant first: its best label, cos, p, p_adj, z."""
    weights: Table
    """Every (block, weight, head, side): vectors beating chance, its best vector, its selectivity."""
    summary: Table
    """One row per embedding set: the strongest vector, the count beating chance, the most selective weight."""
    alignment: Alignment

    @property
    def alpha(self) -> float:
        return self.alignment.settings.alpha

    def carriers(self, embedding: str | None = None) -> Table:
        """The weights with at least one singular vector more aligned than chance."""
        w = self.weights if embedding is None else self.weights.where(embedding=embedding)
        return w.take(w["n_significant"] > 0)

    def __str__(self) -> str:
        return "\n\n".join(describe(self, name) for name in self.summary["embedding"])

    def __repr__(self) -> str:
        return f"Location({', '.join(self.summary['embedding'])}: {len(self.ranking)} vectors ranked)\n{self}"


def locate(model, embedding: str | Sequence[str] | None = "action_out", settings: AlignmentSettings | None = None,
           *, progress: bool | None = None, **overrides) -> Location:
    """Rank every singular vector by how far its alignment with `embedding` is beyond chance.

    model: a loaded model or a raw Hugging Face / TransformerLens model.
    embedding: a set name ("action_out", "state_in", "token_out", ...), several, or None for
        every set the model has (with a summary across them); it takes the place of
        `settings.embeddings`.
    settings, **overrides: as for `surgery.alignment` (AlignmentSettings fields: weights, blocks,
        heads, vectors, top, fold_ln, sides, dtype, method, draws, seed, correction, family,
        alpha), except that 5 labels per end are kept unless `top` says otherwise.
    progress: show progress bars.

    Returns a `Location`: `.ranking` (every vector, most significant first), `.weights` (per
    weight: vectors beyond chance, the best, the selectivity), `.summary` (one row per set) and
    the `Alignment` it came from; printing it answers in a few lines.

    Examples:

    >>> loc = locate(model, "action_out")
    >>> loc.ranking.row(0)["block"], loc.ranking.row(0)["weight"]   # the strongest carrier
    (0, 'V')
    >>> loc = locate(model, "action_out", weights=["K"], alpha=0.01)  # K vectors only, stricter
    >>> everything = locate(model, None)                               # every set, a summary row each
    """
    embeddings = None if embedding is None else (embedding,) if isinstance(embedding, str) else tuple(embedding)
    s = replace(settings or AlignmentSettings(top=5), embeddings=embeddings)
    return from_alignment(alignment(model, s, progress=progress, **overrides))


def from_alignment(a: Alignment) -> Location:
    """The ranking, weight table and summary of an alignment already computed."""
    v = a.vectors
    # Near-null vectors (below the noise floor) rank after every other: they carry nothing reliably.
    ranking = v.sort("near_null", "p_adj", "abs_cos", descending=[False, False, True])
    w = a.weights
    weights = w.sort("embedding", "best_p_adj", "n_significant", "selectivity", descending=[False, False, True, True])
    weights = Table.concat([weights.where(embedding=n) for n in a.settings.embeddings])
    return Location(ranking, weights, _summary(a, ranking, weights), a)


def _summary(a: Alignment, ranking: Table, weights: Table) -> Table:
    rows = []
    sets = a.adapter.embedding_sets()
    for name in a.settings.embeddings:
        r = ranking.where(embedding=name)
        w = weights.where(embedding=name)
        best = r.row(0)
        # Rank by z, not the ratio: a low-rank head's ratio is noisy, its z says how unusual it is.
        z = np.nan_to_num(w["selectivity_z"].astype(float), nan=-np.inf)
        sel = w.take(np.argsort(-z, kind="stable")).row(0)
        null = a.nulls[name]
        rows.append({
            "embedding": name, "n_labels": len(sets[name].labels), "n_searched": len(r),
            "n_significant": int(((r["p_adj"] < a.settings.alpha) & ~r["near_null"].astype(bool)).sum()),
            "n_near_null": int(((r["p_adj"] < a.settings.alpha) & r["near_null"].astype(bool)).sum()),
            "threshold": a.threshold(name), "chance_mean": null.mean,
            "block": best["block"], "weight": best["weight"], "head": -1 if best["head"] is None else best["head"],
            "side": best["side"], "idx": best["idx"], "label": best["label"], "cos": best["cos"],
            "p_adj": best["p_adj"], "z": best["z"], "singular_value": best["singular_value"],
            "energy": best["energy"], "near_null": best["near_null"],
            "identifiable": best["identifiable"], "group": best["group"],
            "group_size": best["group_size"], "subspace_cos": best["subspace_cos"],
            "subspace_label": best["subspace_label"], "subspace_p_adj": best["subspace_p_adj"],
            "selective_block": sel["block"], "selective_weight": sel["weight"],
            "selective_head": -1 if sel["head"] is None else sel["head"], "selective_side": sel["side"],
            "selectivity": sel["selectivity"], "selectivity_z": sel["selectivity_z"],
        })
    cols = {k: [r[k] for r in rows] for k in rows[0]} if rows else {}
    return Table(cols, nullable=("head", "selective_head"))


def size_note(row: dict, prefix: str = "") -> str:
    """'S 0.82, 12.3% of the energy', or a near-null warning naming the floor.

    row: a row of `Alignment.vectors` (or of a ranking or summary); `prefix` for a weights-table row ("best_").
    """
    S, energy = row[f"{prefix}singular_value"], row[f"{prefix}energy"]
    if row[f"{prefix}near_null"]:
        return f"near-null: S {S:.2g}, {100 * energy:.2g}% of the energy, below the noise floor: carries nothing reliably"
    return f"S {S:.3g}, {100 * energy:.3g}% of the energy"


def tie_note(row: dict) -> str:
    """'' for an identifiable vector; else 'rotation-unstable: tied with #2-#3; their span 0.873 'leg' (p_adj 1e-37)'.

    row: a row of `Alignment.vectors` (or of a Location's ranking or summary).
    """
    if row["identifiable"]:
        return ""
    first, size = row["group"], row["group_size"]
    members = f"#{first}" if size == 1 else f"#{first}-#{first + size - 1}"
    if row["subspace_cos"] is None:  # an open group: tied with the complement, or with triples not computed
        return f"rotation-unstable: tied with {members} and beyond (no determined span)"
    return (f"rotation-unstable: tied with {members}; their span {row['subspace_cos']:.3f} {row['subspace_label']!r} "
            f"(p_adj {row['subspace_p_adj']:.2g})")


def _vector_row(loc: Location, name: str, block, weight, head, side, idx) -> dict:
    r = loc.ranking.where(embedding=name, block=block, weight=weight, head=-1 if head is None else head, side=side,
                          idx=idx)
    return r.row(0)


def where(block: int, weight: str, head, side: str) -> str:
    """'block 1 K (read side)', 'block 0 OV head 2 (write side)'."""
    h = "" if head in (None, -1) else f" head {head}"
    return f"block {block} {weight}{h} ({side_name(weight, side)})"


def describe(loc: Location, name: str, max_weights: int = 4) -> str:
    """A few lines answering: which weights carry this embedding set, and by how much beyond chance."""
    s = loc.summary.where(embedding=name).row(0)
    a = loc.alignment.settings
    labels = f"{s['n_labels']} label{'s' if s['n_labels'] != 1 else ''}"
    head = (f"{name} ({labels}): {s['n_searched']} singular vectors searched; with "
            f"{_correction_name(a.correction)} at alpha {a.alpha:g}, |cos| >= {s['threshold']:.3f} beats "
            f"chance (random directions average {s['chance_mean']:.3f}).")
    carriers = loc.carriers(name)
    lines = [head]
    if len(carriers) == 0:
        note = "; ".join(n for n in (size_note(s), tie_note(s)) if n)
        lines.append(f"  no weight is more aligned than chance; the strongest was "
                     f"{where(s['block'], s['weight'], s['head'], s['side'])} #{s['idx']} "
                     f"{s['label']!r} cos {s['cos']:+.3f} (p_adj {s['p_adj']:.2g}) [{note}].")
    else:
        r = loc.ranking.where(embedding=name)
        unstable = int(((r["p_adj"] < loc.alpha) & ~r["identifiable"].astype(bool)).sum())
        lines.append(f"  carried by {len(carriers)} weight(s), {s['n_significant']} vector(s) beyond chance"
                     f" ({unstable} of them rotation-unstable):")
        for r in carriers.head(max_weights).rows():
            note = tie_note(_vector_row(loc, name, r["block"], r["weight"], r["head"], r["side"], r["best_idx"]))
            lines.append(f"  - {where(r['block'], r['weight'], r['head'], r['side'])}: {r['n_significant']} of "
                         f"{r['n_vectors']}; best #{r['best_idx']} {r['best_label']!r} cos {r['best_cos']:+.3f} "
                         f"(p_adj {r['best_p_adj']:.2g}, z {r['best_z']:.1f}; {size_note(r, 'best_')})"
                         + (f" [{note}]" if note else ""))
        if len(carriers) > max_weights:
            lines.append(f"  - ... and {len(carriers) - max_weights} more")
    if s["n_near_null"]:
        lines.append(f"  not counted: {s['n_near_null']} vector(s) beyond chance whose singular value is below the "
                     "weight's noise floor (near-null: the weight ignores those directions)")
    if s["selectivity"] is None or s["selectivity"] != s["selectivity"]:  # None or nan: a fast route's k triples
        lines.append("  most selective weight: not computed (it needs every singular triple; this used a fast "
                     "route's leading ones)")
        return "\n".join(lines)
    verb = "writes" if s["selective_side"] == "out" and s["selective_weight"] != "QK" else "reads"
    selective = where(s["selective_block"], s["selective_weight"], s["selective_head"], s["selective_side"])
    lines.append(f"  most selective for it: {selective}, which {verb} its directions {s['selectivity']:.2f}x as "
                 f"strongly as an average direction (z {s['selectivity_z']:.1f} against random rotations).")
    return "\n".join(lines)


def _correction_name(method: str) -> str:
    return {"holm": "Holm's correction", "bonferroni": "Bonferroni's correction", "bh": "Benjamini-Hochberg (FDR)",
            "by": "Benjamini-Yekutieli (FDR)", "none": "no correction"}[method]
