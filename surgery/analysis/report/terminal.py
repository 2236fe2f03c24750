"""The terminal summary of an analysis: what is more than chance, and where."""
from __future__ import annotations

import math

from surgery.analysis.localisation import Location, describe, side_name, where


def visible(label: str) -> str:
    """A token as text: control characters escaped, spaces at either end shown as ␣ (" the" -> "␣the")."""
    s = repr(label)[1:-1] if any(c in label for c in "\n\t\r") else label
    core = s.strip(" ")
    if not core:
        return "␣" * len(s) or "''"
    lead, trail = len(s) - len(s.lstrip(" ")), len(s) - len(s.rstrip(" "))
    return "␣" * lead + core + "␣" * trail


def searched(loc: Location) -> str:
    """'K read, V write, OV read+write of blocks 0..2'."""
    s = loc.alignment.settings
    v = loc.alignment.vectors
    parts = []
    for w in s.weights:
        sides = [x for x in ("in", "out") if len(v.where(weight=w, side=x))]
        if sides:
            parts.append(f"{w} {'+'.join(side_name(w, x, short=True) for x in sides)}")
    blocks = s.blocks
    span = f"{blocks[0]}..{blocks[-1]}" if list(blocks) == list(range(blocks[0], blocks[-1] + 1)) and len(blocks) > 1 \
        else ", ".join(map(str, blocks))
    return f"{', '.join(parts)} of block{'s' if len(blocks) > 1 else ''} {span}"


def settings_line(loc: Location) -> str:
    s = loc.alignment.settings
    draws = {n: int(null.samples.size) for n, null in loc.alignment.nulls.items() if null.samples.size}
    common = max(set(draws.values()), key=list(draws.values()).count) if draws else 0
    others = ", ".join(f"{d:,} for {n}" for n, d in draws.items() if d != common)
    mc = f"{common:,} random directions" + (f" ({others})" if others else "") if draws else "exact laws only"
    family = "within each embedding set" if s.family == "set" else "over all sets together"
    name = s.correction.upper() if len(s.correction) == 2 else s.correction.capitalize()
    corr = "not corrected" if s.correction == "none" else f"{name}-corrected {family}"
    return (f"Chance: random unit directions against each set ({mc}, seed {s.seed}, exact where a set has one "
            f"vector); p-values {corr}; alpha {s.alpha:g}.")


def ties_line(loc: Location) -> str:
    """How tied singular values were decided: the relative gap below which neighbours tie, per weight searched."""
    from surgery.analysis.alignment import shape
    from surgery.analysis.settings import NOISE
    from surgery.analysis.subspaces import MAX_SIN, tie_threshold

    a = loc.alignment
    noise = {w: NOISE[w] if a.settings.noise is None else a.settings.noise for w in a.settings.weights}
    gaps = ", ".join(f"{w} {tie_threshold(noise[w], shape(a.adapter, w)):.2g}" for w in a.settings.weights)
    sizes = ", ".join(f"{w} {noise[w]:g}" for w in a.settings.weights)
    return (f"Ties: neighbours closer than ({gaps}) x S_0 are tied: retraining noise ||E|| = ({sizes}) x S_0\n"
            f"would typically turn them by more than {math.degrees(math.asin(MAX_SIN)):.0f} degrees (first-order "
            f"perturbation theory); a tied group is scored as a subspace. A vector whose S is below ||E|| is\n"
            f"near-null (noise alone could put it there): flagged, never counted as a carrier.")


def table(loc: Location) -> str:
    """One line per embedding set."""
    head = ("embedding", "labels", "beyond chance", "needs |cos|", "strongest singular vector", "S (energy)", "label",
            "cos", "p_adj", "its group (span)")
    rows = [head]
    for r in loc.summary.rows():
        size = f"{r['singular_value']:.3g} ({100 * r['energy']:.2g}%)" + (" near-null" if r["near_null"] else "")
        rows.append((r["embedding"], str(r["n_labels"]), str(r["n_significant"]), f"{r['threshold']:.3f}",
                     f"{where(r['block'], r['weight'], r['head'], r['side'])} #{r['idx']}", size, _short(r["label"]),
                     f"{r['cos']:+.3f}", f"{r['p_adj']:.2g}", group_cell(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    right = {1, 2, 3, 7, 8}
    lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def summary_text(loc: Location, model_name: str, elapsed: float | None = None, files: list[str] | None = None) -> str:
    """The whole terminal summary."""
    a = loc.alignment
    s = a.settings
    n = len(loc.ranking) // max(len(s.embeddings), 1)
    timing = f" (analysed in {elapsed:.2f} s)" if elapsed is not None else ""
    out = [f"Alignment of {model_name}{timing}: {a.adapter!r}",
           f"Searched {searched(loc)}: {n} singular vectors per embedding set ({s.dtype}, "
           f"fold_ln {'on' if s.fold_ln else 'off'}); cosines with unit-normalised embeddings.",
           settings_line(loc), ties_line(loc), "", table(loc), ""]
    hits = [name for name in loc.summary["embedding"] if len(loc.carriers(name))]
    if hits:
        out.append("Beyond chance:")
        out += [describe(loc, name) for name in hits]
    else:
        out.append("Nothing is more aligned than chance: no singular vector beats random directions "
                   "after the correction.")
    misses = [name for name in loc.summary["embedding"] if name not in hits]
    if hits and misses:
        out.append(f"\nNot beyond chance anywhere: {', '.join(misses)}.")
    if files:
        out.append("\nWrote " + ", ".join(files))
    return "\n".join(out)


def group_cell(r: dict) -> str:
    """'identifiable', or 'rotation-unstable #2-#3: 0.873' (the span's best projection)."""
    if r["identifiable"]:
        return "identifiable"
    first, size = r["group"], r["group_size"]
    span = "" if r["subspace_cos"] is None else f": {r['subspace_cos']:.3f}"
    return f"rotation-unstable #{first}-#{first + size - 1}{span}" if size > 1 else f"rotation-unstable #{first}{span}"


def _short(label: str, width: int = 24) -> str:
    s = visible(label)
    return s if len(s) <= width else s[:width - 1] + "…"
