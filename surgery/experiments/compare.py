"""Two models of one architecture side by side: do their findings agree (e.g. two training seeds)?

    c = compare_models(surgery.load("hopper"), surgery.load("hopper-seed1"))
    print(c)                       # agreement per embedding set, Jaccard, subspace angles, damage profiles

Three questions, each with its own chance reference:

1. **Which cells carry an embedding, in each model?** A cell is (embedding set, block, weight, head,
   side); it is *beyond chance* when one of its singular vectors is (the same `surgery.alignment`,
   same settings, on both models). The agreement table counts cells beyond chance in both, in one,
   in neither, and the Jaccard index both / (either).
2. **Are the aligned directions the same?** Two independently trained models have unrelated residual
   bases, so their vectors cannot be compared as they are; what they share is the labels. Each
   aligned subspace is therefore written in label coordinates: with the set's unit embeddings
   E = P diag(s) W^T (n labels), the map x -> P W^T x carries the span of E isometrically onto R^n, and
   depends on the model only through its embeddings. The overlap of the two images (mean squared
   cosine of their principal angles) is compared with that of random subspaces of the same dimensions
   pushed through the same maps (Monte Carlo): `p_overlap` is the chance that random subspaces overlap
   at least as much. That bar is low: both subspaces were selected for aligning with the same labels,
   and random ones were not (hopper against its twin: 29% of *mismatched* cell pairs reach p_overlap <
   0.05). The selection-aware null is `p_same_labels`: each aligned vector keeps its best label and
   its cos with it, and is random in every other direction (Monte Carlo); it asks whether the two
   cells share more than their best labels give. It is still not calibrated for mismatched cells:
   hopper against its twin, 24% of 367 mismatched cell pairs reach p_same_labels < 0.05 (matched
   pairs: 34% of 29), because aligned vectors share more label structure than their best label. So
   read it beside the descriptive reference:
   `overlap_other_cells` / `overlap_max_other_cell`, the median and largest overlap of A's cell with
   B's *other* aligned cells of the set. Where a subspace
   has as many vectors as the set has labels, its image is all of
   R^n in both models and the overlap says nothing (`p_overlap` is then empty). A fitted rotation between the two
   residual bases (orthogonal Procrustes on the embeddings) was tried first and dropped: it has
   d(d-1)/2 free parameters, and on Hopper against an untrained twin it reached a set-weighted fit
   of 0.96 where shuffled labels reached 0.85, so it cannot tell matched bases from unmatched ones.
3. **Does the same singular index do the same damage?** Given both models' atlases (per-triple
   damage), the Spearman correlation of damage against singular index order, per block and weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats

from adapters import wrap
from surgery.analysis.alignment import Alignment, alignment
from surgery.analysis.cosines import unit_rows
from surgery.analysis.settings import AlignmentSettings
from surgery.analysis.tables import Table
from surgery.errors import SurgeryError

__all__ = ["ModelComparison", "compare_models", "label_map", "overlap", "overlap_pvalue", "damage_profiles"]

CELL = ("embedding", "block", "weight", "head", "side")


@dataclass
class ModelComparison:
    """What `compare_models` found; every table is tidy (one row per cell or per embedding set)."""

    names: tuple[str, str]
    cells: Table
    """Per cell: beyond chance in A / in B, how many vectors, best label and cos in each, the subspace overlap."""
    agreement: Table
    """Per embedding set: cells beyond chance in both, only A, only B, neither; Jaccard."""
    damage: Table | None = None
    """Per (block, weight, head): Spearman rho of the two atlases' damage over singular indices."""
    settings: AlignmentSettings | None = None
    alignments: tuple[Alignment, Alignment] | None = field(default=None, repr=False)

    def __str__(self) -> str:
        a, b = self.names
        lines = [f"{a} vs {b}: cells (embedding set, block, weight, head, side) beyond chance",
                 f"  {'embedding':<12} {'both':>5} {'only A':>7} {'only B':>7} {'neither':>8} {'Jaccard':>8}"]
        for r in self.agreement.rows():
            jac = "-" if r["jaccard"] is None else f"{r['jaccard']:.2f}"
            lines.append(f"  {r['embedding']:<12} {r['both']:>5} {r['only_a']:>7} {r['only_b']:>7} "
                         f"{r['neither']:>8} {jac:>8}")
        p = np.asarray(self.cells["p_overlap"], float)
        if np.isfinite(p).any():
            ov = np.asarray(self.cells["overlap"], float)[np.isfinite(p)]
            other = np.asarray(self.cells["overlap_other_cells"], float)[np.isfinite(p)]
            pc = np.asarray(self.cells["p_same_labels"], float)[np.isfinite(p)]
            first = int(np.sum(ov > np.asarray(self.cells["overlap_max_other_cell"], float)[np.isfinite(p)]))
            lines.append(f"Aligned subspaces in label coordinates, {np.isfinite(p).sum()} cells beyond chance in both "
                         f"(and narrower than their label set): median overlap {np.median(ov):.2f} (1 = the same "
                         f"space) against {np.nanmedian(other) if np.isfinite(other).any() else float('nan'):.2f} "
                         f"between A's cell and B's other aligned cells of the set; in {first} the matched cell "
                         f"overlaps more than every other; {int((pc < 0.05).sum())} overlap more than subspaces with "
                         "the same best labels and cosines but otherwise random (p_same_labels < 0.05); "
                         f"{int((p[np.isfinite(p)] < 0.05).sum())} more than random, unselected subspaces "
                         "(p_overlap: a low bar, both were selected for the labels).")
        if self.damage is not None and len(self.damage):
            rho = np.asarray(self.damage["rho"], float)
            lines.append(f"Damage over singular indices, atlas A vs B: median Spearman rho {np.nanmedian(rho):+.2f} "
                         f"over {len(rho)} weights ({int((np.asarray(self.damage['p']) < 0.05).sum())} with p < 0.05).")
        return "\n".join(lines)


def label_map(E: torch.Tensor) -> torch.Tensor:
    """[n, d] matrix P W^T from E = P diag(s) W^T (unit embeddings, thin SVD): an isometry from span(E) onto R^n."""
    P, s, Wh = torch.linalg.svd(E, full_matrices=False)
    keep = s > s[0] * 1e-10
    return P[:, keep] @ Wh[keep]


def overlap(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine of the principal angles between the column spaces of X and Y ([..., n, k], batched).

    sum_i cos^2(theta_i) / min(kx, ky) = ||Qx^T Qy||_F^2 / min(kx, ky): 1 when one space contains the
    other, about max(kx, ky) / n for random ones. Unlike the largest cosine alone it does not saturate
    when the spaces are wide.
    """
    Qx, Qy = torch.linalg.qr(X).Q, torch.linalg.qr(Y).Q
    return ((Qx.mT @ Qy) ** 2).sum((-2, -1)) / min(Qx.shape[-1], Qy.shape[-1])


def overlap_pvalue(value: float, map_a: torch.Tensor, map_b: torch.Tensor, ka: int, kb: int, draws: int = 2000,
                   seed: int = 0) -> float:
    """P(overlap >= value) for uniformly random ka- and kb-dim subspaces of R^d, each pushed through its
    model's label map ([n, d])."""
    d = map_a.shape[1]
    g = torch.Generator().manual_seed(seed * 7919 + 31 * ka + kb)
    Ua = torch.linalg.qr(torch.randn(draws, d, ka, generator=g, dtype=torch.float64)).Q
    Ub = torch.linalg.qr(torch.randn(draws, d, kb, generator=g, dtype=torch.float64)).Q
    null = overlap(map_a.double() @ Ua, map_b.double() @ Ub).numpy()
    return _monte_carlo_p(null, value)


def same_labels_pvalue(value: float, rows_a, rows_b, E_a: torch.Tensor, E_b: torch.Tensor, map_a: torch.Tensor,
                       map_b: torch.Tensor, draws: int = 2000, seed: int = 0) -> float:
    """P(overlap >= value) for subspaces whose vectors keep each aligned vector's best label and its cos, and are
    random in every other direction: what aligning with the same labels alone gives two models' cells.

    rows_*: the vectors' rows (label_index, cos); E_*: each model's unit embeddings [n, d].
    """
    g = torch.Generator().manual_seed(seed * 7919 + 31 * len(rows_a) + len(rows_b))

    def draw(rows, E):
        e = E[[int(r["label_index"]) for r in rows]].double()  # [k, d] each vector's best label
        c = torch.tensor([float(r["cos"]) for r in rows], dtype=torch.float64)
        u = torch.randn(draws, *e.shape, generator=g, dtype=torch.float64)
        u = u - (u * e).sum(-1, keepdim=True) * e  # orthogonal to its label
        u = u / u.norm(dim=-1, keepdim=True)
        v = c[:, None] * e + torch.sqrt(1 - c ** 2)[:, None] * u  # [draws, k, d]: cos c with the label, else random
        return v.mT

    null = overlap(map_a.double() @ draw(rows_a, E_a), map_b.double() @ draw(rows_b, E_b)).numpy()
    return _monte_carlo_p(null, value)


def _monte_carlo_p(null: np.ndarray, value: float) -> float:
    """(1 + draws at least `value`) / (1 + draws): never 0, valid for a finite Monte Carlo null."""
    return float((1 + (null >= value - 1e-12).sum()) / (null.size + 1))


def compare_models(model_a, model_b, settings: AlignmentSettings | None = None, *, atlas_a=None, atlas_b=None,
                   names: tuple[str, str] = ("A", "B"), draws: int = 2000, seed: int = 0,
                   **overrides) -> ModelComparison:
    """Compare two loaded models of one architecture: cells beyond chance, aligned subspaces, damage profiles.

    settings / overrides: the AlignmentSettings both alignments use (default: every set, K V OV QK).
    atlas_a, atlas_b: per-triple damage of each model (a table or DataFrame with block, weight, head,
    idx and damage columns, e.g. an atlas CSV read with pandas), optional.
    """
    a, b = wrap(model_a), wrap(model_b)
    dims = [(n, getattr(a, n), getattr(b, n)) for n in ("n_blocks", "n_heads", "d_model", "d_mlp")]
    differ = [f"{n} {x} vs {y}" for n, x, y in dims if x != y]
    if differ:
        raise SurgeryError(f"the models differ in shape ({', '.join(differ)}): compare models of one architecture")
    sa, sb = a.embedding_sets(), b.embedding_sets()
    for name in sa:
        if name in sb and sa[name].vectors.shape != sb[name].vectors.shape:
            raise SurgeryError(f"embedding set {name!r} has shape {tuple(sa[name].vectors.shape)} in model A and "
                               f"{tuple(sb[name].vectors.shape)} in model B: the models do not share their labels")
    al_a = alignment(a, settings, **overrides)
    al_b = alignment(b, al_a.settings)
    units = {name: (unit_rows(sa[name].vectors, torch.float64), unit_rows(sb[name].vectors, torch.float64))
             for name in al_a.settings.embeddings}
    maps = {name: (label_map(ea), label_map(eb), ea, eb) for name, (ea, eb) in units.items()}
    cells = _cells(al_a, al_b, maps, draws, seed)
    damage = None if atlas_a is None or atlas_b is None else damage_profiles(atlas_a, atlas_b)
    return ModelComparison(tuple(names), cells, _agreement(cells), damage, al_a.settings, (al_a, al_b))


def _aligned(al: Alignment) -> dict:
    """cell -> (indices of the vectors beyond chance, their residual-side unit vectors [d, k], best label, cos)."""
    alpha = al.settings.alpha
    v = al.vectors
    out = {}
    # As `surgery analyze` counts carriers: beyond chance and not near-null (below the weight's noise floor).
    for i in np.flatnonzero((np.asarray(v["p_adj"]) < alpha) & ~np.asarray(v["near_null"], bool)):
        r = v.row(int(i))
        key = tuple(r[c] if c != "head" else (-1 if r[c] is None else r[c]) for c in CELL)
        out.setdefault(key, []).append(r)
    return out


def _vectors(al: Alignment, key, rows) -> torch.Tensor:
    from surgery.core.decomposition import decompose

    _, block, weight, head, side = key
    svd = decompose(al.adapter, block, weight, fold_ln=al.settings.fold_ln)
    vec = svd.vectors(side)
    vec = vec[head] if weight in ("OV", "QK") else vec
    return vec[:, [r["idx"] for r in rows]].double()


def _cells(al_a: Alignment, al_b: Alignment, maps: dict, draws: int, seed: int) -> Table:
    found_a, found_b = _aligned(al_a), _aligned(al_b)
    w = al_a.weights
    cols = {c: [] for c in (*CELL, "beyond_a", "beyond_b", "n_a", "n_b", "label_a", "label_b", "cos_a", "cos_b",
                            "overlap", "p_overlap", "overlap_other_cells", "overlap_max_other_cell", "p_same_labels")}
    for i in range(len(w)):
        r = w.row(i)
        key = tuple(r[c] if c != "head" else (-1 if r[c] is None else r[c]) for c in CELL)
        ra, rb = found_a.get(key, []), found_b.get(key, [])
        for c, v in zip(CELL, key):
            cols[c].append(v)
        cols["beyond_a"].append(bool(ra))
        cols["beyond_b"].append(bool(rb))
        cols["n_a"].append(len(ra))
        cols["n_b"].append(len(rb))
        best = lambda rows: max(rows, key=lambda x: x["abs_cos"]) if rows else None  # noqa: E731
        ba, bb = best(ra), best(rb)
        cols["label_a"].append(ba["label"] if ba else "")
        cols["label_b"].append(bb["label"] if bb else "")
        cols["cos_a"].append(ba["cos"] if ba else np.nan)
        cols["cos_b"].append(bb["cos"] if bb else np.nan)
        map_a, map_b, E_a, E_b = maps[key[0]]
        if ra and rb and max(len(ra), len(rb)) < map_a.shape[0]:
            value = float(overlap(map_a @ _vectors(al_a, key, ra), map_b @ _vectors(al_b, key, rb)))
            cols["overlap"].append(value)
            cols["p_overlap"].append(overlap_pvalue(value, map_a, map_b, len(ra), len(rb), draws, seed))
            # The selection-aware reference: A's subspace against B's *other* aligned cells of the set. Both
            # sides were chosen for aligning with the same labels, so random subspaces overlap less than any
            # two aligned ones do (hopper vs its twin: 29% of mismatched cell pairs had p_overlap < 0.05).
            others = [float(overlap(map_a @ _vectors(al_a, key, ra), map_b @ _vectors(al_b, k2, r2)))
                      for k2, r2 in found_b.items() if k2 != key and k2[0] == key[0] and len(r2) < map_b.shape[0]]
            cols["overlap_other_cells"].append(float(np.median(others)) if others else np.nan)
            cols["overlap_max_other_cell"].append(float(np.max(others)) if others else np.nan)
            cols["p_same_labels"].append(same_labels_pvalue(value, ra, rb, E_a, E_b, map_a, map_b, draws, seed))
        else:  # in one model only, or a subspace as wide as the label space: no angle to speak of
            for c in ("overlap", "p_overlap", "overlap_other_cells", "overlap_max_other_cell", "p_same_labels"):
                cols[c].append(np.nan)
    return Table({k: np.array(v, dtype=object if k in ("embedding", "weight", "side", "label_a", "label_b") else None)
                  for k, v in cols.items()})


def _agreement(cells: Table) -> Table:
    rows = {c: [] for c in ("embedding", "both", "only_a", "only_b", "neither", "jaccard")}
    names = list(dict.fromkeys(cells["embedding"]))
    for name in names:
        sub = cells.where(embedding=name)
        ba, bb = np.asarray(sub["beyond_a"], bool), np.asarray(sub["beyond_b"], bool)
        both, either = int((ba & bb).sum()), int((ba | bb).sum())
        rows["embedding"].append(name)
        rows["both"].append(both)
        rows["only_a"].append(int((ba & ~bb).sum()))
        rows["only_b"].append(int((~ba & bb).sum()))
        rows["neither"].append(int((~ba & ~bb).sum()))
        rows["jaccard"].append(both / either if either else np.nan)
    return Table({k: np.array(v, dtype=object if k == "embedding" else None) for k, v in rows.items()})


def damage_profiles(atlas_a, atlas_b) -> Table:
    """Per (block, weight, head): Spearman rho (and p) of damage by singular index between two atlases."""
    def rows(t):
        cols = {c: np.asarray(t[c]) for c in ("block", "weight", "head", "idx", "damage")}
        heads = np.array([-1 if h is None or (isinstance(h, float) and np.isnan(h)) else int(h) for h in cols["head"]])
        return {(int(b), str(w), int(h), int(i)): float(x)
                for b, w, h, i, x in zip(cols["block"], cols["weight"], heads, cols["idx"], cols["damage"])}

    da, db = rows(atlas_a), rows(atlas_b)
    groups: dict = {}
    for key in sorted(set(da) & set(db)):
        groups.setdefault(key[:3], []).append((da[key], db[key]))
    out = {c: [] for c in ("block", "weight", "head", "n", "rho", "p")}
    for (block, weight, head), pairs in groups.items():
        x, y = np.array(pairs).T
        ok = len(pairs) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0
        res = stats.spearmanr(x, y) if ok else None
        for c, v in zip(out, (block, weight, head, len(pairs), res.statistic if ok else np.nan,
                              res.pvalue if ok else np.nan)):
            out[c].append(v)
    return Table({k: np.array(v, dtype=object if k == "weight" else None) for k, v in out.items()})
