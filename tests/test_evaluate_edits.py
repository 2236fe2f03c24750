"""Evaluating the same model object with and without a `patch`, on the same seeds, and the statistics of it."""
from __future__ import annotations

import pytest

from surgery import patch, stats
from surgery.behaviour.evaluation import evaluate, evaluate_pair
from surgery.behaviour.hf_loop import untrained_dt
from tests.test_evaluate_policy import scramble

DESTROY_K = [dict(block=b, weight="K", op="keep_top", value=0) for b in range(3)]  # zero every K triple


def test_patch_is_seen_and_restoring_gives_back_the_baseline_bitwise():
    model, md = untrained_dt("Hopper-v5")
    scramble(model, seed=5)
    run = dict(episodes=6, seed=0, metadata=md, progress=False, max_steps=40)
    baseline = evaluate(model, **run)
    with patch(model, DESTROY_K):
        edited = evaluate(model, **run)
    after = evaluate(model, **run)
    assert after.records == baseline.records
    assert [r.seed for r in edited.records] == [r.seed for r in baseline.records]
    assert edited.returns.tolist() != baseline.returns.tolist()


def test_evaluate_pair_is_the_one_liner(tmp_path):
    model, md = untrained_dt("Hopper-v5")
    scramble(model, seed=5)
    run = dict(episodes=4, seed=0, metadata=md, progress=False, max_steps=30)
    base, edited = evaluate_pair(model, patch(model, DESTROY_K), out=tmp_path, **run)
    assert base.records == evaluate(model, **run).records
    with patch(model, DESTROY_K):
        assert edited.records == evaluate(model, **run).records
    assert (tmp_path / "baseline" / "episodes.sqlite").is_file() and (tmp_path / "edited" / "episodes.sqlite").is_file()
    again = evaluate_pair(model, patch(model, DESTROY_K), out=tmp_path, **run)  # resumes: nothing to run
    assert again[0].records == base.records and again[1].records == edited.records


def test_a_no_op_patch_is_not_significant():
    model, md = untrained_dt("Hopper-v5")
    scramble(model, seed=6)
    run = dict(episodes=12, seed=0, metadata=md, progress=False, max_steps=40)
    baseline = evaluate(model, **run)
    with patch(model, block=1, weight="K", idx=0, op="scale", value=1.0):
        edited = evaluate(model, **run)
    result = stats.compare(baseline, edited)
    assert result.pairs == 12
    assert result.difference.p_wilcoxon > 0.05 and result.failures.p_mcnemar > 0.05


def _zoo_hopper():
    from surgery import zoo

    if "hopper" not in zoo.names():
        pytest.skip("the zoo's hopper checkpoint is not shipped yet")
    from surgery.loading import load

    return load("hopper")


@pytest.mark.slow
def test_destroying_k_is_detected_on_the_trained_hopper():
    adapter = _zoo_hopper()
    run = dict(episodes=30, seed=0, progress=False)
    baseline = evaluate(adapter, **run)
    with patch(adapter.model, DESTROY_K):
        destroyed = evaluate(adapter, **run)
    with patch(adapter.model, block=1, weight="K", idx=0, op="scale", value=1.0):
        no_op = evaluate(adapter, **run)
    bad = stats.compare(baseline, destroyed)
    same = stats.compare(baseline, no_op)
    p = stats.adjust_pvalues([bad.difference.p_wilcoxon, same.difference.p_wilcoxon], "holm")
    assert p[0] < 0.01 and bad.difference.mean_difference.value < 0
    assert p[1] > 0.05
