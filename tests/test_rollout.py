"""The lane scheduler (`run_lanes`): every job once, full batches by refilling, and what a lane run equals.

What "the same" means, and is tested here:
- unedited jobs that all start together and fit in `lanes` give bitwise the records of `evaluate`
  (the same lockstep forwards); refilled or padded, their returns agree to rounding;
- a lane whose edit's delta is exactly zero (scale by 1) gives bitwise the records of the unedited
  lane beside it in the same run (rows far apart can round differently where the matrix kernels
  split the batch into row blocks);
- a real edit: every action the engine sends equals, to 1e-5, what the model patched with
  `surgery.patch` outputs on the same history (teacher forcing, refilled and padded rows included).
  Episodes are chaotic, so records agree only as far as rounding is not amplified: measured on the
  shipped models, 8 episodes of one edit against `evaluate` under the patch: LunarLander records
  identical (actions are an argmax), Hopper returns within 3.2e-7 relative after 200 steps (asserted 1e-5).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery import patch
from surgery.behaviour.evaluation import EDIT_ENGINE, Run, evaluate, evaluate_runs
from surgery.behaviour.hf_loop import untrained_dt
from surgery.behaviour.lanes import LaneEdits
from surgery.behaviour.policy import DTPolicy
from surgery.behaviour.results_store import RESULTS_FILE, ResultsStore, stored_spec
from surgery.behaviour.rollout import Job, run_lanes
from surgery.core.patching import Edit
from tests.test_evaluate_policy import scramble

EDITS = [[Edit(1, "K", 0, op="scale", value=4.0)], [Edit(2, "OV", 0, head=0, op="zero")],
         [Edit(2, "QK", 0, head=0, side="out", op="scale", value=30.0)]]


@pytest.fixture(scope="module")
def faller():
    """An untrained Hopper-shaped DT: its hopper falls after a few dozen steps, at different times per episode."""
    model, md = untrained_dt("Hopper-v5")
    return scramble(model, seed=3), md


def _zoo(name):
    import surgery
    from surgery import zoo

    if name not in zoo.names():
        pytest.skip(f"the zoo's {name} checkpoint is not shipped")
    return surgery.load(name)


def collect(**kwargs):
    """run_lanes, returning (records by job, trajectories by job, step counts per forward, stats)."""
    records, trajectories, steps = {}, {}, []

    def on_finish(job, record):
        assert job not in records, f"{job} finished twice"
        records[job] = record

    stats = run_lanes(on_finish=on_finish, on_steps=lambda n: steps.append((n, len(records))),
                      on_trajectory=lambda job, tr: trajectories.__setitem__(job, tr), **kwargs)
    return records, trajectories, steps, stats


def replay(model, md, trajectory, target, edits=None) -> torch.Tensor:
    """The model's outputs at every step of a recorded episode, one unpadded window at a time (teacher forcing)."""
    policy = DTPolicy(model)
    mean, std = torch.tensor(md.state_mean), torch.tensor(md.state_std)
    obs = (torch.as_tensor(trajectory["observations"], dtype=torch.float32) - mean) / std
    acts = torch.as_tensor(np.asarray(trajectory["actions"]), dtype=torch.float32)
    if md.discrete:
        acts = torch.nn.functional.one_hot(acts.long(), md.act_dim).float()
    rtg = [torch.tensor(target / md.return_scale, dtype=torch.float32)]
    for r in trajectory["rewards"]:  # the engine's float32 arithmetic
        rtg.append(rtg[-1] - torch.tensor(r / md.return_scale, dtype=torch.float32))
    rtg = torch.stack(rtg)
    out, K = [], md.context_len
    for t in range(len(trajectory["rewards"])):
        lo = max(0, t + 1 - K)
        out.append(policy(obs[None, lo:t + 1], acts[None, lo:t], rtg[None, lo:t + 1, None], torch.arange(lo, t + 1))[0])
    return torch.stack(out)


def test_every_job_runs_once_and_freed_rows_are_refilled(faller):
    model, md = faller
    jobs = [(e, j) for j in range(5) for e in (-1, 0, 1, 2)]
    records, _, steps, stats = collect(model=model, metadata=md, edits=EDITS, jobs=jobs, seed=0, lanes=6,
                                       max_steps=60)
    assert set(records) == {Job(*j) for j in jobs}
    assert all(records[Job(e, j)].episode == j for e, j in jobs)
    assert stats.env_steps == sum(r.length for r in records.values()) == sum(n for n, _ in steps)
    assert stats.padded_forwards > 0 and stats.forwards == len(steps)
    # Same initial states for every edit: episode j's seed whatever the edit.
    for j in range(5):
        assert len({records[Job(e, j)].seed for e in (-1, 0, 1, 2)}) == 1
    assert len({records[Job(-1, j)].seed for j in range(5)}) == 5


def test_a_full_batch_while_jobs_wait(faller):
    """The exact invariant: at every step, rows alive = lanes, unless every job has already started."""
    model, md = faller
    jobs = [(e, j) for j in range(3) for e in (-1, 0, 1)]
    steps, finished = [], []
    run_lanes(model, EDITS[:2], jobs, seed=1, lanes=4, max_steps=50, metadata=md,
              on_finish=lambda job, rec: finished.append(job), on_steps=lambda n: steps.append((n, len(finished))))
    previous = 0
    for n, done_after in steps:
        # At this step's start, `previous` jobs had finished and n were alive: previous + n jobs had started.
        assert n == 4 or previous + n == len(jobs), (n, previous)
        previous = done_after
    assert len(finished) == len(jobs) and any(n < 4 for n, _ in steps)


def test_unedited_jobs_that_fit_are_bitwise_evaluate_and_refilled_ones_agree(faller):
    model, md = faller
    run = dict(seed=2, max_steps=60, metadata=md)
    want = evaluate(model, episodes=6, progress=False, **run).records
    records, *_ = collect(model=model, edits=None, jobs=[(-1, j) for j in range(6)], lanes=8, **run)
    assert [records[Job(-1, j)] for j in range(6)] == want
    refilled, _, _, stats = collect(model=model, edits=None, jobs=[(-1, j) for j in range(6)], lanes=2, **run)
    assert stats.padded_forwards > 0
    got = [refilled[Job(-1, j)] for j in range(6)]
    assert [r.seed for r in got] == [r.seed for r in want]
    np.testing.assert_allclose([r.episode_return for r in got], [r.episode_return for r in want], rtol=1e-5)


def test_a_lane_whose_edit_changes_nothing_is_bitwise_its_unedited_lane(faller):
    """A zero delta (scale by 1) changes no bit: neighbouring rows of gathered windows round alike."""
    model, md = faller
    edits = [[Edit(1, "K", 0, op="scale", value=1.0)], EDITS[1], [Edit(2, "QK", 0, head=0, side="out", op="scale",
                                                                        value=1.0)]]
    records, *_ = collect(model=model, metadata=md, edits=edits, jobs=[(e, j) for j in range(4) for e in (-1, 0, 1, 2)],
                          seed=0, max_steps=60)
    for j in range(4):
        assert records[Job(0, j)] == records[Job(-1, j)] == records[Job(2, j)]
        assert records[Job(1, j)] != records[Job(-1, j)]


def test_each_sent_action_is_the_patched_models_on_the_same_history(faller):
    """Teacher forcing over whole episodes, with rows refilled and padded (lanes < jobs)."""
    model, md = faller
    jobs = [(e, j) for j in range(2) for e in (-1, 0, 1, 2)]
    records, trajectories, _, stats = collect(model=model, metadata=md, edits=EDITS, jobs=jobs, seed=0, lanes=3,
                                              max_steps=40)
    assert stats.padded_forwards > 0
    worst = 0.0
    for (e, j), tr in trajectories.items():
        got = torch.as_tensor(np.asarray(tr["outputs"]))
        assert len(got) == records[Job(e, j)].length
        unedited = replay(model, md, tr, md.target_returns[0])
        if e < 0:
            want = unedited
        else:
            with patch(model, EDITS[e]):
                want = replay(model, md, tr, md.target_returns[0])
            assert (want - unedited).abs().max() > 1e-4  # the edit matters on this history (by 1e-3..5e-3)
        worst = max(worst, (got - want).abs().max().item())
    assert worst < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name,edit,steps", [("hopper", Edit(1, "K", 0), 200),
                                             ("lunarlander", Edit(2, "V", 1, op="zero"), 300)])
def test_one_edit_against_evaluate_under_patch(name, edit, steps):
    adapter = _zoo(name)
    records, *_ = collect(model=adapter, edits=[[edit]], jobs=[(0, j) for j in range(8)], seed=0, max_steps=steps)
    got = [records[Job(0, j)] for j in range(8)]
    with patch(adapter.model, [edit]):
        want = evaluate(adapter, episodes=8, seed=0, max_steps=steps, progress=False).records
    base = evaluate(adapter, episodes=8, seed=0, max_steps=steps, progress=False).records
    assert [r.seed for r in got] == [r.seed for r in want] and [r.length for r in got] == [r.length for r in want]
    if adapter.metadata.discrete:
        assert got == want
    np.testing.assert_allclose([r.episode_return for r in got], [r.episode_return for r in want], rtol=1e-5)
    assert max(abs(b.episode_return - w.episode_return) for b, w in zip(base, want)) > 1.0  # the edit matters


def test_bad_jobs_and_settings_are_refused(faller):
    model, md = faller
    run = dict(seed=0, metadata=md, on_finish=lambda job, rec: None, max_steps=5)
    with pytest.raises(ValueError, match="more than once"):
        run_lanes(model, EDITS, [(0, 1), (0, 1)], **run)
    with pytest.raises(ValueError, match=r"-1 \(unedited\) or 0..2"):
        run_lanes(model, EDITS, [(3, 0)], **run)
    with pytest.raises(ValueError, match="no edits given"):
        run_lanes(model, None, [(0, 0)], **run)
    with pytest.raises(ValueError, match="a job is"):
        run_lanes(model, EDITS, [5], **run)
    with pytest.raises(ValueError, match="lanes must be"):
        run_lanes(model, EDITS, [(0, 0)], lanes=0, **run)
    with pytest.raises(ValueError, match="another model"):
        run_lanes(model, LaneEdits(untrained_dt("Hopper-v5")[0], EDITS), [(0, 0)], **run)
    with pytest.raises(ValueError, match="idx=999"):
        run_lanes(model, [[Edit(0, "K", 999)]], [(0, 0)], **run)


def test_an_edited_store_from_the_patch_engine_is_refused_and_a_lane_store_resumes(faller, tmp_path):
    model, md = faller
    run = dict(episodes=3, seed=0, metadata=md, progress=False, max_steps=20)
    runs = [Run(out=tmp_path / "base"), Run(EDITS[0], tmp_path / "edited")]
    base, edited = evaluate_runs(model, runs, **run)
    again = evaluate_runs(model, runs, **run)  # resumes: nothing left to run
    assert again[0].records == base.records and again[1].records == edited.records
    old = tmp_path / "old"
    theirs = stored_spec(tmp_path / "edited" / RESULTS_FILE)
    assert theirs["edit_engine"] == EDIT_ENGINE
    del theirs["edit_engine"]  # what the patch-based engine stored: no edit_engine field
    ResultsStore(old / RESULTS_FILE, theirs, type(base.records[0])).close()
    with pytest.raises(ValueError, match="patch-based engine"):
        evaluate_runs(model, [Run(EDITS[0], old)], **run)
