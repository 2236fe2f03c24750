"""`surgery compare`: agreement of findings between two models, matched residual bases, damage profiles."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import surgery
from surgery import cli
from surgery.experiments.compare import compare_models, damage_profiles, label_map, overlap, overlap_pvalue

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hopper():
    return surgery.load("hopper")


def test_a_model_agrees_with_itself(hopper):
    c = compare_models(hopper, hopper, embeddings=["action_out", "state_in"], weights=["K", "V"])
    agree = c.agreement.rows()
    assert all(r["only_a"] == 0 and r["only_b"] == 0 and r["both"] > 0 and r["jaccard"] == 1.0 for r in agree)
    ov, p = np.asarray(c.cells["overlap"], float), np.asarray(c.cells["p_overlap"], float)
    assert np.isfinite(ov).any() and np.allclose(ov[np.isfinite(ov)], 1.0, atol=1e-9)
    assert (p[np.isfinite(p)] < 0.05).all()  # the same subspace overlaps more than random ones do
    # ... more than with any other aligned cell, and more than vectors with the same labels and cosines do.
    other, same = np.asarray(c.cells["overlap_other_cells"], float), np.asarray(c.cells["p_same_labels"], float)
    assert (other[np.isfinite(other)] < 1 - 1e-6).all() and np.isfinite(same).any()
    assert (same[np.isfinite(same)] < 0.05).all()


def test_the_same_labels_null_is_calibrated():
    """Cells drawn from the null itself (each vector: its label's direction at its cos, else random): p uniform."""
    from surgery.experiments.compare import same_labels_pvalue

    g = torch.Generator().manual_seed(5)
    d, n = 16, 6
    Ea = torch.randn(n, d, generator=g, dtype=torch.float64)
    Eb = torch.randn(n, d, generator=g, dtype=torch.float64)
    Ea, Eb = Ea / Ea.norm(dim=1, keepdim=True), Eb / Eb.norm(dim=1, keepdim=True)
    Ma, Mb = label_map(Ea), label_map(Eb)
    rows = [{"label_index": 1, "cos": 0.6}, {"label_index": 4, "cos": -0.5}]

    def vec(E):
        out = []
        for r in rows:
            e = E[r["label_index"]]
            u = torch.randn(d, generator=g, dtype=torch.float64)
            u = u - (u @ e) * e
            out.append(r["cos"] * e + (1 - r["cos"] ** 2) ** 0.5 * u / u.norm())
        return torch.stack(out, 1)

    ps = [same_labels_pvalue(float(overlap(Ma @ vec(Ea), Mb @ vec(Eb))), rows, rows, Ea, Eb, Ma, Mb, 400, i)
          for i in range(150)]
    assert stats.kstest(ps, "uniform").pvalue > 0.01 and 0.02 < np.mean(np.array(ps) < 0.1) < 0.2


def test_cells_beyond_chance_are_counted_as_analyze_counts_carriers():
    """Not near-null vectors (below the noise floor): LunarLander's return_in has them in block 0 and 1 OV."""
    lunar = surgery.load("lunarlander")
    c = compare_models(lunar, lunar, embeddings=["return_in"])
    w = c.alignments[0].weights
    carriers = int(np.sum(np.asarray(w["n_significant"]) > 0))
    assert int(np.sum(np.asarray(c.cells["beyond_a"], bool))) == carriers


def test_a_trained_model_and_an_untrained_twin_share_little(hopper):
    torch.manual_seed(0)
    untrained = type(hopper.model)(hopper.model.config).eval()
    twin = surgery.load(untrained, metadata=hopper.metadata)
    c = compare_models(hopper, twin, embeddings=["action_out"], weights=["K", "V"])
    row = c.agreement.rows()[0]
    assert row["only_a"] > 0 and row["both"] < row["only_a"]


def test_label_coordinates_do_not_depend_on_the_residual_basis():
    """Rotating a model's whole residual space (embeddings and vectors alike) changes no label-space angle."""
    g = torch.Generator().manual_seed(1)
    E = torch.randn(11, 16, generator=g, dtype=torch.float64)
    E /= E.norm(dim=1, keepdim=True)
    U = torch.linalg.qr(torch.randn(16, 3, generator=g, dtype=torch.float64)).Q
    Q = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64)).Q
    M, Mq = label_map(E), label_map(E @ Q)
    assert torch.allclose(M @ U, Mq @ (Q.T @ U), atol=1e-10)  # the same coordinates in the rotated frame
    assert float(overlap(M @ U, Mq @ (Q.T @ U))) == pytest.approx(1.0, abs=1e-10)


def test_the_angle_null_is_calibrated():
    """p-values of the label-space overlap of random subspaces are uniform."""
    g = torch.Generator().manual_seed(3)
    d, n, ka, kb = 12, 6, 2, 3
    Ma = label_map(torch.randn(n, d, generator=g, dtype=torch.float64))
    Mb = label_map(torch.randn(n, d, generator=g, dtype=torch.float64))
    ps = []
    for i in range(150):
        A = torch.linalg.qr(torch.randn(d, ka, generator=g, dtype=torch.float64)).Q
        B = torch.linalg.qr(torch.randn(d, kb, generator=g, dtype=torch.float64)).Q
        ps.append(overlap_pvalue(float(overlap(Ma @ A, Mb @ B)), Ma, Mb, ka, kb, draws=400, seed=1000 + i))
    assert stats.kstest(ps, "uniform").pvalue > 0.001


def test_damage_profiles_rank_correlation():
    idx = np.arange(8)
    damage = np.linspace(100, 0, 8)
    a = {"block": np.zeros(8), "weight": np.array(["K"] * 8, dtype=object), "head": np.full(8, np.nan),
         "idx": idx, "damage": damage}
    same = damage_profiles(a, a).rows()[0]
    flipped = damage_profiles(a, {**a, "damage": damage[::-1]}).rows()[0]
    assert same["rho"] == pytest.approx(1.0) and flipped["rho"] == pytest.approx(-1.0) and same["n"] == 8


def test_models_of_other_shapes_are_refused(hopper):
    with pytest.raises(surgery.SurgeryError, match="differ in shape|do not share"):
        compare_models(hopper, surgery.load("halfcheetah"), embeddings=["action_out"], weights=["K"])


def test_cli_bad_atlas_table_is_one_line(tmp_path, capsys):
    bad = tmp_path / "atlas.csv"
    bad.write_text("block,weight\n0,K\n")
    code = cli.main(["compare", "hopper", "hopper", "--atlas-a", str(bad), "--atlas-b", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "lacks the columns" in err and len(err.strip().splitlines()) == 1


def test_cli_an_atlas_of_the_other_model_is_refused(capsys):
    """Swapped atlases would compare the wrong damage profiles in silence: their atlas.json names the weights."""
    results = Path(__file__).resolve().parents[1] / "docs" / "atlas-results"
    swapped = [results / "hopper-seed1-top16" / "atlas.csv", results / "hopper-top16" / "atlas.csv"]
    code = cli.main(["compare", "hopper", "hopper-seed1", "--atlas-a", str(swapped[0]), "--atlas-b", str(swapped[1])])
    err = capsys.readouterr().err
    assert code == 2 and "not of hopper (2a29cea7a99b)" in err and len(err.strip().splitlines()) == 1
