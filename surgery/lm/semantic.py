"""Which tokens each singular vector points at, and whether they cluster: token tables, a coherence score.

Top tokens: the cosine of a singular vector with every unit-normalised token embedding; the
highest are its positive direction, the lowest its negative one (a singular vector's sign is a
convention, so both are shown).

Coherence (a number for "this vector is interpretable"): the mean pairwise cosine of the top-n
tokens' unit embeddings, as a z-score and a p-value against a null of the same statistic for the
top-n tokens of uniformly random unit directions. The null selects tokens the same way the
vector did, because the top tokens of *any* direction v are somewhat alike (each has a component
`cos * v`): against random token sets (`null="tokens"`, the naive null) even random vectors look
coherent, and more so in narrow models.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from adapters import wrap
from surgery.analysis.cosines import unit_rows
from surgery.core.decomposition import DEFAULT_SIDE, SVD, check_location, check_side, decompose
from surgery.errors import SurgeryError

NULLS = ("directions", "tokens")
"""directions: top-n sets of random unit directions (selection-matched, default); tokens: random token sets."""


def top_tokens(vectors: torch.Tensor, E_unit: torch.Tensor, n: int = 10, chunk: int = 8192):
    """For each column of `vectors` [d, r]: (ids, cosines) of its n highest and n lowest tokens, each [r, n].

    `E_unit` [vocab, d] holds unit rows. The vocabulary is scanned in chunks so only `chunk x r`
    cosines exist at once (GPT-J: 50400 x 4096 embeddings, any number of vectors).
    """
    X = vectors.to(E_unit) / torch.linalg.vector_norm(vectors.to(E_unit), dim=0, keepdim=True).clamp_min(1e-30)
    best = worst = None
    for start in range(0, E_unit.shape[0], chunk):
        cos = (E_unit[start:start + chunk] @ X).T  # [r, chunk]
        ids = torch.arange(start, start + cos.shape[1], device=cos.device).expand(cos.shape[0], -1)
        best = _merge(best, cos, ids, n, largest=True)
        worst = _merge(worst, cos, ids, n, largest=False)
    return best[1], best[0], worst[1], worst[0]


def _merge(kept, cos, ids, n, largest):
    """Keep the n extreme cosines among those kept so far and a new chunk."""
    val, pos = cos.topk(min(n, cos.shape[1]), dim=1, largest=largest)  # the chunk's own best first: a small merge
    val, ids = val, ids.gather(1, pos)
    if kept is not None:
        val, ids = torch.cat([kept[0], val], 1), torch.cat([kept[1], ids], 1)
        val, pos = val.topk(min(n, val.shape[1]), dim=1, largest=largest)
        ids = ids.gather(1, pos)
    return val, ids


def mean_pairwise_cosine(E_unit: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean cosine over distinct pairs of the tokens in each row of `ids` [..., n]: (|sum e|^2 - n) / (n (n-1))."""
    n = ids.shape[-1]
    if n < 2:
        raise SurgeryError(f"coherence needs at least 2 tokens per set, got n={n}")
    s = E_unit[ids].sum(-2)
    return ((s * s).sum(-1) - n) / (n * (n - 1))


@dataclass(frozen=True)
class CoherenceNull:
    """The null distribution of the coherence statistic for one embedding set and set size."""

    samples: torch.Tensor
    n: int
    kind: str

    @classmethod
    def build(cls, E_unit: torch.Tensor, n: int = 10, draws: int = 500, kind: str = "directions",
              seed: int = 0) -> "CoherenceNull":
        """Draw `draws` random unit directions (or random token sets) and score their top-n tokens."""
        if kind not in NULLS:
            raise SurgeryError(f"null={kind!r} is not a null; valid: {', '.join(map(repr, NULLS))}")
        if draws < 20:
            raise SurgeryError(f"draws={draws} is too few for a z-score; use at least 20 (default 500)")
        g = torch.Generator().manual_seed(seed)
        vocab, d = E_unit.shape
        if kind == "directions":
            R = torch.randn(d, draws, generator=g, dtype=torch.float32).to(E_unit)
            ids, _, neg_ids, _ = top_tokens(R, E_unit, n)
            ids = torch.cat([ids, neg_ids])  # a direction and its negation are equally random
        else:
            ids = torch.stack([torch.randperm(vocab, generator=g)[:n] for _ in range(draws)]).to(E_unit.device)
        return cls(mean_pairwise_cosine(E_unit, ids).cpu(), n, kind)

    def z(self, c: torch.Tensor) -> torch.Tensor:
        return (c.cpu() - self.samples.mean()) / self.samples.std()

    def p(self, c: torch.Tensor) -> torch.Tensor:
        """One-sided empirical p-value, (1 + #null >= c) / (1 + draws): never 0 from finitely many draws."""
        return (1 + (self.samples >= c.cpu().unsqueeze(-1)).sum(-1)) / (1 + len(self.samples))


@dataclass(frozen=True)
class TokenTable:
    """Top tokens of singular vectors against one embedding set, positive and negative directions, with coherence."""

    block: int
    weight: str
    head: int | None
    side: str
    embedding: str
    S: torch.Tensor  # [r] singular values of the vectors shown
    pos_ids: torch.Tensor  # [r, n] highest-cosine tokens, best first
    pos_cos: torch.Tensor
    neg_ids: torch.Tensor  # [r, n] lowest-cosine tokens, most negative first
    neg_cos: torch.Tensor
    pos_coherence: torch.Tensor  # [r] mean pairwise cosine of the top tokens
    neg_coherence: torch.Tensor
    pos_z: torch.Tensor  # [r] z-scores against the null
    neg_z: torch.Tensor
    pos_p: torch.Tensor  # [r] empirical one-sided p-values
    neg_p: torch.Tensor
    labels: object  # a sequence: token id -> string

    def rows(self) -> list[dict]:
        """One dict per singular vector: index, S, tokens and cosines both ways, coherence, z, p."""
        out = []
        for i in range(len(self.S)):
            out.append(dict(
                idx=i, S=float(self.S[i]),
                pos=[(self.labels[int(t)], float(c)) for t, c in zip(self.pos_ids[i], self.pos_cos[i])],
                neg=[(self.labels[int(t)], float(c)) for t, c in zip(self.neg_ids[i], self.neg_cos[i])],
                pos_coherence=float(self.pos_coherence[i]), pos_z=float(self.pos_z[i]), pos_p=float(self.pos_p[i]),
                neg_coherence=float(self.neg_coherence[i]), neg_z=float(self.neg_z[i]), neg_p=float(self.neg_p[i]),
            ))
        return out

    def format(self, tokens: int = 6) -> str:
        """A plain-text table: one line per direction of each vector."""
        head = "" if self.head is None else f" head {self.head}"
        lines = [f"block {self.block} {self.weight}{head}: {self.side} side vs {self.embedding} "
                 f"(cosine; coherence z against random directions)"]
        for r in self.rows():
            for sign in ("pos", "neg"):
                toks = " ".join(f"{t!r}({c:+.2f})" for t, c in r[sign][:tokens])
                mark = "+" if sign == "pos" else "-"
                lines.append(f"{r['idx']:>3}{mark} S={r['S']:<8.3g} z={r[sign + '_z']:+6.2f}  {toks}")
        return "\n".join(lines)


def token_table(model, block: int, weight: str, head: int | None = None, *, embedding: str = "token_out",
                side: str | None = None, k: int = 10, n: int = 10, method: str = "exact",
                null: CoherenceNull | None = None, svd: SVD | None = None, E_unit: torch.Tensor | None = None,
                dtype: torch.dtype | None = None) -> TokenTable:
    """Top-n tokens of the first k singular vectors of one weight (one head for OV/QK), with coherence scores.

    `side` defaults to the residual-facing side a patch edits (K: in, V: out, OV: out, QK: in).
    Pass `null` (CoherenceNull.build) and `E_unit` (unit_rows of the embedding) to reuse them across calls.
    """
    adapter = wrap(model)
    sets = adapter.embedding_sets()
    if embedding not in sets:
        raise SurgeryError(f"embedding={embedding!r} is not an embedding set of this model; valid: {', '.join(sets)}")
    if weight in ("OV", "QK") and head is None and svd is None:
        raise SurgeryError(f"weight {weight!r} is per head: give head=0..{adapter.n_heads - 1}")
    side = check_side(side if side is not None else DEFAULT_SIDE[weight])
    es = sets[embedding]
    if side == "in" and weight == "V" or side == "out" and weight == "K":
        raise SurgeryError(f"the {side} side of {weight} lives in the MLP's hidden space, not the residual stream; "
                           f"valid side for {weight}: {'in' if weight == 'K' else 'out'}")
    if svd is None:
        check_location(adapter, block, weight, head)  # the place first: "k out of range" for a block 5 of 2 misleads
        rank = adapter.rank(weight)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= rank:
            raise SurgeryError(f"k={k!r} is out of range: {weight} has {rank} singular triples (valid: 1..{rank})")
        svd = decompose(adapter, block, weight, head, dtype=dtype, method=method, k=k)
    E_unit = unit_rows(es.vectors) if E_unit is None else E_unit
    if not isinstance(n, int) or not 2 <= n <= E_unit.shape[0]:
        raise SurgeryError(f"n={n!r} tokens per direction is out of range (valid: 2..{E_unit.shape[0]})")
    null = CoherenceNull.build(E_unit, n) if null is None else null
    if null.n != n:
        raise SurgeryError(f"the null was built for sets of {null.n} tokens, but n={n}")
    scores = score_vectors(svd.vectors(side)[..., :k], E_unit, n, null)
    return TokenTable(block, weight, head if head is not None else svd.head, side, embedding, svd.S[:k].cpu(),
                      **scores, labels=es.labels)


def score_vectors(X: torch.Tensor, E_unit: torch.Tensor, n: int, null: CoherenceNull) -> dict:
    """Top/bottom-n tokens of each column of X [d, r] and their coherence, as TokenTable's fields (on the CPU)."""
    pos_ids, pos_cos, neg_ids, neg_cos = top_tokens(X, E_unit, n)
    pc, nc = mean_pairwise_cosine(E_unit, pos_ids), mean_pairwise_cosine(E_unit, neg_ids)
    return dict(pos_ids=pos_ids.cpu(), pos_cos=pos_cos.cpu(), neg_ids=neg_ids.cpu(), neg_cos=neg_cos.cpu(),
                pos_coherence=pc.cpu(), neg_coherence=nc.cpu(), pos_z=null.z(pc), neg_z=null.z(nc),
                pos_p=null.p(pc), neg_p=null.p(nc))
