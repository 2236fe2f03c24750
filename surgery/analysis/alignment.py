"""`surgery.alignment`: cosines of every residual-facing singular vector with every embedding set, with chance.

One matrix product per (weight, side, embedding set), over all blocks and heads at once. Each
singular vector keeps its k most positive and k most negative labels (the sign of a triple is a
convention, so both ends matter), and is scored by its best |cos| against what random
directions reach against the same set (`surgery.analysis.chance`), corrected for how many vectors
were searched.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from adapters import WEIGHTS, Adapter, wrap
from surgery.analysis.chance import Null, null_for
from surgery.analysis.cosines import SearchSet, unit_rows
from surgery.analysis.settings import FAMILIES, AlignmentSettings
from surgery.analysis.tables import Table
from surgery.core.decomposition import RESIDUAL_SIDES, decompose
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
    triples: list  # per location: (all residual vectors [r, d], S [r]) for the selectivity


@dataclass
class Alignment:
    """What `alignment` found: tidy records, one row per vector, one row per weight; the nulls used."""

    records: Table
    """Per (embedding, block, weight, head, side, idx, tail, rank): the label, cos, p, p_adj, z."""
    vectors: Table
    """Per (embedding, singular vector): its best label by |cos| and how far that is beyond chance."""
    weights: Table
    """Per (embedding, block, weight, head, side): how many vectors beat chance, the best one, the selectivity."""
    nulls: dict = field(default_factory=dict)
    """Embedding set -> the `chance.Null` of its max |cos|."""
    family_size: dict = field(default_factory=dict)
    """Embedding set -> number of comparisons its p-values were corrected for."""
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
        """|cos| the strongest vector must reach with `embedding` to beat chance at alpha, after the correction."""
        alpha = self.settings.alpha if alpha is None else alpha
        m = 1 if self.settings.correction == "none" else max(self.family_size[embedding], 1)
        return self.nulls[embedding].threshold(alpha / m)

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
    if not 0 < s.alpha < 1:
        raise SurgeryError(f"alpha={s.alpha!r} must be between 0 and 1")
    plan = _plan(adapter, weights, s.sides)
    _check_vectors(s.vectors, adapter, [w for w, _ in plan])
    small = _small(adapter, [sets[n] for n in names])
    dtype = _check_dtype(s.dtype) or (torch.float64 if small else torch.float32)
    with _one_thread(small):
        groups = [_gather(adapter, w, side, blocks, heads, s.vectors, s.fold_ln, dtype, s.method) for w, side in plan]
        nulls, per_set = {}, {}
        for name in names:
            nulls[name] = null_for(sets[name].vectors, draws=s.draws, seed=s.seed, progress=bool(progress))
            per_set[name] = _score_set(adapter, sets[name], groups, s.top, nulls[name], dtype, progress)
        family_size = _correct(per_set, s.correction, s.family)
        tables = [[], [], []]
        for name in names:
            labels = sets[name].labels
            for g, sc in zip(groups, per_set[name]):
                tables[0].append(_records(name, g, sc, labels, nulls[name], family_size[name], s.correction))
                tables[1].append(_vector_table(name, g, sc, labels))
                tables[2].append(_weight_table(name, g, sc, labels, s.alpha))
    used = replace(s, embeddings=tuple(names), weights=tuple(weights), blocks=tuple(blocks), heads=tuple(heads),
                   dtype=str(dtype).replace("torch.", ""))
    return Alignment(*(Table.concat(t) for t in tables), nulls, family_size, used, adapter)


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


@contextmanager
def _one_thread(small: bool):
    """Run small problems on one thread: for a DT's 128-wide matrices, waking a second BLAS thread costs
    more than it saves, and on a busy machine a contended thread pool makes each call ~100x slower."""
    before = torch.get_num_threads()
    if small and before > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


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
def _gather(adapter, weight, side, blocks, heads, vectors, fold_ln, dtype, method) -> Group:
    """Every selected singular vector of one (weight, side) as rows of one matrix, with where it came from."""
    per_head = weight in ("OV", "QK")
    rows, cols, locations, triples = [], [], [], []
    kwargs = {} if method is None else {"method": method}
    if method not in (None, "exact") and isinstance(vectors, (int, np.integer)) and not isinstance(vectors, bool):
        kwargs["k"] = min(int(vectors), adapter.rank(weight))  # fast routes compute only the leading triples
    for b in blocks:
        svd = decompose(adapter, b, weight, fold_ln=fold_ln, dtype=dtype, **kwargs)
        vec = svd.vectors(side)  # [d, r], or [H, d, r] for OV and QK
        for h in (heads if per_head else [-1]):
            V = (vec[h] if per_head else vec).to(dtype)
            S = (svd.S[h] if per_head else svd.S).to(dtype)
            pick = _select(vectors, S.shape[0])
            full = lambda v: np.full(pick.size, v)  # noqa: E731
            cols.append((full(b), full(h), pick, full(len(locations)), S[pick].double().numpy()))
            locations.append((b, h))
            triples.append((V.T, S))
            rows.append(V[:, pick].T)
    block, head, idx, location, sv = (np.concatenate(c) for c in zip(*cols))
    # Singular vectors are unit already; renormalising guards against drift in float32 products.
    D = unit_rows(torch.cat(rows), dtype)
    return Group(weight, side, D, block, head, idx, sv, location, adapter.rank(weight), locations, triples)


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
    p_adj: np.ndarray | None = None


def _score_set(adapter, es, groups, top: int, null: Null, dtype, progress) -> list[_Scored]:
    """Every group's singular vectors against one embedding set."""
    if es.vectors.shape[-1] != adapter.d_model:
        raise SurgeryError(f"embedding set {es.name!r} has vectors of length {es.vectors.shape[-1]}, "
                           f"not d_model={adapter.d_model}")
    E = unit_rows(es.vectors, dtype)
    gram = (E.T @ E).double()  # sum_j e_j e_j^T, for the selectivity (in the analysis dtype: a 50k-row product)
    search = SearchSet(E)  # prepared once for all groups
    return [_score(g, search, gram, top, null, progress) for g in groups]


def _score(g: Group, search: SearchSet, gram: torch.Tensor, top: int, null: Null, progress) -> _Scored:
    ext = search.extremes(g.directions, top, progress=progress, desc=f"{g.weight} {g.side}")
    pos = ext.top[:, 0] >= -ext.bottom[:, 0]
    best_cos = torch.where(pos, ext.top[:, 0], ext.bottom[:, 0]).double().numpy()
    best_label = torch.where(pos, ext.top_idx[:, 0], ext.bottom_idx[:, 0]).numpy()
    sel, sel_z = _selectivity(g, gram)
    return _Scored(ext, best_cos, best_label, null.pvalue(best_cos), null.zscore(best_cos), sel, sel_z)


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
    }, nullable=("head",))


def _vector_table(name, g: Group, sc: _Scored, labels) -> Table:
    n = g.idx.size
    return Table({
        "embedding": np.full(n, name, dtype=object), "block": g.block, "weight": np.full(n, g.weight, dtype=object),
        "head": g.head, "side": np.full(n, g.side, dtype=object), "idx": g.idx, "singular_value": g.sv,
        "label": _label_strings(labels, sc.best_label), "label_index": sc.best_label,
        "cos": sc.best_cos, "abs_cos": np.abs(sc.best_cos), "p": sc.p, "p_adj": sc.p_adj, "z": sc.z,
    }, nullable=("head",))


def _weight_table(name, g: Group, sc: _Scored, labels, alpha: float) -> Table:
    L = len(g.locations)
    cols = {k: [] for k in ("block", "head", "n_vectors", "n_significant", "selectivity", "selectivity_z",
                            "best_idx", "best_label",
                            "best_cos", "best_p_adj", "best_z")}
    for loc, (b, h) in enumerate(g.locations):
        mine = np.flatnonzero(g.location == loc)
        cols["block"].append(b)
        cols["head"].append(h)
        cols["n_vectors"].append(mine.size)
        cols["n_significant"].append(int((sc.p_adj[mine] < alpha).sum()))
        cols["selectivity"].append(sc.selectivity[loc])
        cols["selectivity_z"].append(sc.selectivity_z[loc])
        if mine.size:
            j = mine[np.lexsort((-np.abs(sc.best_cos[mine]), sc.p_adj[mine]))[0]]
            cols["best_idx"].append(int(g.idx[j]))
            cols["best_label"].append(str(labels[int(sc.best_label[j])]))
            cols["best_cos"].append(float(sc.best_cos[j]))
            cols["best_p_adj"].append(float(sc.p_adj[j]))
            cols["best_z"].append(float(sc.z[j]))
        else:
            for c, v in (("best_idx", -1), ("best_label", ""), ("best_cos", np.nan), ("best_p_adj", np.nan),
                         ("best_z", np.nan)):
                cols[c].append(v)
    return Table({"embedding": np.full(L, name, dtype=object), "block": np.array(cols["block"], dtype=int),
                  "weight": np.full(L, g.weight, dtype=object), "head": np.array(cols["head"], dtype=int),
                  "side": np.full(L, g.side, dtype=object),
                  **{c: np.array(cols[c], dtype=object if c == "best_label" else None)
                     for c in ("n_vectors", "n_significant", "selectivity", "selectivity_z", "best_idx", "best_label",
                               "best_cos", "best_p_adj", "best_z")}}, nullable=("head", "best_idx"))
