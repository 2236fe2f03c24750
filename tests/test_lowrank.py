"""Fast top-k routes against matrices whose SVD is known by construction, and through `decompose`.

Stated tolerances (docs/lm.md): for top-k triples with relative gaps >= 1%,
gram float64: angle < 1e-9, S relative error < 1e-12; gram float32: angle < 2e-3;
randomized (oversample 10, n_iter 4) on a spectrum decaying 0.8x per triple: angle < 1e-6 (float64).
"""
from __future__ import annotations

import pytest
import torch

import surgery
import surgery.core.decomposition as dec
from surgery.core import lowrank
from tests.conftest import build


def planted(m: int, n: int, s: torch.Tensor, seed: int = 0, dtype=torch.float64):
    """W = P diag(s) R^T with random orthonormal P, R: an SVD known without computing one."""
    g = torch.Generator().manual_seed(seed)
    P = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64)).Q
    R = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64)).Q
    return (P * s) @ R.T, P, R


def angles(X, Y):
    return lowrank.subspace_angles(X.double(), Y.double())


SPECTRUM = 10.0 * 0.8 ** torch.arange(40, dtype=torch.float64)  # gaps of 20% between neighbours


@pytest.mark.parametrize("shape", [(60, 150), (150, 60)])
def test_gram_float64_recovers_the_planted_triples(shape):
    W, P, R = planted(*shape, SPECTRUM)
    U, S, V = lowrank.gram_svd(W, k=12)
    torch.testing.assert_close(S, SPECTRUM[:12], rtol=1e-12, atol=0)
    assert angles(U, P[:, :12]).max() < 1e-9 and angles(V, R[:, :12]).max() < 1e-9
    torch.testing.assert_close(U.T @ W, S[:, None] * V.T, atol=1e-12, rtol=0)  # the DESIGN.md invariant


def test_gram_float32_is_accurate_for_separated_top_triples():
    W, P, R = planted(128, 512, SPECTRUM)
    U, S, V = lowrank.gram_svd(W.float(), k=8)
    assert angles(U, P[:, :8]).max() < 2e-3 and angles(V, R[:, :8]).max() < 2e-3
    torch.testing.assert_close(S.double(), SPECTRUM[:8], rtol=1e-5, atol=0)


def test_randomized_on_a_decaying_spectrum():
    W, P, R = planted(200, 300, SPECTRUM)
    U, S, V = lowrank.randomized_svd((W,), k=8)
    assert angles(U, P[:, :8]).max() < 1e-6 and angles(V, R[:, :8]).max() < 1e-6
    torch.testing.assert_close(U.T @ W, S[:, None] * V.T, atol=1e-12, rtol=0)


def test_randomized_is_honest_on_a_flat_spectrum():
    """Random weights (flat spectra) are its worst case: the residual certificate must show the error it makes."""
    s = 1 + 0.01 * torch.linspace(1, 0, 60, dtype=torch.float64)  # 1% spread over 60 triples
    W, P, R = planted(200, 300, s)
    U, S, V = lowrank.randomized_svd((W,), k=4, n_iter=1)
    res = lowrank.residual((W,), U, S, V)
    assert res.max() > 1e-4  # not converged, and the certificate says so
    gap = (S[:4] ** 2 - s[4] ** 2).abs().min()  # the smallest squared gap to an uncomputed triple
    # Wedin: sin(angle) <~ residual * S0 / gap (in singular values); a loose check that it bounds the real error.
    assert torch.sin(angles(U, P[:, :4])).max() <= res.max() * s[0] ** 2 / gap * 2


@pytest.mark.parametrize("method", ["gram", "randomized"])
def test_product_routes_match_the_product_svd(method):
    """OV-like: A [m, r] @ B [r, n] batched over heads, never forming the m x n product."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(3, 40, 8, generator=g, dtype=torch.float64) * torch.logspace(0, -1, 8, dtype=torch.float64)
    B = torch.randn(3, 8, 50, generator=g, dtype=torch.float64)
    U, S, V = lowrank.top_svd((A, B), 5, method, n_iter=6)
    Ur, Sr, Vhr = torch.linalg.svd(A @ B)
    torch.testing.assert_close(S, Sr[:, :5], rtol=1e-9, atol=0)
    assert angles(U, Ur[..., :5]).max() < 1e-6 and angles(V, Vhr.mT[..., :5]).max() < 1e-6
    assert lowrank.residual((A, B), U, S, V).max() < 1e-9


def test_factored_gram_tolerates_rank_deficient_factors():
    g = torch.Generator().manual_seed(2)
    A = torch.randn(30, 6, generator=g, dtype=torch.float64)
    A[:, 5] = A[:, 0]  # rank 5
    B = torch.randn(6, 20, generator=g, dtype=torch.float64)
    U, S, V = lowrank.factored_gram_svd(A, B, k=4)
    torch.testing.assert_close(S, torch.linalg.svdvals(A @ B)[:4], rtol=1e-9, atol=0)
    assert torch.isfinite(U).all() and torch.isfinite(V).all()


@pytest.mark.parametrize("weight", ["K", "V", "OV", "QK"])
@pytest.mark.parametrize("method", ["gram", "randomized"])
def test_decompose_fast_top_k_agrees_with_exact(weight, method):
    model = build("gptj", square=False)
    a = surgery.wrap(model)
    if weight in ("K", "V"):
        # Trained weights have decaying spectra; random ones are flat, randomized's worst case (tested above).
        W = a.mlp_in(1) if weight == "K" else a.mlp_out(1)
        with torch.no_grad():
            W.copy_(planted(*W.shape, SPECTRUM[:24])[0])
    exact = surgery.decompose(model, block=1, weight=weight)
    fast = surgery.decompose(model, block=1, weight=weight, method=method, k=4)
    assert fast.method == method and fast.U.shape[-1] == 4 and fast.residual.shape == fast.S.shape
    torch.testing.assert_close(fast.S, exact.S[..., :4], rtol=1e-8, atol=1e-12)
    # Same sign rule, so the vectors themselves agree, not only up to sign.
    torch.testing.assert_close(fast.U, exact.U[..., :4], atol=1e-6, rtol=0)
    torch.testing.assert_close(fast.V, exact.V[..., :4], atol=1e-6, rtol=0)
    assert fast.residual.max() < 1e-8


def test_exact_top_k_is_a_slice_of_the_cached_full_svd(monkeypatch):
    model = build("gpt2")
    calls = []
    real = dec._compute
    monkeypatch.setattr(dec, "_compute", lambda *a: calls.append(a[1:3] + a[5:]) or real(*a))
    full = surgery.decompose(model, block=0, weight="K")
    top = surgery.decompose(model, block=0, weight="K", k=3)
    assert torch.equal(top.U, full.U[:, :3]) and len(calls) == 1
    # Fast routes are cached under their own (method, k) keys and invalidated like the exact one.
    g3 = surgery.decompose(model, block=0, weight="K", method="gram", k=3)
    assert surgery.decompose(model, block=0, weight="K", method="gram", k=3) is g3
    surgery.decompose(model, block=0, weight="K", method="gram", k=4)
    surgery.decompose(model, block=0, weight="K", method="randomized", k=3)
    assert calls[1:] == [(0, "K", "gram", 3), (0, "K", "gram", 4), (0, "K", "randomized", 3)]
    with surgery.patch(model, block=0, weight="K", idx=0, op="zero"):
        inside = surgery.decompose(model, block=0, weight="K", method="gram", k=3)
        assert inside is not g3 and inside.S[0] < g3.S[0]
    assert surgery.decompose(model, block=0, weight="K", method="gram", k=3) is g3  # restored bitwise


def test_auto_takes_randomized_on_decaying_spectra_and_gram_on_flat_ones():
    W, P, _ = planted(200, 300, SPECTRUM)
    U, S, V, route, res = lowrank.auto_svd((W,), 6)
    assert route == "randomized" and res.max() <= lowrank.AUTO_TOL and angles(U, P[:, :6]).max() < 1e-6
    flat, P, _ = planted(200, 300, 1 + 0.01 * torch.linspace(1, 0, 60, dtype=torch.float64))
    U, S, V, route, res = lowrank.auto_svd((flat,), 4)
    assert route == "gram" and res.max() < 1e-9 and angles(U, P[:, :4]).max() < 1e-6
    model = build("gpt2")  # random weights: flat spectra, so auto ends up on the gram route, as recorded
    svd = surgery.decompose(model, block=0, weight="K", method="auto", k=3)
    assert svd.method == "gram"
    torch.testing.assert_close(svd.S, surgery.decompose(model, block=0, weight="K", k=3).S, rtol=1e-9, atol=0)


def test_gram_without_k_gives_every_triple():
    model = build("gpt2")
    exact = surgery.decompose(model, block=1, weight="V")
    gram = surgery.decompose(model, block=1, weight="V", method="gram")
    assert gram.S.shape == exact.S.shape
    torch.testing.assert_close(gram.S, exact.S, rtol=1e-9, atol=1e-12)


def test_bf16_weights_fast_routes():
    model = build("gptj", square=True).to(torch.bfloat16)
    W = model.transformer.h[0].mlp.fc_in.weight.T.double()
    for dtype, tol in ((torch.float64, 1e-10), (torch.float32, 1e-4)):
        for method in ("gram", "randomized"):
            U, S, V = surgery.decompose(model, block=0, weight="K", method=method, k=5, dtype=dtype)
            assert U.dtype == dtype
            torch.testing.assert_close(U.double().T @ W, (S[:, None] * V.T).double(), atol=tol, rtol=tol)


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="svd"), r"method='svd' is not a method; valid: 'exact', 'gram', 'randomized', 'auto'"),
    (dict(method="randomized"), r"method='randomized' computes the top k triples only: give k=1..24"),
    (dict(k=0), r"k=0 is out of range: K has 24 singular triples \(valid: 1..24, or None for all\)"),
    (dict(k=25, method="gram"), r"k=25 is out of range"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        surgery.decompose(build("gpt2"), block=0, weight="K", **kwargs)
