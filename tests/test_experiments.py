"""`edit_eval`: one edit against the baseline on the same seeds, its statistics, report files and resume."""
from __future__ import annotations

import json

import pytest

from surgery.experiments.edit_eval import edit_eval
from surgery.loading import load
from tests.experiments_models import cartpole_dt

RUN = dict(episodes=12, seed=0, max_steps=100, progress=False)


@pytest.fixture()
def balancer():
    model, md = cartpole_dt()
    return load(model, metadata=md)


def test_a_destroying_patch_is_significant_and_a_no_op_is_not(balancer, tmp_path):
    destroy = [dict(block=b, weight="K", op="keep_top", value=0) for b in range(2)]  # every K triple
    bad = edit_eval(balancer, destroy, out=tmp_path / "destroy", **RUN)
    d = bad.comparison.difference
    assert bad.baseline.returns.min() == 100 and bad.edited.failed.all()
    assert d.p_wilcoxon < 0.01 and d.mean_difference.high < 0 and bad.comparison.failures.p_mcnemar < 0.01
    assert "lowered" in bad.text() and "increased" in bad.text()
    same = edit_eval(balancer, dict(block=0, weight="K", idx=0, op="scale", value=1.0), out=tmp_path / "noop", **RUN)
    assert same.edited.records == same.baseline.records
    assert same.comparison.difference.p_wilcoxon == 1.0 and same.comparison.failures.p_mcnemar == 1.0
    assert "no significant change" in same.text()


def test_the_report_is_written_and_a_rerun_resumes_without_running_again(balancer, tmp_path, monkeypatch):
    edit = dict(block=0, weight="V", idx=0)  # the study's constant edit of the top write-side vector
    first = edit_eval(balancer, edit, out=tmp_path, **RUN)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["edits"][0]["value"] == pytest.approx(1 / 64) and report["edits"][0]["side"] == "out"
    assert report["comparison"]["pairs"] == 12 and report["model"]["env_id"] == "CartPole-v1"
    assert report["median_steps_to_failure"]["baseline"] is None  # never failed: infinite, stored as null
    md = (tmp_path / "report.md").read_text()
    assert "block 0 V #0 (write side): constant" in md and "![returns](returns.png)" in md
    for name in ("returns.png", "survival.png", "baseline/episodes.sqlite", "edited/episodes.sqlite"):
        assert (tmp_path / name).stat().st_size > 0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files behind

    from surgery.behaviour.rollout import _Engine

    def no_more_episodes(*args, **kwargs):
        raise AssertionError("a finished experiment ran episodes again")

    monkeypatch.setattr(_Engine, "run", no_more_episodes)
    again = edit_eval(balancer, edit, out=tmp_path, **RUN)
    assert again.baseline.records == first.baseline.records and again.edited.records == first.edited.records


def test_bad_edits_are_refused_before_anything_runs(balancer, tmp_path):
    with pytest.raises(ValueError, match="idx=999 is out of range"):
        edit_eval(balancer, dict(block=0, weight="K", idx=999), out=tmp_path, **RUN)
    with pytest.raises(ValueError, match="block"):
        edit_eval(balancer, dict(block=7, weight="K"), out=tmp_path, **RUN)
    assert not (tmp_path / "baseline").exists()


@pytest.mark.slow
def test_on_the_zoo_hopper_destroying_k_is_detected_and_a_no_op_is_not(tmp_path):
    from surgery import zoo

    if "hopper" not in zoo.names():
        pytest.skip("the zoo's hopper checkpoint is not shipped yet")
    hopper = load("hopper")
    run = dict(episodes=30, seed=0, progress=False)
    destroy = [dict(block=b, weight="K", op="keep_top", value=0) for b in range(hopper.n_blocks)]
    bad = edit_eval(hopper, destroy, out=tmp_path / "destroy", **run)
    same = edit_eval(hopper, dict(block=1, weight="K", idx=0, op="scale", value=1.0), out=tmp_path / "noop", **run)
    assert bad.comparison.difference.p_wilcoxon < 0.01 and bad.comparison.difference.mean_difference.high < 0
    assert same.comparison.difference.p_wilcoxon > 0.05 and same.edited.records == same.baseline.records


def test_the_verdict_tests_the_mean_and_takes_its_direction_from_it():
    """20 episodes 1 lower, 2 episodes 100 higher: the mean went up (not significantly); Wilcoxon alone says 'lower'."""
    import numpy as np

    from surgery import stats
    from surgery.experiments.edit_eval import _verdict

    base = np.full(22, 1000.0)
    d = stats.paired_comparison(base, base + np.array([-1.0] * 20 + [100.0] * 2))
    none = stats.paired_failures(np.zeros(22, bool), np.zeros(22, bool))
    assert d.p_wilcoxon < 0.01 and d.p_permutation > 0.3  # the two tests disagree here
    assert _verdict(d, none, 0.05).startswith("no significant change")
    up = stats.paired_comparison(base, base + np.linspace(5, 15, 22))
    assert _verdict(up, none, 0.05).startswith("return raised")
