"""surgery.alignment: cosines against an independent numpy computation, labels, signs, exports, bad input."""
from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import torch

import surgery
from surgery.analysis.alignment import alignment
from surgery.analysis.cosines import extremes, unit_rows
from tests.conftest import build
from tests.reference import reference_matrix, reference_weights

pytestmark = pytest.mark.usefixtures("one_thread")


ANCHOR = {"K": "in", "V": "out", "OV": "out", "QK": "in"}  # DESIGN.md: the side whose sign is fixed


def numpy_embeddings(model) -> dict:
    """Embedding vectors read straight off the HF modules (not through the adapter), unit rows."""
    unit = lambda w: w / np.linalg.norm(w, axis=1, keepdims=True)  # noqa: E731
    if type(model).__name__ == "DecisionTransformerModel":
        m = {"state_in": model.embed_state.weight.detach().numpy().T,  # Linear [out, in]: column j is input j
             "action_out": model.predict_action[0].weight.detach().numpy(),
             "time_in": model.embed_timestep.weight.detach().numpy()}
    else:
        m = {"token_in": model.transformer.wte.weight.detach().numpy()}
    return {k: unit(v.astype(np.float64)) for k, v in m.items()}


def numpy_triples(model, block, weight, head):
    """Reference SVD (numpy, float64) with the sign rule applied independently."""
    M = reference_matrix(model, block, weight, head, reference_weights(model, block))
    U, S, Vt = np.linalg.svd(M, full_matrices=False)
    r = 8 if weight in ("OV", "QK") else len(S)  # a head's product has rank d_head = 24 / 3
    U, S, V = U[:, :r], S[:r], Vt.T[:, :r]
    A = U if ANCHOR[weight] == "in" else V
    sign = np.sign(A[np.abs(A).argmax(0), np.arange(A.shape[1])])
    return U * sign, S, V * sign


@pytest.mark.parametrize("kind", ["dt", "gpt2"])
def test_cosines_match_numpy(kind):
    model = build(kind, square=True)
    emb = numpy_embeddings(model)
    k = 3
    a = alignment(model, embeddings=list(emb), top=k)
    rec = a.records
    checked = 0
    for weight in ("K", "V", "OV", "QK"):
        sides = {"K": ["in"], "V": ["out"], "OV": ["in", "out"], "QK": ["in", "out"]}[weight]
        for block in range(2):
            for head in ([None] if weight in ("K", "V") else range(3)):
                U, S, V = numpy_triples(model, block, weight, head)
                for side in sides:
                    vecs = U if side == "in" else V
                    for name, E in emb.items():
                        cos = E @ vecs  # [labels, r]
                        mine = rec.where(embedding=name, weight=weight, block=block, side=side,
                                         head=-1 if head is None else head)
                        for i in range(vecs.shape[1]):
                            r = mine.where(idx=i)
                            top = r.where(tail="top").sort("rank")
                            bottom = r.where(tail="bottom").sort("rank")
                            np.testing.assert_allclose(top["cos"], np.sort(cos[:, i])[::-1][:k], atol=1e-9)
                            np.testing.assert_allclose(bottom["cos"], np.sort(cos[:, i])[:k], atol=1e-9)
                            np.testing.assert_allclose(top["cos"], cos[top["label_index"].astype(int), i], atol=1e-9)
                            np.testing.assert_allclose(r["singular_value"], S[i], rtol=1e-9)
                            checked += 1
    assert checked > 100


def test_labels_are_names():
    from surgery.behaviour.metadata import DTMetadata

    model = build("dt")
    meta = DTMetadata(env_id="Hopper-v5", state_dim=5, act_dim=3, max_ep_len=40,
                      state_names=["z", "angle", "thigh", "leg", "foot"], action_names=["thigh_j", "leg_j", "foot_j"])
    a = alignment(surgery.load(model, metadata=meta), embeddings=["action_out", "state_in", "time_in"], top=2)
    assert set(a.records.where(embedding="action_out")["label"]) <= {"thigh_j", "leg_j", "foot_j"}
    assert set(a.records.where(embedding="state_in")["label"]) <= {"z", "angle", "thigh", "leg", "foot"}
    assert all(s.startswith("t=") for s in a.records.where(embedding="time_in")["label"])
    labels = a.records["label"]
    assert all(labels[i] == a.adapter.embedding_sets()[e].labels[j]
               for i, (e, j) in enumerate(zip(a.records["embedding"], a.records["label_index"])))


def test_sign_handling_flipping_the_embeddings_swaps_the_tails():
    model = build("dt")
    a = alignment(model, embeddings="action_out", top=3)
    with torch.no_grad():
        model.predict_action[0].weight.neg_()
    b = alignment(model, embeddings="action_out", top=3)
    for x, y in ((a.records.where(tail="top"), b.records.where(tail="bottom")),
                 (a.records.where(tail="bottom"), b.records.where(tail="top"))):
        np.testing.assert_allclose(x["cos"], -y["cos"], atol=1e-12)
        np.testing.assert_array_equal(x["label_index"], y["label_index"])
    np.testing.assert_allclose(a.vectors["cos"], -b.vectors["cos"], atol=1e-12)
    np.testing.assert_allclose(a.vectors["p"], b.vectors["p"])  # |cos| is what counts: sign is a convention


def test_record_invariants():
    a = alignment(build("gpt2"), top=4)
    r = a.records
    np.testing.assert_allclose(r["abs_cos"], np.abs(r["cos"]))
    assert (r["p_adj"] >= r["p"] - 1e-15).all() and (r["p_adj"] <= 1).all() and (r["p"] > 0).all()
    one = r.where(embedding="token_in", weight="K", block=0, idx=0)
    assert (np.diff(one.where(tail="top").sort("rank")["cos"]) <= 0).all()  # most positive first
    assert (np.diff(one.where(tail="bottom").sort("rank")["cos"]) >= 0).all()  # most negative first
    v = a.vectors
    for row in v.head(20).rows():
        mine = r.where(embedding=row["embedding"], weight=row["weight"], block=row["block"], side=row["side"],
                       idx=row["idx"], head=-1 if row["head"] is None else row["head"])
        assert row["abs_cos"] == pytest.approx(mine["abs_cos"].max())
        assert row["p"] == pytest.approx(mine["p"].min())
    # K and V have no head; OV and QK have one per head.
    assert set(r.where(weight="K")["head"]) == {-1} and set(r.where(weight="OV")["head"]) == {0, 1, 2}


def test_selection():
    model = build("gpt2")
    a = alignment(model, weights=["OV"], blocks=[1], heads=[2], vectors=3, top=2, sides="out")
    r = a.records
    assert set(r["weight"]) == {"OV"} and set(r["block"]) == {1} and set(r["head"]) == {2}
    assert set(r["idx"]) == {0, 1, 2} and set(r["side"]) == {"out"}
    assert len(a.vectors) == 3 * 2  # 3 vectors x 2 sets
    b = alignment(model, weights="K", vectors=[0, 5], top=1)
    assert set(b.records["idx"]) == {0, 5}


def test_exports(tmp_path):
    a = alignment(build("dt"), embeddings=["action_out", "return_in"], weights=["K", "OV"], top=2)
    text = a.to_csv(tmp_path / "a.csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(a.records) and (tmp_path / "a.csv").read_text() == text
    assert rows[0].keys() >= {"block", "weight", "head", "side", "idx", "singular_value", "embedding", "label",
                              "cos", "rank", "tail", "p", "p_adj", "z"}
    assert {r["head"] for r in rows if r["weight"] == "K"} == {""}
    data = json.loads(a.to_json())
    assert len(data) == len(a.records) and all(d["head"] is None for d in data if d["weight"] == "K")
    pd = pytest.importorskip("pandas")
    df = a.to_pandas()
    assert len(df) == len(a.records) and df["head"].dtype == pd.Int64Dtype()
    assert df.loc[df.weight == "K", "head"].isna().all()


def test_screened_search_equals_exact():
    """The bfloat16 screen proves its candidates: results equal the exact product's."""
    g = torch.Generator().manual_seed(0)
    E = torch.randn(6000, 48, generator=g) + 0.7 * torch.randn(1, 48, generator=g)
    E = torch.cat([E, E[:50]])  # exact duplicates: ties the screen must not break wrongly
    E, D = unit_rows(E, torch.float32), unit_rows(torch.randn(300, 48, generator=g), torch.float32)
    a, b = extremes(D, E, 12, screen=True), extremes(D, E, 12, screen=False)
    torch.testing.assert_close(a.top, b.top, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.bottom, b.bottom, atol=1e-6, rtol=0)
    same = torch.isclose(E[a.top_idx] , E[b.top_idx]).all(-1)  # same vector (a duplicate may stand in)
    assert same.all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(embeddings="nope"), r"unknown embedding set.*has: state_in"),
    (dict(weights=["Q"]), r"unknown weight.*valid: 'K', 'V', 'OV', 'QK'"),
    (dict(blocks=[2]), r"block \[2\] out of range.*2 blocks \(valid: 0..1\)"),
    (dict(heads=[3]), r"head \[3\] out of range.*3 heads"),
    (dict(vectors=[99]), r"vector index \[99\] out of range"),
    (dict(top=0), r"top=0 must be a positive integer"),
    (dict(correction="fdr"), r"correction='fdr' is not known"),
    (dict(weights=["K"], sides="out"), r"no residual-facing side 'out'.*K: in"),
    (dict(alpha=1.5), r"alpha=1.5 must be strictly between 0 and 1"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        alignment(build("dt"), **kwargs)


def test_table_sort_is_stable_both_ways():
    from surgery.analysis.tables import Table

    t = Table({"a": np.array([2, 1, 2, 1, 3]), "b": np.array([0.5, 0.1, 0.9, 0.1, 0.0]), "i": np.arange(5)})
    assert t.sort("a", "b", descending=[False, True])["i"].tolist() == [1, 3, 2, 0, 4]
    assert t.sort("a", descending=True)["i"].tolist() == [4, 0, 2, 1, 3]  # ties keep their order
    assert t.where(a=2)["i"].tolist() == [0, 2] and len(t.head(2)) == 2
    with pytest.raises(ValueError, match="differ in length"):
        Table({"a": [1, 2], "b": [1]})


def test_energy_share_is_of_the_whole_matrix_on_a_fast_route():
    """gram with 4 vectors computes 4 triples; their share is still of ||W||_F^2 (it was 5x too large)."""
    from surgery.core.decomposition import energy

    model = build("dt")
    exact = alignment(model, embeddings="action_out", weights=("K", "OV"), progress=False).vectors
    fast = alignment(model, embeddings="action_out", weights=("K", "OV"), method="gram", vectors=4,
                     progress=False).vectors
    for w in ("K", "OV"):
        for r in fast.where(weight=w).rows():
            head = -1 if r["head"] is None else r["head"]
            ref = exact.where(weight=w, block=r["block"], head=head, side=r["side"], idx=r["idx"])
            assert r["energy"] == pytest.approx(ref["energy"][0], rel=1e-4)
    # ||W||_F^2 against sum S^2 of a float64 SVD, for a per-block weight and per head
    adapter = surgery.wrap(model)
    S = torch.linalg.svdvals(adapter.mlp_in(0).detach().double())
    assert float(energy(adapter, 0, "K")) == pytest.approx(float((S ** 2).sum()), rel=1e-10)
    w = adapter.attn_weights(1)
    ov = w["W_V"].detach().double() @ w["W_O"].detach().double()
    assert energy(adapter, 1, "OV").numpy() == pytest.approx((torch.linalg.svdvals(ov) ** 2).sum(-1).numpy(), rel=1e-10)


@pytest.mark.parametrize("correction", ["holm", "bh", "by"])
def test_the_threshold_separates_what_the_correction_calls_beyond_chance(correction):
    """For the step-up corrections the bar is the realised one: vectors below it were called beyond chance."""
    a = alignment(surgery.load("hopper"), embeddings="action_out", correction=correction, progress=False)
    thr = a.threshold("action_out")
    v = a.vectors
    beyond = np.asarray(v["p_adj"], float) < 0.05
    assert beyond.sum() > 10
    assert np.all(np.asarray(v["abs_cos"])[beyond] >= thr - 1e-9)
    assert np.all(np.asarray(v["p_adj"])[np.asarray(v["abs_cos"]) >= thr + 1e-6] < 0.05)
