"""Fast routes to the top-k singular triples of a weight or of a product of factors, with an error certificate.

A weight is given as its factors, `(M,)` for K/V or `(A, B)` for OV/QK (the product `A @ B`), batched
over any leading axes. Two routes, both returning `U: [..., m, k]`, `S: [..., k]` (descending),
`V: [..., n, k]` with the DESIGN.md invariant `U[:, i] @ W == S[i] * V[:, i]` holding by construction:

- "gram": eigendecomposition of the smaller Gram matrix (`M M^T` or `M^T M`; for a product, of the
  `r x r` Grams `A^T A` and `B B^T`, then the SVD of an `r x r` core). All GEMMs plus one small
  eigh: on an H200 the 4096x4096 Gram of a GPT-J MLP takes 0.10 s against 1.06 s for its dense SVD.
  Error (backward-stable eigh): the i-th vector is off by an angle of about
  `eps * S[0]**2 / min_j |S[i]**2 - S[j]**2|` and S[i] by `eps * S[0]**2 / S[i]` (squaring costs
  precision in the tail: exact to ~1e-12 in float64, ~1e-4 in float32 for well-separated top triples).
- "randomized": Halko-Martinsson-Tropp range finder with `k + oversample` random probes and
  `n_iter` power iterations (QR-orthonormalised), then an exact SVD of the small projection.
  Error: the angle of vector i shrinks like `(S[k+oversample] / S[i]) ** (2 * n_iter + 1)`; fast
  and accurate for decaying spectra, poor for flat ones (random matrices are the worst case).

`residual(...)` gives the a-posteriori certificate `max(|W V_i - S_i U_i|, |W^T U_i - S_i V_i|) / S[0]`;
by Wedin's theorem the angle error of triple i is at most about `residual * S[0] / gap_i`.
"""
from __future__ import annotations

import torch

from surgery.errors import SurgeryError
from surgery.names import METHODS  # noqa: F401  (re-exported)

AUTO_TOL = 1e-4
"""The residual (relative to S[0]) above which "auto" recomputes a weight by the gram route."""


def matmul(factors, X: torch.Tensor) -> torch.Tensor:
    """(A @ B @ ...) @ X without forming the product."""
    for F in reversed(factors):
        X = F @ X
    return X


def rmatmul(factors, X: torch.Tensor) -> torch.Tensor:
    """(A @ B @ ...).T @ X without forming the product."""
    for F in factors:
        X = F.mT @ X
    return X


def top_svd(factors, k: int, method: str = "gram", *, oversample: int = 10, n_iter: int = 4,
            seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k singular triples of the product of `factors` ((M,) or (A, B)) by the "gram" or "randomized" route."""
    r = min(min(f.shape[-2:]) for f in factors)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= r:
        raise SurgeryError(f"k={k!r} is out of range: this weight has {r} singular triples (valid: 1..{r})")
    if method == "gram":
        return gram_svd(*factors, k=k) if len(factors) == 1 else factored_gram_svd(*factors, k=k)
    if method == "randomized":
        return randomized_svd(factors, k, oversample=oversample, n_iter=n_iter, seed=seed)
    raise SurgeryError(f"method={method!r} has no top-k route here; valid: 'gram', 'randomized' "
                       f"(auto_svd for 'auto'; the exact route is surgery.decompose(method='exact'))")


def auto_svd(factors, k: int, tol: float = AUTO_TOL, **kwargs):
    """(U, S, V, route, residual): randomized where its certificate is below tol, else gram."""
    U, S, V = randomized_svd(factors, k, **kwargs)
    res = residual(factors, U, S, V)
    if float(res.max()) <= tol:
        return U, S, V, "randomized", res
    U, S, V = top_svd(factors, k, "gram")
    return U, S, V, "gram", residual(factors, U, S, V)


def gram_svd(M: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k triples of M `[..., m, n]` from the eigenvectors of its smaller Gram matrix."""
    if M.shape[-2] > M.shape[-1]:  # decompose M.T, whose Gram is the small one, and swap the sides back
        V, S, U = gram_svd(M.mT, k)
        return U, S, V
    evals, evecs = torch.linalg.eigh(M @ M.mT)  # ascending
    U = evecs.flip(-1)[..., :k]
    # S from the norms of M^T U rather than sqrt(eigenvalue): the error is then second order in U's.
    W = M.mT @ U
    S = torch.linalg.vector_norm(W, dim=-2)
    V = W / _safe(S).unsqueeze(-2)
    return _descending(U, S, V)


def factored_gram_svd(A: torch.Tensor, B: torch.Tensor, k: int | None = None):
    """Top-k triples of `A @ B` (A: [..., m, r], B: [..., r, n]) from the r x r Grams of its factors.

    `A = Qa Ra` with `Ra = diag(sqrt(la)) Ea^T` from `eigh(A^T A) = (la, Ea)` and `Qa = A Ea diag(1/sqrt(la))`
    (likewise B^T); the SVD of the r x r core `Ra Rb^T` gives the triples. GEMMs only, no QR.
    """
    Ea, ia, sa = _gram_root(A.mT @ A)
    Eb, ib, sb = _gram_root(B @ B.mT)
    core = (sa.unsqueeze(-1) * Ea.mT) @ (Eb * sb.unsqueeze(-2))
    Uc, S, Vch = torch.linalg.svd(core)
    U = A @ ((Ea * ia.unsqueeze(-2)) @ Uc[..., :k])
    V = B.mT @ ((Eb * ib.unsqueeze(-2)) @ Vch.mT[..., :k])
    return U, S[..., :k], V


def _gram_root(G: torch.Tensor):
    """Eigenvectors E, 1/sqrt and sqrt of a Gram matrix's eigenvalues; those under the noise floor count as 0."""
    lam, E = torch.linalg.eigh(G)
    floor = lam[..., -1:].clamp_min(0) * G.shape[-1] * torch.finfo(G.dtype).eps
    ok = lam > floor
    s = torch.where(ok, lam.clamp_min(0).sqrt(), torch.zeros_like(lam))
    return E, torch.where(ok, 1 / torch.where(ok, s, torch.ones_like(s)), torch.zeros_like(s)), s


def randomized_svd(factors, k: int, *, oversample: int = 10, n_iter: int = 4, seed: int = 0):
    """Top-k triples of the product of `factors` by a randomised range finder with power iterations."""
    m, n = factors[0].shape[-2], factors[-1].shape[-1]
    batch = factors[0].shape[:-2]
    ref = factors[0]
    width = min(k + oversample, m, n)
    # A fixed seed on the CPU: the same probes, hence the same vectors, on every run and device.
    g = torch.Generator().manual_seed(seed)
    omega = torch.randn(*batch, n, width, generator=g, dtype=ref.dtype).to(ref.device)
    Q = torch.linalg.qr(matmul(factors, omega)).Q
    for _ in range(n_iter):  # re-orthonormalise every half-step, or the probes collapse onto the top vector
        Q = torch.linalg.qr(rmatmul(factors, Q)).Q
        Q = torch.linalg.qr(matmul(factors, Q)).Q
    small = rmatmul(factors, Q).mT  # Q^T W: [width, n]
    Ub, S, Vh = torch.linalg.svd(small, full_matrices=False)
    return Q @ Ub[..., :k], S[..., :k], Vh.mT[..., :k]


def residual(factors, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Per triple, `max(|W V_i - S_i U_i|, |W^T U_i - S_i V_i|) / S_0`: zero for exact triples."""
    r_u = torch.linalg.vector_norm(matmul(factors, V) - U * S.unsqueeze(-2), dim=-2)
    r_v = torch.linalg.vector_norm(rmatmul(factors, U) - V * S.unsqueeze(-2), dim=-2)
    return torch.maximum(r_u, r_v) / _safe(S[..., :1])


def subspace_angles(X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Per column i, the angle (radians) between X[:, i] and Y[:, i], ignoring sign."""
    x = X / _safe(torch.linalg.vector_norm(X, dim=-2)).unsqueeze(-2)
    y = Y / _safe(torch.linalg.vector_norm(Y, dim=-2)).unsqueeze(-2)
    y = y * torch.where((x * y).sum(-2) < 0, -1.0, 1.0).to(y).unsqueeze(-2)
    # 2 asin(|x - y| / 2) is accurate for tiny angles, where arccos(x . y) cannot resolve below ~1e-8.
    return 2 * torch.asin((torch.linalg.vector_norm(x - y, dim=-2) / 2).clamp(max=1))


def _safe(x: torch.Tensor) -> torch.Tensor:
    """x with zeros replaced by ones, for divisions whose numerator is then zero too."""
    return torch.where(x > 0, x, torch.ones_like(x))


def _descending(U, S, V):
    order = S.argsort(dim=-1, descending=True, stable=True)
    cols = order.unsqueeze(-2)
    return U.gather(-1, cols.expand_as(U)), S.gather(-1, order), V.gather(-1, cols.expand_as(V))
