"""The block-by-block scan: every weight and head, fast and exact routes agree, one block's SVDs at a time."""
from __future__ import annotations

import json

import pytest
import torch

import surgery
from surgery.core.state import state
from surgery.lm import scan as lm_scan
from tests.conftest import build


@pytest.mark.parametrize("kind", ["gpt2", "gptj"])
def test_scan_covers_every_weight_head_and_side(kind):
    model = build(kind)
    res = lm_scan.scan(model, lm_scan.ScanConfig(k=3, tokens=4, null_draws=50, progress=False))
    a = surgery.wrap(model)
    # Per block: K in, V out, and both sides of every head's OV and QK.
    assert len(res.tables) == a.n_blocks * (2 + 2 * 2 * a.n_heads) and len(res.seconds) == a.n_blocks
    assert {(t.weight, t.side) for t in res.tables} == {("K", "in"), ("V", "out"), ("OV", "in"), ("OV", "out"),
                                                          ("QK", "in"), ("QK", "out")}
    assert all(t.pos_ids.shape == (3, 4) for t in res.tables)
    assert state(a).svd_cache == {}  # nothing left behind: one block's temporaries at a time
    assert max(res.max_residual.values()) < 1e-10  # the gram route in float64
    doc = json.loads(res.to_json())
    assert len(doc["vectors"]) == len(res.tables) * 3 and set(doc["summary"]) == {"K", "V", "OV", "QK"}


def test_fast_and_exact_scans_agree():
    model = build("gptj")
    cfg = dict(k=3, tokens=4, null_draws=50, progress=False)
    exact = lm_scan.scan(model, lm_scan.ScanConfig(method="exact", **cfg))
    fast = lm_scan.scan(model, lm_scan.ScanConfig(method="gram", **cfg))
    for e, f in zip(exact.tables, fast.tables):
        assert (e.block, e.weight, e.head, e.side) == (f.block, f.weight, f.head, f.side)
        assert torch.equal(e.pos_ids, f.pos_ids) and torch.equal(e.neg_ids, f.neg_ids)
        torch.testing.assert_close(e.S, f.S, rtol=1e-9, atol=1e-12)


def test_scan_keeps_cache_entries_it_did_not_create():
    model = build("gpt2")
    mine = surgery.decompose(model, block=0, weight="K")
    lm_scan.scan(model, lm_scan.ScanConfig(k=2, tokens=3, null_draws=30, progress=False, weights=("K",)))
    assert surgery.decompose(model, block=0, weight="K") is mine


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="lanczos"), r"method='lanczos' is not a method; valid: 'exact', 'gram', 'randomized', 'auto'"),
    (dict(weights=("W_in",)), r"weights=\('W_in',\): valid weights are 'K', 'V', 'OV', 'QK'"),
    (dict(embedding="state_in"), r"embedding='state_in' is not an embedding set of this model; valid: token_in, token_out"),
    (dict(k=0), r"k=0 must be a positive number"),
    (dict(dtype="bfloat16"), r"dtype='bfloat16' is not an analysis dtype"),
])
def test_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        lm_scan.scan(build("gpt2"), lm_scan.ScanConfig(progress=False, **kwargs))
