"""A full analysis of an LM, one block at a time: top triples of every weight and head, their tokens, coherence.

Per block: the top-k triples of K, V and every head's OV and QK (`decompose(method=..., k=...)`),
then one pass over the vocabulary for all their residual-facing vectors at once (top/bottom tokens,
coherence against `semantic.CoherenceNull`). Only one block's decompositions exist at a time: the
scan drops the SVD cache entries it created before moving on, so GPT-J's exact 320 MB MLP
factors never pile up. Results are small tables (k vectors x n tokens per weight).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import torch

from adapters import WEIGHTS, wrap
from surgery.analysis.cosines import unit_rows
from surgery.checks import integer
from surgery.core import lowrank
from surgery.core.decomposition import RESIDUAL_SIDES, decompose
from surgery.core.state import state
from surgery.errors import SurgeryError
from surgery.files import jsonable, write_atomic
from surgery.lm.semantic import CoherenceNull, TokenTable, score_vectors
from surgery.progress import progress


@dataclass
class ScanConfig:
    """What a scan computes."""

    k: int = 16
    """Top singular triples per weight (per head for OV and QK)."""
    tokens: int = 10
    """Tokens kept per direction (positive and negative), also the coherence set size."""
    method: str = "gram"
    """"exact" (full SVD, sliced), "gram", "randomized" or "auto" (top-k only; surgery.core.lowrank)."""
    weights: tuple = WEIGHTS
    """Which of "K", "V", "OV", "QK"."""
    embedding: str = "token_out"
    """Embedding set the vectors are compared with ("token_out": the unembedding, as in Conjecture's post)."""
    dtype: str | None = None
    """Analysis dtype, "float32" or "float64" (default: float64 on the CPU, float32 on accelerators)."""
    null_draws: int = 500
    """Random directions in the coherence null."""
    progress: bool = True
    """Show progress over blocks (a bar on a terminal, a line every 30 s otherwise), naming the weight in work."""

    def __post_init__(self):
        if isinstance(self.weights, str):
            self.weights = (self.weights,)
        # (scan checks the names.) A weight named twice would be scanned and counted twice
        # (`--weights K K` reported 8 vectors for 4).
        self.weights = tuple(dict.fromkeys(self.weights))


@dataclass
class ScanResult:
    """Token tables for every (block, weight, head, side), and the time each block took."""

    tables: list[TokenTable]
    seconds: list[float]
    config: ScanConfig
    device: str
    max_residual: dict = field(default_factory=dict)
    """Per weight, the largest error certificate of the fast route (surgery.core.lowrank.residual); empty for exact."""
    seconds_decomposing: list = field(default_factory=list)
    """Per block, the part of `seconds` spent in the decompositions (the rest: the vocabulary pass)."""

    def rows(self) -> list[dict]:
        """One dict per (table, vector): where it is, S, tokens both ways, coherence, z, p."""
        out = []
        for t in self.tables:
            for r in t.rows():
                out.append(dict(block=t.block, weight=t.weight, head=t.head, side=t.side, **r))
        return out

    def summary(self) -> dict:
        """Per weight: vectors scanned, the share coherent at p < 0.01, the median coherence z of all directions.

        A vector counts as coherent when its better direction is, with that p-value corrected for
        having looked at two (Sidak: 1 - (1 - min p)^2), so under the null the share is ~1%.
        """
        out = {}
        for w in self.config.weights:
            z = [torch.cat([t.pos_z, t.neg_z]) for t in self.tables if t.weight == w]
            p = [1 - (1 - torch.minimum(t.pos_p, t.neg_p)) ** 2 for t in self.tables if t.weight == w]
            if z:
                z, p = torch.cat(z), torch.cat(p)
                out[w] = dict(vectors=len(p), coherent_p01=float((p < 0.01).float().mean()),
                              median_z=float(z.median()))
        return out

    def to_json(self, path=None) -> str:
        doc = dict(config=asdict(self.config), device=self.device, seconds=self.seconds,
                   seconds_decomposing=self.seconds_decomposing,
                   max_residual=self.max_residual, summary=self.summary(), vectors=self.rows())
        text = json.dumps(jsonable(doc), indent=1, allow_nan=False)  # NaN is not JSON: null instead
        if path is not None:
            write_atomic(path, text)
        return text


def scan(model, config: ScanConfig | None = None, blocks=None) -> ScanResult:
    """Analyse every block (or `blocks`) of an LM: see the module docstring."""
    config = config or ScanConfig()
    adapter = wrap(model)
    _check(adapter, config)
    blocks = range(adapter.n_blocks) if blocks is None else list(blocks)
    sets = adapter.embedding_sets()
    es = sets[config.embedding]
    device = adapter.mlp_in(0).device
    dtype = {None: None, "float32": torch.float32, "float64": torch.float64}[config.dtype]
    E_unit = unit_rows(es.vectors.to(device))  # float32: cosines need no more
    null = CoherenceNull.build(E_unit, config.tokens, config.null_draws)
    tables, seconds, decomposing, residual = [], [], [], {}
    with progress(len(blocks), desc="lm scan", unit="block", enabled=config.progress) as bar:
        for b in blocks:
            t0 = time.perf_counter()
            before = set(state(adapter).svd_cache)
            plan = []  # (weight, head, side, S, vectors [d, k]) for one pass over the vocabulary
            for w in config.weights:
                bar.set_postfix_str(f"block {b} {w}")  # one GPT-J weight: minutes on a CPU
                k = min(config.k, adapter.rank(w))
                svd = decompose(adapter, b, w, dtype=dtype, method=config.method, k=k)
                if svd.residual is not None:
                    residual[w] = max(residual.get(w, 0.0), float(svd.residual.max()))
                for side in RESIDUAL_SIDES[w]:
                    X = svd.vectors(side)
                    if w in ("OV", "QK"):
                        plan += [(w, h, side, svd.S[h], X[h]) for h in range(adapter.n_heads)]
                    else:
                        plan.append((w, None, side, svd.S, X))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            decomposing.append(time.perf_counter() - t0)
            X = torch.cat([p[4].to(E_unit) for p in plan], dim=1)
            scores = score_vectors(X, E_unit, config.tokens, null)
            start = 0
            for w, h, side, S, vec in plan:
                part = {name: t[start:start + vec.shape[1]] for name, t in scores.items()}
                start += vec.shape[1]
                tables.append(TokenTable(b, w, h, side, config.embedding, S.cpu(), **part, labels=es.labels))
            for key in set(state(adapter).svd_cache) - before:  # this block's SVDs: keep one block's temporaries at most
                del state(adapter).svd_cache[key]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - t0)
            bar.update(1)
    return ScanResult(tables, seconds, config, str(device), residual, decomposing)


def _check(adapter, config: ScanConfig) -> None:
    if config.method not in lowrank.METHODS:
        raise SurgeryError(f"method={config.method!r} is not a method; valid: {', '.join(map(repr, lowrank.METHODS))}")
    bad = [w for w in config.weights if w not in WEIGHTS]
    if bad or not config.weights:
        raise SurgeryError(f"weights={config.weights!r}: valid weights are {', '.join(map(repr, WEIGHTS))}")
    sets = adapter.embedding_sets()
    if config.embedding not in sets:
        raise SurgeryError(f"embedding={config.embedding!r} is not an embedding set of this model; valid: {', '.join(sets)}")
    if isinstance(config.k, bool) or not isinstance(config.k, int) or config.k < 1:
        raise SurgeryError(f"k={config.k!r} must be a positive number of triples per weight")
    vocab = sets[config.embedding].vectors.shape[0]
    integer(config.tokens, "tokens", low=2, high=vocab)  # before any block: tokens x vocab x vectors is allocated
    if config.dtype not in (None, "float32", "float64"):
        raise SurgeryError(f"dtype={config.dtype!r} is not an analysis dtype; valid: 'float32', 'float64' (or None)")
