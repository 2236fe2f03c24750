"""surgery.evaluate: lockstep episodes against the HF example's loop, determinism, seeds, failure semantics."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from surgery.behaviour.envs import HOPPER
from surgery.behaviour.evaluation import EpisodeRecord, EvalResult, episode_seed, evaluate, is_failure
from surgery.behaviour.hf_loop import hf_get_action, untrained_dt
from tests.test_evaluate_policy import scramble


@pytest.fixture(scope="module")
def hopper():
    model, md = untrained_dt("Hopper-v5")
    return scramble(model, seed=3), md


@pytest.fixture(scope="module")
def lander():
    model, md = untrained_dt("LunarLander-v3")
    return scramble(model, seed=4), md


def hf_outputs_on(trajectory, model, md, target):
    """Replay one recorded episode through the HF example's get_action, step by step, with its arithmetic."""
    mean, std = torch.tensor(md.state_mean), torch.tensor(md.state_std)
    obs = torch.as_tensor(trajectory["observations"], dtype=torch.float32)
    outputs = torch.as_tensor(trajectory["outputs"])
    rtg = torch.tensor(target / md.return_scale, dtype=torch.float32).reshape(1, 1)
    actions = torch.zeros((0, md.act_dim))
    got = []
    for t, reward in enumerate(trajectory["rewards"]):
        actions = torch.cat([actions, torch.zeros((1, md.act_dim))])
        timesteps = torch.arange(t + 1).reshape(1, -1)
        got.append(hf_get_action(model, (obs[: t + 1] - mean) / std, actions, rtg, timesteps, md.context_len))
        if md.discrete:
            actions[-1] = torch.nn.functional.one_hot(got[-1].argmax(), md.act_dim).float()
        else:
            actions[-1] = outputs[t]  # the action the engine sent, so both see the same history
        rtg = torch.cat([rtg, (rtg[0, -1] - reward / md.return_scale).reshape(1, 1)], dim=1)
    return torch.stack(got), outputs


@pytest.mark.parametrize("which", ["hopper", "lander"])
def test_engine_actions_equal_hf_forward_on_its_histories(which, request):
    model, md = request.getfixturevalue(which)
    res = evaluate(model, episodes=4, seed=0, metadata=md, progress=False, max_steps=40, trajectories=True)
    assert len({r.length for r in res.records}) > 1 or which == "lander", "episodes should end at different times"
    for record in res.records:
        tr = res.trajectories[record.episode]
        assert len(tr["rewards"]) == record.length
        want, got = hf_outputs_on(tr, model, md, res.target_return)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
        if md.discrete:
            assert torch.equal(got.argmax(-1), want.argmax(-1))
            assert np.array_equal(tr["actions"], want.argmax(-1).numpy())
        assert np.isclose(sum(tr["rewards"]), record.episode_return)


def test_deterministic_for_a_seed(hopper):
    model, md = hopper
    a = evaluate(model, episodes=5, seed=7, metadata=md, progress=False, max_steps=50)
    b = evaluate(model, episodes=5, seed=7, metadata=md, progress=False, max_steps=50)
    assert a.records == b.records
    c = evaluate(model, episodes=5, seed=8, metadata=md, progress=False, max_steps=50)
    assert [r.seed for r in c.records] != [r.seed for r in a.records]
    assert c.returns.tolist() != a.returns.tolist()


def test_episode_seeds_do_not_depend_on_the_number_of_episodes(hopper):
    model, md = hopper
    few = evaluate(model, episodes=3, seed=1, metadata=md, progress=False, max_steps=30)
    more = evaluate(model, episodes=6, seed=1, metadata=md, progress=False, max_steps=30, batch_size=4)
    assert [r.seed for r in few.records] == [r.seed for r in more.records[:3]] == [episode_seed(1, i) for i in range(3)]
    # Same initial states; the batch differs, so allow for rounding in the batched products.
    np.testing.assert_allclose(few.returns, more.returns[:3], rtol=1e-4)
    assert len(set(episode_seed(1, i) for i in range(1000))) == 1000
    assert episode_seed(0, 1) != episode_seed(1, 0)  # unlike S + i, neighbouring runs share no seeds


def test_hopper_falls_are_failures(hopper):
    model, md = hopper
    res = evaluate(model, episodes=3, seed=0, metadata=md, progress=False)
    for r in res.records:
        assert r.terminated and r.failed and r.failure_step == r.length and not r.truncated
        assert r.score == pytest.approx(HOPPER.normalized_score(r.episode_return))
    assert res.time_limit == 1000


def test_halfcheetah_runs_to_the_time_limit():
    model, md = untrained_dt("HalfCheetah-v5")
    res = evaluate(model, episodes=2, seed=0, metadata=md, progress=False, max_steps=25)
    for r in res.records:
        assert r.length == 25 and r.truncated and not r.failed and r.failure_step is None


def test_lunarlander_failure_rule():
    assert is_failure("LunarLander-v3", True, -100)
    assert not is_failure("LunarLander-v3", True, 100)  # came to rest: a success
    assert not is_failure("LunarLander-v3", False, -100)
    assert is_failure("Hopper-v5", True, 1.0) and not is_failure("Hopper-v5", False, 1.0)


def test_lander_records(lander):
    model, md = lander
    res = evaluate(model, episodes=3, seed=0, metadata=md, progress=False, max_steps=200)
    for r in res.records:
        assert r.score is None  # D4RL has no LunarLander reference
        assert r.failed == (r.terminated and r.failure_step == r.length)


def test_accepts_an_adapter_like_object(hopper):
    model, md = hopper

    @dataclasses.dataclass
    class Wrapped:
        model: torch.nn.Module
        metadata: object

    a = evaluate(Wrapped(model, md), episodes=2, seed=0, progress=False, max_steps=20)
    b = evaluate(model, episodes=2, seed=0, metadata=md, progress=False, max_steps=20)
    assert a.records == b.records


def test_clear_errors(hopper):
    model, md = hopper
    with pytest.raises(ValueError, match="metadata= is required"):
        evaluate(model, episodes=1, progress=False)
    with pytest.raises(ValueError, match="DecisionTransformerModel"):
        evaluate(torch.nn.Linear(2, 2), episodes=1, metadata=md, progress=False)
    with pytest.raises(ValueError, match="observations have shape"):
        evaluate(model, episodes=1, metadata=md, env="HalfCheetah-v5", progress=False)
    with pytest.raises(ValueError, match="episodes must be"):
        evaluate(model, episodes=0, metadata=md, progress=False)
    bad = dataclasses.replace(md, discrete=True)
    with pytest.raises(ValueError, match="action_tanh"):
        evaluate(model, episodes=1, metadata=bad, progress=False)


def test_result_helpers(hopper):
    model, md = hopper
    res = evaluate(model, episodes=4, seed=0, metadata=md, progress=False, max_steps=30)
    assert isinstance(res, EvalResult) and all(isinstance(r, EpisodeRecord) for r in res.records)
    frame = res.to_frame()
    assert list(frame["episode"]) == [0, 1, 2, 3] and frame["episode_return"].tolist() == res.returns.tolist()
    s = res.summary()
    assert s["episodes"] == 4 and s["failure_rate"].failures == int(res.failed.sum())
    assert s["return"]["mean"].low <= s["return"]["mean"].value <= s["return"]["mean"].high
    assert "Hopper-v5: 4 episodes" in str(res)


def test_bfloat16_runs_and_is_close(hopper):
    model, md = hopper
    a = evaluate(model, episodes=3, seed=0, metadata=md, progress=False, max_steps=30)
    b = evaluate(model, episodes=3, seed=0, metadata=md, progress=False, max_steps=30, dtype=torch.bfloat16)
    assert b.dtype == "torch.bfloat16" and [r.seed for r in a.records] == [r.seed for r in b.records]
