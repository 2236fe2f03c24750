"""`surgery.alignment`: cosines of every residual-facing singular vector with every embedding set, with chance.

One matrix product per (weight, side, embedding set), over all blocks and heads at once. Each
singular vector keeps its k most positive and k most negative labels (the sign of a triple is a
convention, so both ends matter), and is scored by its best |cos| against what random
directions reach against the same set (`surgery.analysis.chance`), corrected for how many vectors
were searched.

Nearly equal singular values make single vectors arbitrary within their shared span
(`surgery.analysis.subspaces`): every vector carries its relative gap, its tied group and whether it
is identifiable, and every group is scored as a subspace (the best |cos| of any unit vector in its
span) against its own chance law, corrected over the groups searched.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from adapters import WEIGHTS, Adapter, wrap
from surgery.analysis.chance import Null, SubspaceNull, null_for, subspace_null_for
from surgery.analysis.cosines import SearchSet, unit_rows
from surgery.analysis.settings import FAMILIES, NOISE, AlignmentSettings
from surgery.analysis.subspaces import near_null, projection_maxima, tie_threshold, ties
from surgery.analysis.tables import Table
from surgery.checks import integer, level
from surgery.core.decomposition import RESIDUAL_SIDES, decompose
from surgery.core.decomposition import energy as weight_energy
from surgery.core.threads import torch_threads
from surgery.errors import SurgeryError
from surgery.names import CORRECTIONS
from surgery.stats import adjust_pvalues


@dataclass
class Group:
    """Singular vectors of one (weight, side) gathered over blocks and heads: one matrix product per set."""

    weight: str
    side: str
    directions: torch.Tensor  # [N, d] unit rows
    block: np.ndarray
    head: np.ndarray  # -1 for K and V
    idx: np.ndarray
    sv: np.ndarray
    location: np.ndarray  # index into the group's locations
    rank: int  # triples the weight has
    locations: list  # (block, head) per location
    triples: list  # per location: (all residual vectors [r, d], S [r]) for the selectivity and the subspaces
    ties: list  # per location: its spectrum's subspaces.Ties
    rel_gap: np.ndarray  # per vector, from ties
    group: np.ndarray  # first triple of the vector's group
    group_size: np.ndarray
    identifiable: np.ndarray
    energy: np.ndarray  # per vector: S_i^2 / sum S^2, its share of the weight's (head's) energy
    near_null: np.ndarray  # per vector: S_i below the weight's noise floor (subspaces.near_null)
    layout: "_Layout | None" = None  # made once by _layout


@dataclass
class Alignment:
    """What `alignment` found: tidy records, one row per vector, one row per weight; the nulls used."""

    records: Table
    """Per (embedding, block, weight, head, side, idx, tail, rank): the label, cos, p, p_adj, z, and the
    vector's tied group (group, group_size, identifiable)."""
    vectors: Table
    """Per (embedding, singular vector): its best label by |cos| and how far that is beyond chance; its
    singular value, share of the weight's energy and whether it is below the noise floor (near_null);
    its relative gap, tied group and identifiability; its group's subspace score (subspace_cos, subspace_label,
    subspace_p, subspace_p_adj)."""
    weights: Table
    """Per (embedding, block, weight, head, side): how many vectors beat chance (n_significant: above the noise
    floor; n_near_null: below it, not counted), the best one (above the floor first), the selectivity."""
    groups: Table | None = None
    """Per (embedding, block, weight, head, side, group) searched: its size, subspace score, p and p_adj."""
    nulls: dict = field(default_factory=dict)
    """Embedding set -> the `chance.Null` of its max |cos|."""
    subspace_nulls: dict = field(default_factory=dict)
    """Embedding set -> the `chance.SubspaceNull` of its max projection on a random k-dimensional span."""
    family_size: dict = field(default_factory=dict)
    """Embedding set -> number of comparisons its p-values were corrected for."""
    group_family_size: dict = field(default_factory=dict)
    """Embedding set -> number of groups its subspace p-values were corrected for."""
    settings: "AlignmentSettings | None" = None
    """What was compared and how, every default resolved."""
    adapter: Adapter | None = None

    def to_csv(self, path=None) -> str:
        """The tidy records as CSV text (also written to path if given)."""
        return self.records.to_csv(path)

    def to_json(self, path=None) -> str:
        """The tidy records as a JSON list of objects (also written to path if given)."""
        return self.records.to_json(path)

    def to_pandas(self):
        """The tidy records as a pandas DataFrame."""
        return self.records.to_pandas()

    def threshold(self, embedding: str, alpha: float | None = None) -> float:
        """|cos| a vector must reach with `embedding` to beat chance at alpha, after the correction.

        Holm and Bonferroni: alpha / m (the strongest vector's bar; later ones' bars are at least as high).
        Benjamini-Hochberg and -Yekutieli are step-up: with k vectors of the family beyond chance, every
        vector with p <= k alpha / m (BY: divided by sum_{i<=m} 1/i) is, so the bar is the realised one
        (with none, the strongest's: k = 1).
        """
        alpha = self.settings.alpha if alpha is None else alpha
        s = self.settings
        if s.correction == "none":
            return self.nulls[embedding].threshold(alpha)
        m = max(self.family_size[embedding], 1)
        p = alpha / m
        if s.correction in ("bh", "by"):
            v = self.vectors if s.family != "set" else self.vectors.where(embedding=embedding)
            k = max(1, int(np.sum(np.asarray(v["p_adj"], float) < alpha)))
            p = k * alpha / m / (float(np.sum(1.0 / np.arange(1, m + 1))) if s.correction == "by" else 1.0)
        return self.nulls[embedding].threshold(p)

    def __repr__(self) -> str:
        s = self.settings
        return (f"Alignment({len(self.vectors)} vector-set pairs, {len(self.records)} records; "
                f"embeddings={list(s.embeddings)}, weights={list(s.weights)}, top={s.top})")


def alignment(model, settings: AlignmentSettings | None = None, *, progress: bool | None = None,
              **overrides) -> Alignment:
    """Cosines of singular vectors with unit-normalised embeddings, scored against chance.

    model: a loaded model or a raw Hugging Face / TransformerLens model.
    settings: an AlignmentSettings (default: every embedding set x every residual-facing singular
        vector of K, V, OV and QK in every block and head, 10 labels kept at each end, Holm's
        correction within each set, alpha 0.05). `help(surgery.analysis.settings.AlignmentSettings)`
        documents every field: embeddings, weights, blocks, heads, vectors, top, fold_ln, sides,
        dtype, method, draws, seed, correction, family, alpha.
    **overrides: any of those fields by keyword, replacing the settings' value.
    progress: show progress bars (vocabulary-sized sets take a while).

    Returns an `Alignment`: `.records` (one row per vector and label kept: cos, p, p_adj, z),
    `.vectors` (one row per vector: its best label), `.weights` (one row per weight: how many
    vectors beat chance, the selectivity), the chance laws in `.nulls`, and `.settings` resolved.

    Examples:

    >>> a = alignment(model, embeddings="action_out", weights=["K", "V"], top=2)
    >>> a.settings.weights, a.settings.top
    (('K', 'V'), 2)
    >>> best = a.vectors.sort("p_adj").row(0)                 # the vector most beyond chance
    >>> best["weight"], best["p_adj"] < 0.05
    ('V', True)
    >>> from surgery.analysis.settings import AlignmentSettings
    >>> a = alignment(model, AlignmentSettings(blocks=(0,), correction="bh"), vectors=8)
    """
    unknown = sorted(set(overrides) - {f.name for f in fields(AlignmentSettings)})
    if unknown:
        raise SurgeryError(f"unknown alignment setting(s) {unknown}; valid: "
                           f"{', '.join(f.name for f in fields(AlignmentSettings))}")
    s = replace(settings or AlignmentSettings(), **overrides)
    adapter = wrap(model)
    sets = adapter.embedding_sets()
    names = _check_embeddings(s.embeddings, sets)
    weights = _check_weights(s.weights)
    blocks = _check_indices(s.blocks, adapter.n_blocks, "block", "blocks")
    heads = _check_indices(s.heads, adapter.n_heads, "head", "heads")
    if isinstance(s.top, bool) or not isinstance(s.top, int) or s.top < 1:
        raise SurgeryError(f"top={s.top!r} must be a positive integer (labels kept at each end)")
    if s.correction not in CORRECTIONS:
        raise SurgeryError(f"correction={s.correction!r} is not known; valid: {', '.join(map(repr, CORRECTIONS))}")
    if s.family not in FAMILIES:
        raise SurgeryError(f"family={s.family!r} is not known; valid: {', '.join(map(repr, FAMILIES))}")
    level(s.alpha)
    integer(s.seed, "seed", low=0)
    if s.draws is not None:
        integer(s.draws, "draws", low=1)
    if s.noise is not None:
        tie_threshold(s.noise, (1, 1))  # raises a SurgeryError naming what is valid
    plan = _plan(adapter, weights, s.sides)
    _check_vectors(s.vectors, adapter, [w for w, _ in plan])
    small = _small(adapter, [sets[n] for n in names])
    dtype = _check_dtype(s.dtype) or (torch.float64 if small else torch.float32)
    with _one_thread(small):
        groups = [_gather(adapter, w, side, blocks, heads, s.vectors, s.fold_ln, dtype, s.method, s.noise)
                  for w, side in plan]
        nulls, sub_nulls, per_set = {}, {}, {}
        for name in names:
            nulls[name] = null_for(sets[name].vectors, draws=s.draws, seed=s.seed, progress=bool(progress))
            sub_nulls[name] = subspace_null_for(sets[name].vectors, seed=s.seed)
            per_set[name] = _score_set(adapter, sets[name], groups, s.top, nulls[name], sub_nulls[name], dtype,
                                       progress)
        family_size = _correct(per_set, s.correction, s.family)
        group_family = _correct_groups(per_set, s.correction, s.family)
        tables = [[], [], [], []]
        for name in names:
            labels = sets[name].labels
            for g, sc in zip(groups, per_set[name]):
                tables[0].append(_records(name, g, sc, labels, nulls[name], family_size[name], s.correction))
                tables[1].append(_vector_table(name, g, sc, labels))
                tables[2].append(_weight_table(name, g, sc, labels, s.alpha))
                tables[3].append(_group_table(name, g, sc, labels, s.alpha))
    used = replace(s, embeddings=tuple(names), weights=tuple(weights), blocks=tuple(blocks), heads=tuple(heads),
                   dtype=str(dtype).replace("torch.", ""))
    records, vectors, weights_, groups_ = (Table.concat(t) for t in tables)
    return Alignment(records, vectors, weights_, groups_, nulls, sub_nulls, family_size, group_family, used, adapter)


def _check_dtype(dtype) -> torch.dtype | None:
    """None, or float32/float64 given as a torch dtype or its name."""
    named = {"float32": torch.float32, "float64": torch.float64}
    if dtype is None or dtype in named.values():
        return dtype
    if dtype in named:
        return named[dtype]
    raise SurgeryError(f"dtype={dtype!r} is not supported for alignment; valid: None (auto), 'float32', 'float64'")


def _small(adapter, sets) -> bool:
    """A DT-sized problem: narrow model, a few thousand labels at most."""
    return adapter.d_model <= 256 and sum(s.vectors.shape[0] for s in sets) <= 20_000


def _one_thread(small: bool):
    """Run small problems on one thread: for a DT's 128-wide matrices, waking a second BLAS thread costs
    more than it saves, and on a busy machine a contended thread pool makes each call ~100x slower."""
    return torch_threads(1 if small else None)


# ---- validation ------------------------------------------------------------------------------------
def _check_embeddings(embeddings, sets) -> list[str]:
    names = list(sets) if embeddings is None else [embeddings] if isinstance(embeddings, str) else list(embeddings)
    unknown = [n for n in names if n not in sets]
    if unknown or not names:
        raise SurgeryError(f"unknown embedding set(s) {unknown or names}; this model has: {', '.join(sets)}")
    return list(dict.fromkeys(names))


def _check_weights(weights) -> list[str]:
    weights = [weights] if isinstance(weights, str) else list(weights)
    bad = [w for w in weights if w not in WEIGHTS]
    if bad or not weights:
        raise SurgeryError(f"unknown weight(s) {bad or weights}; valid: {', '.join(map(repr, WEIGHTS))}")
    return list(dict.fromkeys(weights))


def _check_indices(values, n: int, what: str, plural: str) -> list[int]:
    if values is None:
        return list(range(n))
    values = [values] if isinstance(values, int) else list(values)
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < n]
    if bad or not values:
        raise SurgeryError(f"{what} {bad or values} out of range: this model has {n} {plural} (valid: 0..{n - 1})")
    return sorted(set(int(v) for v in values))


def _plan(adapter, weights, sides) -> list[tuple[str, str]]:
    if sides not in (None, "in", "out"):
        raise SurgeryError(f"sides={sides!r} is not valid; valid: None (every residual-facing side), 'in' or 'out'")
    plan = [(w, s) for w in weights for s in RESIDUAL_SIDES[w] if sides in (None, s)]
    if not plan:
        faces = "; ".join(f"{w}: {', '.join(RESIDUAL_SIDES[w])}" for w in weights)
        raise SurgeryError(f"no residual-facing side {sides!r} among weights {weights} ({faces}): "
                           "only residual-facing sides can be compared with d_model embeddings")
    return plan


def _check_vectors(vectors, adapter, weights) -> None:
    if vectors is None or isinstance(vectors, slice):
        return
    if isinstance(vectors, (int, np.integer)) and not isinstance(vectors, bool):
        if vectors < 1:
            raise SurgeryError(f"vectors={vectors!r} must be a positive number of leading triples")
        return
    if not isinstance(vectors, (list, tuple, range, np.ndarray, torch.Tensor)):
        raise SurgeryError(f"vectors={vectors!r} must be a number of leading triples, a list of indices or a slice")
    idx = list(vectors)
    r = min(adapter.rank(w) for w in weights)
    bad = [i for i in idx if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < r]
    if bad or not idx:
        ranks = ", ".join(f"{w}: {adapter.rank(w)}" for w in weights)
        raise SurgeryError(f"vector index {bad or idx} out of range; triples per weight: {ranks} (valid: 0..{r - 1})")


def _select(vectors, r: int) -> np.ndarray:
    if vectors is None:
        return np.arange(r)
    if isinstance(vectors, slice):
        return np.arange(r)[vectors]
    if isinstance(vectors, (int, np.integer)):
        return np.arange(min(int(vectors), r))
    return np.asarray(sorted(set(int(i) for i in vectors)))


# ---- the singular vectors ------------------------------------------------------------------------
def _gather(adapter, weight, side, blocks, heads, vectors, fold_ln, dtype, method, noise) -> Group:
    """Every selected singular vector of one (weight, side) as rows of one matrix, with where it came from."""
    per_head = weight in ("OV", "QK")
    rank = adapter.rank(weight)
    rows, cols, locations, triples, tied = [], [], [], [], []
    kwargs = {} if method is None else {"method": method}
    if method not in (None, "exact") and isinstance(vectors, (int, np.integer)) and not isinstance(vectors, bool):
        kwargs["k"] = min(int(vectors), adapter.rank(weight))  # fast routes compute only the leading triples
    for b in blocks:
        svd = decompose(adapter, b, weight, fold_ln=fold_ln, dtype=dtype, **kwargs)
        totals = None  # ||W||_F^2, only when a fast route left triples out
        vec = svd.vectors(side)  # [d, r], or [H, d, r] for OV and QK
        for h in (heads if per_head else [-1]):
            V = (vec[h] if per_head else vec).to(dtype)
            S = (svd.S[h] if per_head else svd.S).to(dtype)
            pick = _select(vectors, S.shape[0])
            full = lambda v: np.full(pick.size, v)  # noqa: E731
            # A head's OV/QK (rank d_head < d_model) has the zeros of the complement below its last triple.
            level = NOISE[weight] if noise is None else noise
            S64 = S.double().numpy()
            t = ties(S64, level, shape(adapter, weight), complement=adapter.d_model > rank, complete=S.shape[0] == rank)
            # Share of the whole matrix's energy; a fast route has only k triples, so the total comes from ||W||_F^2.
            if S.shape[0] < rank and totals is None:
                totals = weight_energy(adapter, b, weight, fold_ln)
            total = float((S64 ** 2).sum()) if S.shape[0] == rank else float(totals[h] if per_head else totals)
            energy = S64 ** 2 / max(total, np.finfo(float).tiny)
            cols.append((full(b), full(h), pick, full(len(locations)), S64[pick],
                         t.rel_gap[pick], t.group[pick], t.size[pick], t.identifiable[pick], energy[pick],
                         near_null(S64, level)[pick]))
            locations.append((b, h))
            triples.append((V.T, S))
            tied.append(t)
            rows.append(V[:, pick].T)
    block, head, idx, location, sv, gap, grp, size, ident, energy, null = (np.concatenate(c) for c in zip(*cols))
    # Singular vectors are unit already; renormalising guards against drift in float32 products.
    D = unit_rows(torch.cat(rows), dtype)
    return Group(weight, side, D, block, head, idx, sv, location, rank, locations, triples, tied, gap, grp, size,
                 ident, energy, null)


def shape(adapter, weight: str) -> tuple[int, int]:
    """(m, n) of a weight as decomposed: K [d_model, d_mlp], V [d_mlp, d_model], a head's OV or QK [d_model, d_model]."""
    return {"K": (adapter.d_model, adapter.d_mlp), "V": (adapter.d_mlp, adapter.d_model)}.get(
        weight, (adapter.d_model, adapter.d_model))


# ---- scoring -----------------------------------------------------------------------------------------
@dataclass
class _Scored:
    ext: object  # cosines.Extremes
    best_cos: np.ndarray
    best_label: np.ndarray
    p: np.ndarray
    z: np.ndarray
    selectivity: np.ndarray  # per location
    selectivity_z: np.ndarray
    groups: "_GroupScores"
    p_adj: np.ndarray | None = None


@dataclass
class _GroupScores:
    """Every tied group holding a searched vector, scored as a subspace; `row` maps each vector to its group."""

    location: np.ndarray
    first: np.ndarray
    size: np.ndarray
    open: np.ndarray
    score: np.ndarray  # nan where open (the span is not determined)
    label: np.ndarray  # -1 where open
    p: np.ndarray  # nan where open
    row: np.ndarray  # [N] per searched vector
    p_adj: np.ndarray | None = None


def _score_set(adapter, es, groups, top: int, null: Null, sub_null: SubspaceNull, dtype, progress) -> list[_Scored]:
    """Every group's singular vectors against one embedding set."""
    if es.vectors.shape[-1] != adapter.d_model:
        raise SurgeryError(f"embedding set {es.name!r} has vectors of length {es.vectors.shape[-1]}, "
                           f"not d_model={adapter.d_model}")
    E = unit_rows(es.vectors, dtype)
    gram = (E.T @ E).double()  # sum_j e_j e_j^T, for the selectivity (in the analysis dtype: a 50k-row product)
    search = SearchSet(E)  # prepared once for all groups
    return [_score(g, search, E, gram, top, null, sub_null, progress) for g in groups]


def _score(g: Group, search: SearchSet, E, gram: torch.Tensor, top: int, null: Null, sub_null: SubspaceNull,
           progress) -> _Scored:
    lay = _layout(g)
    ext = search.extremes(g.directions, top, progress=progress, desc=f"{g.weight} {g.side}", groups=lay.searched)
    pos = ext.top[:, 0] >= -ext.bottom[:, 0]
    best_cos = torch.where(pos, ext.top[:, 0], ext.bottom[:, 0]).double().numpy()
    best_label = torch.where(pos, ext.top_idx[:, 0], ext.bottom_idx[:, 0]).numpy()
    sel, sel_z = _selectivity(g, gram)
    p = null.pvalue(best_cos)
    groups = _score_groups(g, lay, ext, E, best_cos, best_label, p, sub_null)
    return _Scored(ext, best_cos, best_label, p, null.zscore(best_cos), sel, sel_z, groups)


@dataclass
class _Layout:
    """Where the groups of a Group's searched vectors are: the same for every embedding set, so made once."""

    location: np.ndarray  # [G]
    first: np.ndarray
    size: np.ndarray
    open: np.ndarray
    row: np.ndarray  # [N]: each searched vector's group
    lone: np.ndarray  # groups that are one identifiable triple
    lone_vector: np.ndarray  # ... and that vector's row
    inside: np.ndarray  # tied groups wholly searched, in the order of `searched`
    searched: list  # (first row, size) of those groups in g.directions, ascending: scored in the search pass
    outside: np.ndarray  # tied groups with members not searched: projected separately


def _layout(g: Group) -> _Layout:
    if g.layout is not None:
        return g.layout
    parts, offset = [], 0
    row = np.empty(g.idx.size, dtype=np.int64)
    lone_vector, first_row = [], []
    for loc, (t, mine) in enumerate(zip(g.ties, _by_location(g))):
        idx = g.idx[mine]
        firsts, pos, inverse = np.unique(t.group[idx], return_index=True, return_inverse=True)
        row[mine] = offset + inverse
        size = t.size[firsts]
        parts.append((np.full(firsts.size, loc), firsts, size, t.open[firsts]))
        lone_vector.append(mine[pos])
        # Wholly searched: the group's first and last members are both searched, size - 1 rows apart (a location's
        # rows follow idx in ascending order, so nothing else can lie between them).
        last = np.minimum(np.searchsorted(idx, firsts + size - 1), idx.size - 1)
        whole = (idx[pos] == firsts) & (idx[last] == firsts + size - 1) & (last - pos == size - 1)
        first_row.append(np.where(whole, mine[pos], -1))
        offset += firsts.size
    loc, first, size, is_open = (np.concatenate(c) for c in zip(*parts))
    lone_vector, first_row = np.concatenate(lone_vector), np.concatenate(first_row)
    tied = (size > 1) & ~is_open
    lone = (size == 1) & ~is_open
    inside = np.flatnonzero(tied & (first_row >= 0))
    inside = inside[np.argsort(first_row[inside], kind="stable")]
    g.layout = _Layout(loc, first, size, is_open, row, np.flatnonzero(lone), lone_vector[lone], inside,
                       [(int(first_row[q]), int(size[q])) for q in inside], np.flatnonzero(tied & (first_row < 0)))
    return g.layout


def _score_groups(g: Group, lay: _Layout, ext, E, best_cos, best_label, p, sub_null: SubspaceNull) -> _GroupScores:
    """Score every group that holds a searched vector: a lone triple by its own best |cos| and p (a 1-dimensional
    span is the vector), a tied group by its best projection (from the search pass, or projected here when not
    all of it was searched) against the subspace law of its size."""
    G = lay.first.size
    score, label, pv = np.full(G, np.nan), np.full(G, -1), np.full(G, np.nan)
    v = lay.lone_vector
    score[lay.lone], label[lay.lone], pv[lay.lone] = np.abs(best_cos[v]), best_label[v], p[v]
    if lay.inside.size:
        score[lay.inside] = ext.group_sq.double().clamp(0.0, 1.0).sqrt().numpy()
        label[lay.inside] = ext.group_idx.numpy()
    if lay.outside.size:
        d = g.directions.shape[1]
        bases, comp = [], []
        for q in lay.outside:
            f, z = int(lay.first[q]), int(lay.size[q])
            vecs = g.triples[lay.location[q]][0]  # [r, d]: every residual vector of the location
            # A wide group of a weight whose triples span R^d: project on the other triples instead.
            wide = vecs.shape[0] == d and 2 * z > d
            bases.append(torch.cat([vecs[:f], vecs[f + z:]]) if wide else vecs[f:f + z])
            comp.append(wide)
        score[lay.outside], label[lay.outside] = projection_maxima(bases, E, comp)
    tied = (lay.size > 1) & ~lay.open
    pv[tied] = sub_null.pvalue(score[tied], lay.size[tied])
    return _GroupScores(lay.location, lay.first, lay.size, lay.open, score, label, pv, lay.row)


def _by_location(g: Group) -> list[np.ndarray]:
    """Rows of g.directions per location, in order."""
    order = np.argsort(g.location, kind="stable")
    return np.split(order, np.searchsorted(g.location[order], np.arange(1, len(g.locations))))


def _selectivity(g: Group, gram: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per location: how strongly the weight reads (writes) the set, relative to an average direction, and its z.

    T = mean_j |e_j^T W|^2 / (|W|_F^2 / d) (write side: |W e_j|^2) = tr(G M) / n / (tr M / d) with
    G = sum_j e_j e_j^T and M = V S^2 V^T over all the location's triples. T = 1 means no
    preference. For the set (equivalently, the weight) turned by a uniformly random rotation R,
    E tr(G R M R^T) = tr G tr M / d and Var = 2 (tr G^2 - (tr G)^2/d)(tr M^2 - (tr M)^2/d) / ((d-1)(d+2)),
    which gives the z-score.
    """
    d = gram.shape[0]
    V = torch.stack([v for v, _ in g.triples])  # [L, r, d]: every triple of every location, analysis dtype
    s2 = torch.stack([s for _, s in g.triples]).double() ** 2  # [L, r]
    if V.shape[1] < g.rank:  # a fast route computed only the leading triples: the whole weight is unknown
        nan = np.full(V.shape[0], np.nan)
        return nan, nan.copy()
    q = ((V @ gram.to(V.dtype)) * V).sum(-1).double()  # float32 for wide models: a ratio needs no more
    trM, trM2 = s2.sum(1), (s2 ** 2).sum(1)
    trG, trG2 = torch.trace(gram), (gram * gram).sum()
    tr_GM = (s2 * q).sum(1)
    sel = tr_GM / trG.clamp_min(1e-300) / (trM / d)  # tr G = n, the set's (nonzero) vectors
    var = 2 * (trG2 - trG ** 2 / d) * (trM2 - trM ** 2 / d) / ((d - 1) * (d + 2))
    z = (tr_GM - trG * trM / d) / var.sqrt()
    nan = torch.full_like(sel, float("nan"))
    return (torch.where(trM > 0, sel, nan).numpy(),
            torch.where((trM > 0) & (var > 1e-12 * (trG * trM / d) ** 2), z, nan).numpy())


def _correct(per_set: dict, correction: str, family: str) -> dict:
    """Fill p_adj per vector: one family per embedding set, or one over everything."""
    if family == "set":
        sizes = {}
        for name, scored in per_set.items():
            p = np.concatenate([s.p for s in scored]) if scored else np.zeros(0)
            _split_back(scored, adjust_pvalues(p, correction))
            sizes[name] = p.size
        return sizes
    all_scored = [s for scored in per_set.values() for s in scored]
    p = np.concatenate([s.p for s in all_scored]) if all_scored else np.zeros(0)
    _split_back(all_scored, adjust_pvalues(p, correction))
    return {name: p.size for name in per_set}


def _correct_groups(per_set: dict, correction: str, family: str) -> dict:
    """Fill the groups' p_adj: one family per set (or one over all), open groups (no p) left out."""
    families = [[s.groups for s in scored] for scored in per_set.values()] if family == "set" \
        else [[s.groups for scored in per_set.values() for s in scored]]
    sizes = []
    for fam in families:
        p = np.concatenate([gs.p for gs in fam]) if fam else np.zeros(0)
        ok = np.isfinite(p)
        adj = np.full(p.size, np.nan)
        adj[ok] = adjust_pvalues(p[ok], correction)
        start = 0
        for gs in fam:
            gs.p_adj = adj[start:start + gs.p.size]
            start += gs.p.size
        sizes.append(int(ok.sum()))
    return dict(zip(per_set, sizes)) if family == "set" else {name: sizes[0] for name in per_set}


def _split_back(scored, adjusted) -> None:
    start = 0
    for s in scored:
        s.p_adj = adjusted[start:start + s.p.size]
        start += s.p.size


# ---- tables ------------------------------------------------------------------------------------------
def _label_strings(labels, index: np.ndarray) -> np.ndarray:
    """Label strings for many indices, looking each distinct one up once (token decoding is slow)."""
    uniq, inv = np.unique(index, return_inverse=True)
    names = np.array([str(labels[int(i)]) for i in uniq], dtype=object)
    return names[inv.reshape(index.shape)] if index.size else np.array([], dtype=object)


def _records(name, g: Group, sc: _Scored, labels, null: Null, m: int, correction: str) -> Table:
    ext = sc.ext
    k = ext.top.shape[1]
    n_vec = g.idx.size
    cos = torch.cat([ext.top, ext.bottom], dim=1).double().numpy()  # [N, 2k]
    lab = torch.cat([ext.top_idx, ext.bottom_idx], dim=1).numpy()
    tail = np.repeat(np.array(["top", "bottom"], dtype=object), k)
    rank = np.tile(np.arange(1, k + 1), 2)
    p = null.pvalue(cos)
    best = (rank == 1)[None, :] & (np.abs(cos) == np.abs(sc.best_cos)[:, None])
    if correction == "none":
        p_adj = p
    else:
        # The best label's p is the vector's, corrected as such; any other label of that vector is
        # at least as far from significance: its own p times the family size (Bonferroni), floored there.
        p_adj = np.maximum(sc.p_adj[:, None], np.minimum(1.0, p * m))
        p_adj = np.where(best, sc.p_adj[:, None], p_adj)
    rep = lambda a: np.repeat(a, 2 * k)  # noqa: E731
    return Table({
        "embedding": np.full(n_vec * 2 * k, name, dtype=object),
        "block": rep(g.block), "weight": np.full(n_vec * 2 * k, g.weight, dtype=object), "head": rep(g.head),
        "side": np.full(n_vec * 2 * k, g.side, dtype=object), "idx": rep(g.idx), "singular_value": rep(g.sv),
        "tail": np.tile(tail, n_vec), "rank": np.tile(rank, n_vec),
        "label": _label_strings(labels, lab.ravel()), "label_index": lab.ravel(),
        "cos": cos.ravel(), "abs_cos": np.abs(cos).ravel(), "p": p.ravel(), "p_adj": p_adj.ravel(),
        "z": null.zscore(cos).ravel(),
        "group": rep(g.group), "group_size": rep(g.group_size), "identifiable": rep(g.identifiable),
    }, nullable=("head",))


def _vector_table(name, g: Group, sc: _Scored, labels) -> Table:
    n = g.idx.size
    gs = sc.groups
    return Table({
        "embedding": np.full(n, name, dtype=object), "block": g.block, "weight": np.full(n, g.weight, dtype=object),
        "head": g.head, "side": np.full(n, g.side, dtype=object), "idx": g.idx, "singular_value": g.sv,
        "label": _label_strings(labels, sc.best_label), "label_index": sc.best_label,
        "cos": sc.best_cos, "abs_cos": np.abs(sc.best_cos), "p": sc.p, "p_adj": sc.p_adj, "z": sc.z,
        "energy": g.energy, "near_null": g.near_null,
        "rel_gap": g.rel_gap, "group": g.group, "group_size": g.group_size, "identifiable": g.identifiable,
        "subspace_cos": gs.score[gs.row], "subspace_label": _group_labels(labels, gs.label)[gs.row],
        "subspace_p": gs.p[gs.row], "subspace_p_adj": gs.p_adj[gs.row],
    }, nullable=("head",))


def _group_labels(labels, index: np.ndarray) -> np.ndarray:
    """Label strings of groups' best labels; "" for an open group (no score)."""
    out = _label_strings(labels, np.maximum(index, 0))
    out[index < 0] = ""
    return out


def _weight_table(name, g: Group, sc: _Scored, labels, alpha: float) -> Table:
    L = len(g.locations)
    cols = {k: [] for k in ("block", "head", "n_vectors", "n_significant", "n_near_null", "n_tied", "selectivity",
                            "selectivity_z",
                            "best_idx", "best_label", "best_cos", "best_p_adj", "best_z", "best_identifiable",
                            "best_singular_value", "best_energy", "best_near_null")}
    for loc, (b, h) in enumerate(g.locations):
        mine = np.flatnonzero(g.location == loc)
        cols["block"].append(b)
        cols["head"].append(h)
        cols["n_vectors"].append(mine.size)
        beyond = sc.p_adj[mine] < alpha
        cols["n_significant"].append(int((beyond & ~g.near_null[mine]).sum()))  # near-null ones carry nothing
        cols["n_near_null"].append(int((beyond & g.near_null[mine]).sum()))
        cols["n_tied"].append(int((~g.identifiable[mine]).sum()))
        cols["selectivity"].append(sc.selectivity[loc])
        cols["selectivity_z"].append(sc.selectivity_z[loc])
        if mine.size:  # the best: a vector above the noise floor first, then by p_adj, then by |cos|
            j = mine[np.lexsort((-np.abs(sc.best_cos[mine]), sc.p_adj[mine], g.near_null[mine]))[0]]
            cols["best_idx"].append(int(g.idx[j]))
            cols["best_label"].append(str(labels[int(sc.best_label[j])]))
            cols["best_cos"].append(float(sc.best_cos[j]))
            cols["best_p_adj"].append(float(sc.p_adj[j]))
            cols["best_z"].append(float(sc.z[j]))
            cols["best_identifiable"].append(bool(g.identifiable[j]))
            cols["best_singular_value"].append(float(g.sv[j]))
            cols["best_energy"].append(float(g.energy[j]))
            cols["best_near_null"].append(bool(g.near_null[j]))
        else:
            for c, v in (("best_idx", -1), ("best_label", ""), ("best_cos", np.nan), ("best_p_adj", np.nan),
                         ("best_z", np.nan), ("best_identifiable", False), ("best_singular_value", np.nan),
                         ("best_energy", np.nan), ("best_near_null", False)):
                cols[c].append(v)
    return Table({"embedding": np.full(L, name, dtype=object), "block": np.array(cols["block"], dtype=int),
                  "weight": np.full(L, g.weight, dtype=object), "head": np.array(cols["head"], dtype=int),
                  "side": np.full(L, g.side, dtype=object),
                  **{c: np.array(cols[c], dtype=object if c == "best_label" else None)
                     for c in ("n_vectors", "n_significant", "n_near_null", "n_tied", "selectivity", "selectivity_z",
                               "best_idx",
                               "best_label", "best_cos", "best_p_adj", "best_z", "best_identifiable",
                               "best_singular_value", "best_energy", "best_near_null")}},
                 nullable=("head", "best_idx"))


def _group_table(name, g: Group, sc: _Scored, labels, alpha: float) -> Table:
    """One row per group holding a searched vector: where, which triples, its subspace score against chance, and how
    many of its searched members beat chance alone (the best of them for comparison)."""
    gs = sc.groups
    G = gs.first.size
    n_sig = np.zeros(G, dtype=int)
    np.add.at(n_sig, gs.row, sc.p_adj < alpha)
    best_member = np.zeros(G)
    np.maximum.at(best_member, gs.row, np.abs(sc.best_cos))
    loc_block = np.array([b for b, _ in g.locations], dtype=int)
    loc_head = np.array([h for _, h in g.locations], dtype=int)
    return Table({
        "embedding": np.full(G, name, dtype=object), "block": loc_block[gs.location],
        "weight": np.full(G, g.weight, dtype=object), "head": loc_head[gs.location],
        "side": np.full(G, g.side, dtype=object), "group": gs.first, "group_size": gs.size, "open": gs.open,
        "subspace_cos": gs.score, "label": _group_labels(labels, gs.label), "label_index": gs.label,
        "p": gs.p, "p_adj": gs.p_adj, "n_significant": n_sig, "best_member_abs_cos": best_member,
    }, nullable=("head", "label_index"))
