"""Exact k largest and k smallest cosines of many unit directions against one embedding set.

The work is one matrix product per chunk of directions, `[c, d] @ [d, n]`, then `topk` on
both ends. For large sets (a 50k-token vocabulary) the product can be *screened* in bfloat16:
the candidates it proposes are rescored exactly, and a rigorous bound on bf16's error proves
that no label outside them can belong in the top k; where the proof fails, more candidates
are taken, and at worst the row is computed exactly. So the results are those of the exact
computation.

The same pass can score *groups* of consecutive directions (tied singular vectors) as subspaces:
max_j sum_{i in group} cos_ij^2, from the product already made (exact), or from the bf16 product
with a bound on its error that proves which labels can be the best (screened; candidates rescored
exactly). So a group's score costs no second product against the set. The bf16 product is ~3-4x faster on CPUs with bf16 units; with the rescoring the
search is 1.1-1.7x faster (benchmarks/analysis_cost.py, shared 2-core machine).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

_U_BF16 = 2.0 ** -8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
CHUNK_ELEMENTS = 16 * 2 ** 20  # cosines held at once per chunk (64 MB in float32)
SCREEN_MIN_LABELS = 4096  # below this the exact product is already cheap


@dataclass
class Extremes:
    """Per direction: the k largest cosines (descending) and the k smallest (ascending), with label indices."""

    top: torch.Tensor
    top_idx: torch.Tensor
    bottom: torch.Tensor
    bottom_idx: torch.Tensor
    group_sq: torch.Tensor | None = None
    """Per group asked for: max_j sum_{i in group} cos_ij^2 (the squared norm of the best label's projection)."""
    group_idx: torch.Tensor | None = None
    """Per group: the label j reaching it."""

    @property
    def max_abs(self) -> torch.Tensor:
        """Largest |cos| of each direction over the whole set."""
        return torch.maximum(self.top[:, 0], -self.bottom[:, 0])


def unit_rows(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows scaled to unit norm (all-zero rows stay zero: they align with nothing)."""
    x = x.detach().to(dtype)
    norm = x.norm(dim=-1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


class SearchSet:
    """One embedding set (unit rows) prepared for many searches: its transpose or its bf16 screen, made once."""

    def __init__(self, embeddings: torch.Tensor, screen: bool | str = "auto"):
        n = embeddings.shape[0]
        if screen == "auto":
            screen = (n >= SCREEN_MIN_LABELS and embeddings.dtype == torch.float32
                      and embeddings.device.type == "cpu" and bf16_is_faster())
        self.E = embeddings
        self.screener = _Screener(embeddings) if screen else None
        self.E_t = None if screen else embeddings.T.contiguous()

    def extremes(self, directions: torch.Tensor, k: int, progress: bool | None = False,
                 desc: str = "cosines", groups=()) -> Extremes:
        """Top-k and bottom-k cosines of each row of `directions` [N, d] (unit rows, the set's dtype).

        groups: (first row, size) of runs of rows to score as subspaces as well (`Extremes.group_sq`).
        """
        n = self.E.shape[0]
        k = min(k, n)
        groups = sorted((int(f), int(z)) for f, z in groups)
        parts, gparts = [], []
        spans = _chunks(directions.shape[0], max(1, CHUNK_ELEMENTS // max(n, 1)), groups)
        g = 0
        for s, e in tqdm(spans, desc=desc, unit="chunk", disable=not progress or len(spans) < 4, leave=False):
            D = directions[s:e]
            mine = []
            while g < len(groups) and groups[g][0] < e:
                mine.append((groups[g][0] - s, groups[g][1]))
                g += 1
            out = self.screener(D, k, mine) if self.screener else _exact(D, self.E_t, k, mine)
            parts.append(out[:4])
            gparts.append(out[4:])
        if not parts:
            empty = torch.empty(0, k, dtype=self.E.dtype)
            return Extremes(empty, empty.long(), empty, empty.long())
        ext = Extremes(*(torch.cat([p[i] for p in parts]) for i in range(4)))
        if groups:
            ext.group_sq = torch.cat([p[0] for p in gparts if p])
            ext.group_idx = torch.cat([p[1] for p in gparts if p])
        return ext


def extremes(directions: torch.Tensor, embeddings: torch.Tensor, k: int, screen: bool | str = "auto",
             progress: bool | None = False, desc: str = "cosines") -> Extremes:
    """Top-k and bottom-k cosines of each row of `directions` [N, d] with each row of `embeddings` [n, d].

    Both must already have unit rows and the same dtype. `screen`: "auto" (bfloat16 screening for
    large float32 sets when this CPU multiplies bf16 faster), True or False. To search one set
    many times, make a `SearchSet` once.
    """
    return SearchSet(embeddings, screen).extremes(directions, k, progress, desc)


def _chunks(N: int, chunk: int, groups) -> list[tuple[int, int]]:
    """[start, end) row spans of about `chunk` rows that never split a group."""
    spans, s, g = [], 0, 0
    while s < N:
        e = min(N, s + chunk)
        while g < len(groups) and groups[g][0] + groups[g][1] <= s:
            g += 1
        for f, z in groups[g:]:
            if f >= e:
                break
            if f < e < f + z:  # the end falls inside a group: stop before it, or after it if it starts here
                e = f if f > s else f + z
                break
        spans.append((s, e))
        s = e
    return spans


def _segments(groups, dtype=torch.long) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the groups (in order) and the group each belongs to."""
    first = torch.tensor([f for f, _ in groups])
    size = torch.tensor([z for _, z in groups])
    seg = torch.repeat_interleave(torch.arange(len(groups)), size)
    offset = torch.arange(int(size.sum())) - torch.repeat_interleave(size.cumsum(0) - size, size)
    return first[seg] + offset, seg


def _group_sums(C: torch.Tensor, groups) -> torch.Tensor:
    """[groups, n]: sum over each group's rows of C^2."""
    rows, seg = _segments(groups)
    Cg = C[rows]
    return torch.zeros(len(groups), C.shape[1], dtype=C.dtype).index_add_(0, seg, Cg * Cg)


def _exact(D: torch.Tensor, E_t: torch.Tensor, k: int, groups=()):
    C = D @ E_t
    top = torch.topk(C, k, dim=1)
    bottom = torch.topk(C, k, dim=1, largest=False)
    out = [top.values, top.indices, bottom.values, bottom.indices]
    if groups:
        v, i = _group_sums(C, groups).max(dim=1)
        out += [v, i]
    return out


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = hi + lo with hi in bfloat16 (round to nearest); lo is the rounding error, in x's dtype."""
    hi = x.to(torch.bfloat16)
    return hi, x - hi.to(x.dtype)


class _Screener:
    """bfloat16 candidates, exact rescoring, and a proof that nothing outside the candidates belongs."""

    def __init__(self, E: torch.Tensor):
        self.E = E
        hi, lo = _split(E)
        self.E_bf_t = hi.T.contiguous()
        self.e_hi = hi.float().norm(dim=1).max()  # bounds on every label's parts, for the error bound
        self.e_lo = lo.norm(dim=1).max()
        self.d = E.shape[1]

    def __call__(self, D: torch.Tensor, k: int, groups=()):
        n = self.E.shape[0]
        d_hi, d_lo = _split(D)
        # D.E - D_hi.E_hi = D_hi.E_lo + D_lo.E_hi + D_lo.E_lo: bounded per direction by Cauchy-Schwarz;
        # products of bf16 numbers are exact in float32, which accumulates them (<= d * 2^-24 relative).
        dh, dl = d_hi.float().norm(dim=1), d_lo.norm(dim=1)
        err = dh * self.e_lo + dl * self.e_hi + dl * self.e_lo + self.d * 2.0 ** -24 * 1.01 * dh * self.e_hi + 1e-6
        Cb = d_hi @ self.E_bf_t
        result = []
        for largest in (True, False):
            rows = torch.arange(D.shape[0])
            vals = torch.empty(D.shape[0], k, dtype=D.dtype)
            idx = torch.empty(D.shape[0], k, dtype=torch.long)
            kc = min(n, k + max(k // 2, 24))  # candidates per end: a margin for the error bound
            first = True
            while rows.numel() and kc < n:
                # The first round takes every row: no copy of the [c, n] product.
                v, i, ok = (self._candidates(D, Cb, err, k, kc, largest) if first
                            else self._candidates(D[rows], Cb[rows], err[rows], k, kc, largest))
                first = False
                vals[rows[ok]], idx[rows[ok]] = v[ok], i[ok]
                rows = rows[~ok]
                kc *= 4  # the bound could not exclude an outsider: look further down the list
            if rows.numel():  # still unproven (or a small set): the exact product for those rows
                C = D[rows] @ self.E.T
                v, i = torch.topk(C, k, dim=1, largest=largest)
                vals[rows], idx[rows] = v, i
            result += [vals, idx]
        if groups:
            result += self._groups(D, Cb, err, groups)
        return result

    def _groups(self, D, Cb, err, groups):
        """Each group's best label by sum of cos^2: bf16 candidates, exact rescoring, proof that none is missed.

        Per entry |cos - cb| <= eps_i = err_i + u (max_j |cb_ij| + err_i) (the bf16 product rounded once more),
        so a group's sum of squares is within delta = sum_i (2 max_j |cb_ij| + eps_i) eps_i of its bf16 value:
        only labels whose bf16 sum is within 2 delta of the best can be the best, and those are rescored exactly.
        """
        rows, seg = _segments(groups)
        cb = Cb[rows].float()  # [rows, n]
        big = cb.abs().amax(dim=1)
        eps = err[rows] + _U_BF16 * (big + err[rows]) * 1.01
        delta = torch.zeros(len(groups)).index_add_(0, seg, (2 * big + eps) * eps)
        sq = torch.zeros(len(groups), cb.shape[1]).index_add_(0, seg, cb * cb)  # [groups, n]
        edge = sq.amax(dim=1) - 2 * delta - 1e-6  # 1e-6: the float32 sums of squares themselves
        n, G = cb.shape[1], len(groups)
        cand = sq >= edge[:, None]  # [groups, n]: every label that can be a group's best
        loose = cand.sum(dim=1) > max(64, n // 8)  # the bound is too loose to help: exact rows
        gi, lj = torch.nonzero(cand & ~loose[:, None], as_tuple=True)  # (group, label) pairs to rescore
        first = torch.tensor([f for f, _ in groups])
        size = torch.tensor([z for _, z in groups])
        reps = size[gi]
        pair = torch.repeat_interleave(torch.arange(gi.numel()), reps)
        member = first[gi][pair] + torch.arange(int(reps.sum())) - torch.repeat_interleave(reps.cumsum(0) - reps, reps)
        cos = (D[member] * self.E[lj[pair]]).sum(dim=1)  # exact, one per (pair, member)
        pair_sq = torch.zeros(gi.numel(), dtype=D.dtype).index_add_(0, pair, cos * cos)
        best_v = torch.zeros(G, dtype=D.dtype).scatter_reduce_(0, gi, pair_sq, "amax", include_self=False)
        at_best = pair_sq == best_v[gi]
        best_i = torch.full((G,), n, dtype=torch.long).scatter_reduce_(0, gi[at_best], lj[at_best], "amin")
        for g in torch.nonzero(loose).flatten().tolist():
            f, z = groups[g]
            best_v[g], best_i[g] = ((D[f:f + z] @ self.E.T) ** 2).sum(0).max(dim=0)
        return [best_v, best_i]

    def _candidates(self, D, Cb, err, k, kc, largest):
        """Exact values of the kc best bf16 candidates; ok where no outsider can reach the k-th of them."""
        cand = torch.topk(Cb, kc, dim=1, largest=largest)
        edge = cand.values[:, -1].float()
        # The product was rounded to bfloat16 once more: relative error <= u.
        eps = err + _U_BF16 * (edge.abs() + err) * 1.01
        v, i = self._rescore(D, cand.indices, k, largest)
        kth = v[:, -1].to(torch.float32)
        # Every outsider's bf16 value is on the far side of edge, so its exact value is within eps of it.
        ok = (edge + eps < kth) if largest else (edge - eps > kth)
        return v, i, ok

    def _rescore(self, D, cand, k, largest):
        """Exact cosines of the candidate labels, best k first."""
        vals = torch.empty(cand.shape, dtype=D.dtype)
        step = max(1, (8 * 2 ** 20) // (cand.shape[1] * D.shape[1]))  # bound the gathered [c, kc, d] block
        for s in range(0, D.shape[0], step):
            vals[s:s + step] = torch.einsum("cd,ckd->ck", D[s:s + step], self.E[cand[s:s + step]])
        v, order = torch.topk(vals, k, dim=1, largest=largest)
        return v, cand.gather(1, order)


_BF16_FASTER: bool | None = None


def bf16_is_faster() -> bool:
    """Whether this CPU multiplies bfloat16 matrices clearly faster than float32 (measured once, ~50 ms)."""
    global _BF16_FASTER
    if _BF16_FASTER is None:
        g = torch.Generator().manual_seed(0)
        a, b = torch.randn(256, 768, generator=g), torch.randn(768, 4096, generator=g)

        def best(x, y):
            x @ y  # warm-up (kernel selection, page faults)
            t = []
            for _ in range(3):
                t0 = time.perf_counter()
                x @ y
                t.append(time.perf_counter() - t0)
            return min(t)

        _BF16_FASTER = best(a.bfloat16(), b.bfloat16()) * 1.5 < best(a, b)
    return _BF16_FASTER
