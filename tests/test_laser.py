"""`surgery.experiments.laser`: rank cuts against one baseline, one-sided tests for an improvement."""
from __future__ import annotations

import json

import numpy as np
import pytest

import surgery
from surgery.errors import SurgeryError
from surgery.experiments.laser import cuts, laser

RUN = dict(episodes=6, max_steps=120, progress=False)


@pytest.fixture(scope="module")
def sweep(balancer, tmp_path_factory):
    out = tmp_path_factory.mktemp("laser")
    return laser(balancer, weights=("K", "V"), blocks=[0], fractions=(0.01, 0.03, 0.5), out=out, **RUN), out


def test_the_plan_keeps_round_fraction_times_rank_and_drops_duplicates(balancer):
    plan = cuts(balancer, ("K", "OV"), [1], (0.01, 0.015, 0.5, 0.999))
    rank = balancer.rank("K")  # 64: 0.01 and 0.015 both keep 1 triple; 0.999 keeps all 64: no cut
    assert [(b, w, k) for b, w, k, _ in plan] == [(1, "K", 1), (1, "K", 32), (1, "OV", 1), (1, "OV", 32)]
    assert all(k < rank for _, _, k, _ in plan)
    for bad, message in (((), "valid weights"), (("X",), "valid weights")):
        with pytest.raises(SurgeryError, match=message):
            cuts(balancer, bad, None, (0.5,))
    for fractions in ((0.0,), (1.0,), (1.5,), ()):
        with pytest.raises(SurgeryError, match="between 0 and 1"):
            cuts(balancer, ("K",), None, fractions)
    with pytest.raises(SurgeryError, match="out of range"):
        cuts(balancer, ("K",), [7], (0.5,))
    with pytest.raises(SurgeryError, match="no cuts"):
        cuts(balancer, ("K",), [0], (0.999,))


def test_known_answers_on_the_hand_wired_balancer(sweep):
    """V writes the policy with its 2 largest triples: keeping 1 breaks it, keeping 2 changes nothing."""
    s, _ = sweep
    r = {(row["weight"], row["kept"]): row for row in s.rows.rows()}
    assert r[("V", 1)]["change"] < -100 and r[("V", 1)]["p_improve"] == 1.0  # damage is not an improvement
    assert r[("V", 2)]["change"] == 0 and r[("V", 2)]["p_two_sided"] == 1.0  # every episode unchanged
    assert r[("K", 32)]["change"] == 0  # K's two readers are among its first 32
    assert not s.rows["improves"].any() and "too few episodes" in s.sentence  # 6 pairs, 6 cuts: undecidable


def test_the_statistics_are_the_one_sided_sign_flip_test_holm_corrected(sweep, balancer):
    s, _ = sweep
    base = s.baseline.returns
    p = []
    for row in s.rows.rows():  # each cut again, the independent way: patched weights, plain evaluate
        heads = range(balancer.n_heads) if row["weight"] in ("OV", "QK") else [None]
        edits = [surgery.Edit(0, row["weight"], 0, head=h, op="keep_top", value=int(row["kept"])) for h in heads]
        with surgery.patch(balancer, edits):
            edited = surgery.evaluate(balancer, episodes=6, max_steps=120, progress=False).returns
        d = edited - base
        assert row["change"] == pytest.approx(d.mean(), abs=1e-9)
        two = surgery.stats.sign_flip_p(d)
        assert row["p_two_sided"] == pytest.approx(two)
        p.append(two / 2 if d.mean() > 0 else 1.0)
    m = len(p)  # Holm by hand: the i-th smallest times (m - i), running maximum, capped at 1
    order = np.argsort(p, kind="stable")
    holm = np.empty(m)
    holm[order] = np.minimum(1, np.maximum.accumulate(np.array(p)[order] * (m - np.arange(m))))
    np.testing.assert_allclose(s.rows["p_improve"].astype(float), p)
    np.testing.assert_allclose(s.rows["p_adj_improve"].astype(float), holm)


def test_files_and_resume(sweep, balancer):
    s, out = sweep
    saved = json.loads((out / "laser.json").read_text())
    assert saved["sentence"] == s.sentence and len(saved["rows"]) == len(s.rows)
    assert (out / "laser.csv").read_text().count("\n") == len(s.rows) + 1
    again = laser(balancer, weights=("K", "V"), blocks=[0], fractions=(0.01, 0.03, 0.5), out=out, **RUN)
    np.testing.assert_array_equal(again.rows["change"].astype(float), s.rows["change"].astype(float))


def test_the_cli_writes_the_table(tmp_path, capsys):
    from surgery.cli.main import main

    out = tmp_path / "laser"
    assert main(["laser", "lunarlander", "--weights", "V", "--blocks", "2", "--fractions", "0.5", "--episodes", "2",
                 "--max-steps", "10", "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "| block 2 V | 64/128 (0.5) |" in text and "too few episodes to decide" in text
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["laser.csv", "laser.json", "laser.md"]
