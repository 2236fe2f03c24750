"""Exact SVDs of K, V and the per-head OV and QK circuits, cached per weight version.

Convention (DESIGN.md): `W = U @ diag(S) @ V.T` with `W: [d_in, d_out]` (`y = x @ W`), `U: [d_in, r]`
the read side, `V: [d_out, r]` the write side, S descending, and `U[:, i] @ W == S[i] * V[:, i]`.

Sign rule: in each triple, the entry of largest magnitude of the *anchor* vector is positive
(first such entry on ties). The anchor is the side a patch edits by default: the read side U
for K and QK, the write side V for V and OV. So the same weights give the same vectors on
every run and device (up to the precision of the computation).

`fold_ln=False` by default: the SVD is of the weight as stored, which is what the study
decomposed and what `patch` edits. `fold_ln=True` multiplies the read side by the preceding
LayerNorm's gain (`diag(gamma) @ W`), giving the directions the weight reads from the
*normalised* residual stream; use it for analysis, not to pick triples to patch. V reads MLP
activations, which no LayerNorm precedes, so fold_ln changes nothing for V.

`method="exact"` (default) is the full SVD above. `k=` keeps the top k triples; with
`method="gram"` (all triples when k is None), `"randomized"` or `"auto"` (k required) only those are
computed (`surgery.core.lowrank`: GEMM-only routes for full-size models), and the result carries
`residual`, an a-posteriori error certificate.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import torch

from adapters import Adapter, wrap
from surgery.checks import scalar
from surgery.core import lowrank
from surgery.core.state import state
from surgery.errors import SurgeryError
from surgery.names import DEFAULT_SIDE, RESIDUAL_SIDES, SIDES, WEIGHTS  # noqa: F401  (re-exported)
from surgery.progress import busy


@dataclass(frozen=True)
class SVD:
    """Singular triples of one weight (or of every head's, stacked on a leading head axis)."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    block: int
    weight: str
    head: int | None
    fold_ln: bool
    method: str = "exact"
    """How the triples were computed: "exact", "gram" or "randomized" (what "auto" chose; surgery.core.lowrank)."""
    residual: torch.Tensor | None = None
    """Fast routes only: per triple, max(|W V_i - S_i U_i|, |W^T U_i - S_i V_i|) / S_0 (see surgery.core.lowrank)."""

    def __iter__(self):
        return iter((self.U, self.S, self.V))

    def dense(self) -> torch.Tensor:
        """The matrix these triples reconstruct, `U @ diag(S) @ V.T`."""
        return (self.U * self.S.unsqueeze(-2)) @ self.V.mT

    def vectors(self, side: str) -> torch.Tensor:
        """U for side "in", V for side "out"."""
        return {"in": self.U, "out": self.V}[check_side(side)]


# ---- validation shared with patch ---------------------------------------------------------------
def as_int(value):
    """A numpy or 0-d torch integer as a Python int; anything else (None, a float, a bool) unchanged for the checks."""
    value = scalar(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    return value


def check_location(adapter: Adapter, block, weight, head) -> None:
    """Raise ValueError naming what is valid unless (block, weight, head) exists in this model.

    Integers from numpy or torch (a block read out of an analysis table) count as integers."""
    block, head = as_int(block), as_int(head)
    if weight not in WEIGHTS:
        raise SurgeryError(f"weight={weight!r} is not a weight name; valid: {', '.join(map(repr, WEIGHTS))}")
    if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < adapter.n_blocks:
        raise SurgeryError(f"block={block!r} is out of range: this model has {adapter.n_blocks} blocks "
                           f"(valid: 0..{adapter.n_blocks - 1})")
    if weight in ("K", "V"):
        if head is not None:
            raise SurgeryError(f"head={head!r} given for weight {weight!r}, which is per block: use head=None")
    elif head is not None and (isinstance(head, bool) or not isinstance(head, int)
                               or not 0 <= head < adapter.n_heads):
        raise SurgeryError(f"head={head!r} is out of range: this model has {adapter.n_heads} heads "
                           f"(valid: 0..{adapter.n_heads - 1}, or None for all)")


def check_side(side) -> str:
    if side not in SIDES:
        raise SurgeryError(f"side={side!r} is not a side; valid: 'in' (read side, U) or 'out' (write side, V)")
    return side


# ---- the factors of each weight -----------------------------------------------------------------
def factors(adapter: Adapter, block: int, weight: str) -> tuple[torch.Tensor, ...]:
    """Live views whose product is the weight: `(M,)` for K/V, `(A [H,d,dh], B [H,dh,d])` for OV/QK."""
    if weight == "K":
        return (adapter.mlp_in(block),)
    if weight == "V":
        return (adapter.mlp_out(block),)
    w = adapter.attn_weights(block)
    if weight == "OV":
        return w["W_V"], w["W_O"]
    return w["W_Q"], w["W_K"].mT  # QK = W_Q @ W_K.T: the query side reads, the key side "writes"


def base_of(t: torch.Tensor) -> torch.Tensor:
    """The tensor a view was taken from (its version counter is the one edits bump)."""
    return t._base if t._base is not None else t


def canonical_version(adapter: Adapter, t: torch.Tensor) -> int:
    """The tensor's version, mapped back to an earlier one whose contents a patch restored bitwise."""
    t = base_of(t)
    return state(adapter).version_aliases.get((id(t), t._version), t._version)


class ContentStamp:
    """What identifies a tensor's contents now: the object, its version counter, and where its data lives.

    `model.to(dtype)` swaps a parameter's data without touching its identity or version counter (a
    cached float32 SVD was served after `model.to(torch.bfloat16)` when only those were stamped), and
    the freed storage's address can be handed straight to the converted data: after a float32 ->
    float8 -> float32 round trip the address was reused in about half the runs, so an address alone
    does not tell two contents apart either. The stamp holds the storage it saw, so that address
    cannot be reused while the stamp lives (after such a swap, a cache entry keeps the old copy alive
    until the entry is next read and replaced).
    """

    __slots__ = ("id", "key", "_storage")

    def __init__(self, t: torch.Tensor, version: int | None = None):
        b = base_of(t)
        self.id = id(b)
        self.key = (id(b), b._version if version is None else version, b.data_ptr(), b.dtype, b.device)
        self._storage = b.untyped_storage()

    def __eq__(self, other) -> bool:
        return isinstance(other, ContentStamp) and self.key == other.key

    __hash__ = None


def _stamp(adapter: Adapter, tensors) -> tuple[ContentStamp, ...]:
    """The contents of the source tensors, with versions a bitwise restore mapped back (canonical_version)."""
    return tuple(ContentStamp(t, canonical_version(adapter, t)) for t in tensors)


def _sources(adapter: Adapter, block: int, weight: str, fold_ln: bool) -> list[torch.Tensor]:
    srcs = list(factors(adapter, block, weight))
    ln = adapter.ln_before(block, weight) if fold_ln else None
    if ln is not None and ln.weight is not None:
        srcs.append(ln.weight)
    return srcs


# ---- the decomposition ----------------------------------------------------------------------------
def default_dtype(device: torch.device) -> torch.dtype:
    """float64 on the CPU (exact to reference precision, cheap at these sizes); float32 on accelerators."""
    return torch.float64 if device.type == "cpu" else torch.float32


def decompose(model, block: int, weight: str, head: int | None = None, fold_ln: bool = False,
              dtype: torch.dtype | None = None, method: str = "exact", k: int | None = None) -> SVD:
    """SVD of one weight, `W = U @ diag(S) @ V.T`, in the row-vector convention `y = x @ W`.

    model: a loaded model or a raw Hugging Face / TransformerLens model.
    block: transformer block, 0..n_blocks-1.
    weight: "K" (MLP in, `[d_model, d_mlp]`), "V" (MLP out, `[d_mlp, d_model]`), "OV" (`W_V @ W_O`)
        or "QK" (`W_Q @ W_K.T`), the last two per head and decomposed through their factors.
    head: for OV and QK, one head; None gives every head's, stacked `[n_heads, ...]`.
    fold_ln: multiply the read side by the preceding LayerNorm's gain (what the normalised
        residual stream sees); False decomposes the weight as stored, the one a patch edits.
    dtype: torch.float32 or torch.float64 (default float64 on the CPU, float32 on accelerators),
        whatever the weight's own dtype.
    method: "exact" (LAPACK, default), or "gram", "randomized", "auto" for large weights
        (surgery.core.lowrank; randomized and auto need k).
    k: keep only the top k triples.

    Returns an `SVD` that unpacks as `U, S, V`: U `[d_in, r]` the read side, V `[d_out, r]` the
    write side, S descending, `U[:, i] @ W == S[i] * V[:, i]`, signs fixed by a documented rule
    (docs/core.md). Cached until the weight (or, folded, the gain) changes, so analysis inside a
    patch sees the patched weight.

    Examples:

    >>> U, S, V = decompose(model, block=1, weight="K")
    >>> U.shape, S.shape, V.shape
    (torch.Size([128, 128]), torch.Size([128]), torch.Size([512, 128]))
    >>> W = model.mlp_in(1).detach().double()
    >>> torch.allclose(U[:, 0] @ W, S[0] * V[:, 0])
    True
    >>> decompose(model, block=0, weight="OV").U.shape      # every head: [n_heads, d_model, d_head]
    torch.Size([1, 128, 128])
    >>> decompose(model, block=0, weight="QK", head=0, k=4).S.shape
    torch.Size([4])
    """
    adapter = wrap(model)
    check_location(adapter, block, weight, head)
    if method not in lowrank.METHODS:
        raise SurgeryError(f"method={method!r} is not a method; valid: {', '.join(map(repr, lowrank.METHODS))}")
    rank = adapter.rank(weight)
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= rank):
        raise SurgeryError(f"k={k!r} is out of range: {weight} has {rank} singular triples (valid: 1..{rank}, or None for all)")
    if method in ("randomized", "auto") and k is None:
        raise SurgeryError(f"method={method!r} computes the top k triples only: give k=1..{rank} (or method='gram')")
    srcs = _sources(adapter, block, weight, fold_ln)
    dtype = dtype or default_dtype(srcs[0].device)
    if dtype not in (torch.float32, torch.float64):
        raise SurgeryError(f"dtype={dtype} is not supported; valid: torch.float32, torch.float64")
    if method == "exact" and k is not None:  # a slice of the cached full SVD
        return _top(decompose(adapter, block, weight, head, fold_ln, dtype), k)
    key = (block, weight, fold_ln, dtype) if method == "exact" else (block, weight, fold_ln, dtype, method, k)
    stamp = _stamp(adapter, srcs)
    hit = state(adapter).svd_cache.get(key)
    if hit is not None and hit[0] == stamp:
        full = hit[1]
    else:
        full = _compute(adapter, block, weight, fold_ln, dtype, method, k)
        state(adapter).svd_cache[key] = (stamp, full)
    if head is None:
        return full
    res = None if full.residual is None else full.residual[head]
    return SVD(full.U[head], full.S[head], full.V[head], block, weight, head, fold_ln, full.method, res)


def _top(svd: SVD, k: int) -> SVD:
    """The first k triples of an SVD."""
    res = None if svd.residual is None else svd.residual[..., :k]
    return SVD(svd.U[..., :k], svd.S[..., :k], svd.V[..., :k], svd.block, svd.weight, svd.head, svd.fold_ln,
               svd.method, res)


def _matrices(adapter: Adapter, block: int, weight: str, fold_ln: bool, dtype: torch.dtype) -> list[torch.Tensor]:
    """The factors whose product is the decomposed matrix (the LayerNorm gain folded in when asked)."""
    mats = [f.detach().to(dtype) for f in factors(adapter, block, weight)]
    ln = adapter.ln_before(block, weight) if fold_ln else None
    if ln is not None and ln.weight is not None:
        gain = ln.weight.detach().to(dtype)
        mats[0] = gain.unsqueeze(-1) * mats[0]  # diag(gamma) @ (read side)
        if weight == "QK":
            mats[1] = mats[1] * gain  # the key side reads the same normalised stream: W_K.T @ diag(gamma)
    return mats


def energy(adapter: Adapter, block: int, weight: str, fold_ln: bool = False,
           dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """sum S^2 of the whole matrix, ||W||_F^2, without its SVD (per head for OV and QK: shape [H]).

    What a fast route's share of the energy must be divided by: the sum over only the k triples it
    computed makes every share too large (5x for hopper block 0 K #0 with k = 4).
    """
    mats = _matrices(adapter, block, weight, fold_ln, dtype)
    if len(mats) == 1:
        return (mats[0] ** 2).sum()
    A, B = mats  # ||A_h B_h||_F^2 = trace((A_h^T A_h)(B_h B_h^T)), with d_head x d_head products only
    return torch.einsum("hij,hji->h", A.mT @ A, B @ B.mT)


def _compute(adapter: Adapter, block: int, weight: str, fold_ln: bool, dtype: torch.dtype,
             method: str = "exact", k: int | None = None) -> SVD:
    # No torch.no_grad() here: the factors are detached, so nothing records a graph anyway, and a
    # Ctrl-C landing on the first instruction of no_grad's __exit__ would leave gradients off for the
    # rest of the session (it did, in 1.3% of the interrupts tests/test_patch_interrupts.py sends).
    mats = _matrices(adapter, block, weight, fold_ln, dtype)
    res = None
    if method == "exact" and len(mats) == 1:
        with busy(f"SVD of block {block} {weight} {list(mats[0].shape)} ({str(dtype).replace('torch.', '')})",
                  enabled=_slow(mats[0])):
            U, S, V = dense_svd(mats[0])
    elif method == "exact":
        U, S, V = factored_svd(*mats)
    elif method == "auto":
        U, S, V, method, res = lowrank.auto_svd(mats, k)  # records the route it took
    else:
        U, S, V = lowrank.top_svd(mats, adapter.rank(weight) if k is None else k, method)
        res = lowrank.residual(mats, U, S, V)
    U, V = fix_signs(U, V, DEFAULT_SIDE[weight])
    return SVD(U, S, V, block, weight, None, fold_ln, method, res)


# A dense SVD costs about m*n*min(m, n) multiply-adds. Measured on this project's 2-core CPU,
# float64: 768x3072 (1.8e9) 0.6 s, 4096x16384 (2.7e11) 83 s. From 5e9 (a few seconds) on, a single
# call shows that it is running (surgery.progress.busy); GPT-2-sized weights and smaller stay silent.
_SLOW_SVD = 5e9


def _slow(M: torch.Tensor) -> bool:
    m, n = M.shape[-2:]
    return M.numel() * min(m, n) >= _SLOW_SVD


def dense_svd(M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD `M = U diag(S) V.T` of a (batch of) matrix."""
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U, S, Vh.mT


def factored_svd(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SVD of `A @ B` (A: [..., m, k], B: [..., k, n], k <= m, n) without forming the m x n product.

    Thin QR of each factor, `A = Qa Ra`, `B.T = Qb Rb`, so `A @ B = Qa (Ra Rb.T) Qb.T`: the SVD of
    the k x k core gives the triples exactly. At GPT-J width (m = n = 4096, k = 256) this is
    hundreds of times cheaper than a dense SVD.
    """
    Qa, Ra = torch.linalg.qr(A)
    Qb, Rb = torch.linalg.qr(B.mT)
    Uc, S, Vc = dense_svd(Ra @ Rb.mT)
    return Qa @ Uc, S, Qb @ Vc


def fix_signs(U: torch.Tensor, V: torch.Tensor, anchor: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip triples so the anchor vector's largest-magnitude entry is positive (ties: first entry)."""
    A = U if anchor == "in" else V
    idx = A.abs().argmax(dim=-2, keepdim=True)  # torch returns the first maximum on ties
    sign = torch.sign(A.gather(-2, idx))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return U * sign, V * sign
