"""The rollout engine: jobs (edit, episode) played in lanes of one batched forward, a lane refilled as its episode ends.

    stats = run_lanes(hopper, [[Edit(1, "K", 0)], [Edit(2, "V", 5, op="zero")]],
                      jobs=[(e, j) for j in range(8) for e in (-1, 0, 1)], seed=0,
                      on_finish=lambda job, record: print(job, record.episode_return))

A job is `Job(edit, episode)`: an index into `edits` (-1: the model as it is) and an episode index,
whose environment is reset with `episode_seed(seed, episode)`, so the unedited model and every edit
face the same initial states. At most `lanes` jobs run at once, one batch row each. Each step
runs one `DTPolicy` forward over the rows alive, every row with its own edit (the low-rank lane
deltas of surgery/behaviour/lanes.py: no model copies, no patching), then steps each row's
environment in this process. A row whose episode ends takes the next job at once, so the batch
stays full while jobs remain.

Rows then sit at different timesteps. The window length is the oldest row's (up to the
context); a younger row is left-padded with zeros and masked, as in the Hugging Face example, with
per-row timesteps. While every row is at the same timestep (the jobs started together and fit in
`lanes`) the forward is the lockstep engine's call (unpadded windows, shared timesteps); without
edits it is exactly that call, so unedited jobs give bitwise the records `evaluate` has always
produced. With edits the windows are gathered (contiguous) rather than passed as strided views of
the history buffers: torch's linear rounds a strided batch differently for every row, a contiguous
one only at the edges of its kernels' row blocks, so rows of one run round alike far more often (a
lane whose edit changes nothing gives bitwise its unedited lane's episodes when the two sit side
by side, as episode-major jobs put them; tests/test_rollout.py). Padding changes only the rounding
(tests/test_lanes.py measures it), like any other batch composition (docs/evaluation.md, "Determinism").
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch

from surgery.behaviour.envs import env_info
from surgery.behaviour.episodes import EpisodeRecord, check_memory, episode_seed, is_failure
from surgery.behaviour.lanes import LaneEdits
from surgery.behaviour.metadata import DTMetadata
from surgery.behaviour.policy import DTPolicy
from surgery.errors import SurgeryError, load_first

__all__ = ["Job", "RolloutStats", "Setting", "prepare", "play", "run_lanes", "resolve_model"]


class Job(NamedTuple):
    """One episode to play: under edit `edit` (an index into the run's edits; -1 = unedited), episode `episode`."""

    edit: int
    episode: int


@dataclass(frozen=True)
class RolloutStats:
    """What a run did."""

    env_steps: int
    """Environment steps taken, over all jobs."""
    forwards: int
    """Batched forwards (one per step of the batch)."""
    padded_forwards: int
    """Forwards in which some row was left-padded (rows at different timesteps, one younger than the context)."""


@dataclass(frozen=True)
class Setting:
    """What every job of a run shares."""

    module: torch.nn.Module
    """The DecisionTransformerModel."""
    metadata: DTMetadata
    make_env: Callable
    """Returns a fresh environment."""
    env_id: str
    env_identity: dict
    """The environment's id and make kwargs (or factory name), for results fingerprints."""
    target_return: float
    """Return-to-go every episode starts from, in the environment's units."""
    time_limit: int
    """Episodes are cut after this many steps."""


def resolve_model(model, metadata: DTMetadata | None = None) -> tuple[torch.nn.Module, DTMetadata]:
    """(HF DecisionTransformerModel, DTMetadata) from a model (with metadata) or an adapter (.model/.metadata)."""
    if isinstance(model, (str, os.PathLike)):
        raise load_first("evaluate", model)
    module = model if isinstance(model, torch.nn.Module) else getattr(model, "model", None)
    if metadata is None and not isinstance(model, torch.nn.Module):
        metadata = getattr(model, "metadata", None)
    needed = ("embed_timestep", "embed_state", "embed_action", "embed_return", "encoder", "predict_action")
    if not isinstance(module, torch.nn.Module) or not all(hasattr(module, a) for a in needed):
        raise SurgeryError(f"expected a transformers DecisionTransformerModel, or an adapter with .model holding one; "
                           f"got {type(model).__name__}")
    if metadata is None:
        raise SurgeryError("metadata= is required: a DTMetadata with env_id, state_dim, act_dim, state_mean/std, "
                           "return_scale and context_len (surgery.behaviour.metadata.DTMetadata)")
    config = module.config
    if (metadata.state_dim, metadata.act_dim) != (config.state_dim, config.act_dim):
        raise SurgeryError(f"metadata says state_dim={metadata.state_dim}, act_dim={metadata.act_dim} but the model "
                           f"has state_dim={config.state_dim}, act_dim={config.act_dim}")
    if metadata.discrete == bool(config.action_tanh):
        raise SurgeryError(f"metadata.discrete={metadata.discrete} but the model's action_tanh={config.action_tanh}: "
                           "discrete models output logits (action_tanh=False), continuous ones tanh'd actions")
    return module, metadata


def _env_factory(env, metadata: DTMetadata, env_kwargs: dict | None):
    """(make_env, env_id, time limit of the env, identity for the fingerprint)."""
    import gymnasium as gym

    if env is None or isinstance(env, str):
        env_id = env or metadata.env_id
        kwargs = dict(env_kwargs or {})
        info = env_info(env_id)
        make_kwargs = {**(info.make_kwargs if info else {}), **kwargs}
        try:
            probe = gym.make(env_id, **make_kwargs)
        except gym.error.Error as e:
            raise SurgeryError(f"cannot make environment {env_id!r}: {e}") from None
        identity = {"env_id": env_id, "env_kwargs": make_kwargs}

        def make_env():
            return gym.make(env_id, **make_kwargs)
    elif callable(env):
        if env_kwargs:
            raise SurgeryError("env_kwargs applies to an environment id, not to an environment factory")
        make_env = env
        probe = env()
        env_id = probe.spec.id if probe.spec else type(probe.unwrapped).__name__
        identity = {"env_id": env_id, "env_kwargs": dict(probe.spec.kwargs) if probe.spec else None,
                    "env_factory": getattr(env, "__qualname__", repr(env))}
    else:
        raise SurgeryError(f"env must be an environment id, a callable returning an environment, or None; got {env!r}")
    limit = probe.spec.max_episode_steps if probe.spec else None
    space = probe.observation_space.shape
    probe.close()
    if space != (metadata.state_dim,):
        raise SurgeryError(f"{env_id} observations have shape {space}, the model expects ({metadata.state_dim},)")
    return make_env, env_id, limit, identity


def prepare(model, metadata: DTMetadata | None = None, env=None, env_kwargs: dict | None = None,
            target_return: float | None = None, max_steps: int | None = None) -> Setting:
    """Check the model, metadata and environment, and fix the target return and time limit."""
    module, md = resolve_model(model, metadata)
    make_env, env_id, env_limit, identity = _env_factory(env, md, env_kwargs)
    if target_return is None:
        if not md.target_returns:
            raise SurgeryError("no target_return given and the metadata lists no target_returns")
        target_return = md.target_returns[0]
    if isinstance(target_return, bool) or not isinstance(target_return, numbers.Real) \
            or not math.isfinite(target_return):
        raise SurgeryError(f"target_return must be a finite number (a return in the environment's units, e.g. "
                           f"{md.target_returns[0] if md.target_returns else 3600}), got {target_return!r}")
    if max_steps is not None and max_steps < 1:
        raise SurgeryError(f"max_steps must be at least 1, got {max_steps}")
    time_limit = max_steps or env_limit or md.max_ep_len
    return Setting(module, md, make_env, env_id, identity, float(target_return), int(time_limit))


def check_jobs(jobs, n_edits: int) -> list[Job]:
    """Jobs as Job tuples; each (edit, episode) once, edit in -1..n_edits-1, episode >= 0."""
    out = []
    for j in jobs:
        try:
            edit, episode = j
        except (TypeError, ValueError):
            raise SurgeryError(f"a job is (edit index or -1, episode index), got {j!r}") from None
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (edit, episode)):
            raise SurgeryError(f"a job's edit and episode must be integers, got {j!r}")
        if not -1 <= edit < n_edits or episode < 0:
            edits = f"-1 (unedited) or 0..{n_edits - 1} ({n_edits} edits)" if n_edits else "-1 (no edits given)"
            raise SurgeryError(f"job {tuple(j)!r}: the edit must be {edits}, the episode >= 0")
        out.append(Job(int(edit), int(episode)))
    if len(set(out)) != len(out):
        raise SurgeryError("the same (edit, episode) job is listed more than once")
    return out


def play(setting: Setting, policy: DTPolicy, jobs: Sequence[Job], *, seed: int, lanes: int = 256,
         on_finish: Callable[[Job, EpisodeRecord], None], on_steps: Callable[[int], None] | None = None,
         on_trajectory: Callable[[Job, dict], None] | None = None) -> RolloutStats:
    """Play checked jobs with a built policy (run_lanes does the checking and building)."""
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise SurgeryError(f"lanes must be a positive integer (rows in one batched forward), got {lanes!r}")
    if not jobs:
        return RolloutStats(0, 0, 0)
    envs = [setting.make_env() for _ in range(min(lanes, len(jobs)))]
    try:
        engine = _Engine(policy, setting.metadata, setting.env_id, setting.target_return, setting.time_limit,
                         keep=on_trajectory is not None)
        return engine.run(envs, list(jobs), seed, on_finish, on_steps, on_trajectory)
    finally:
        for e in envs:
            e.close()


def run_lanes(model, edits, jobs, *, seed: int, on_finish: Callable[[Job, EpisodeRecord], None],
              metadata: DTMetadata | None = None, target_return: float | None = None, env=None,
              env_kwargs: dict | None = None, dtype: torch.dtype = torch.float32, lanes: int = 256,
              max_steps: int | None = None, on_steps: Callable[[int], None] | None = None,
              on_trajectory: Callable[[Job, dict], None] | None = None) -> RolloutStats:
    """Play every job once, at most `lanes` at a time, each under its own edit; report each episode as it ends.

    model: a DecisionTransformerModel (with metadata=) or an adapter with .model/.metadata (`surgery.load(NAME)`).
    edits: a list with one entry per edit: an Edit or dict, or a list of them applied together (what
        one `Patch` applies); or a prebuilt `LaneEdits`; or None / [] when every job is unedited.
        Deltas are computed from the weights as they are now.
    jobs: (edit, episode) pairs, each once; edit indexes `edits`, -1 = unedited. Jobs start in
        this order as rows free up.
    seed: the run seed: episode j is reset with `episode_seed(seed, j)` whatever its edit.
    on_finish(job, record): called once per job as its episode ends, with its `EpisodeRecord`.
    on_steps(n): called after every batched step with the environment steps it took (rows alive).
    on_trajectory(job, trajectory): if given, also called with the episode's observations, actions
        sent, rewards and model outputs (numpy arrays).
    target_return, env, env_kwargs, max_steps: as for `evaluate`. dtype: torch.float32 or torch.bfloat16.
    lanes: most rows in one forward.
    Returns the run's `RolloutStats`.
    """
    setting = prepare(model, metadata, env, env_kwargs, target_return, max_steps)
    lane_edits = _lane_edits(setting.module, edits)
    checked = check_jobs(jobs, 0 if lane_edits is None else len(lane_edits))
    check_memory(len(checked), "run_lanes")
    policy = DTPolicy(setting.module, dtype, edits=lane_edits)
    return play(setting, policy, checked, seed=seed, lanes=lanes, on_finish=on_finish, on_steps=on_steps,
                on_trajectory=on_trajectory)


def _lane_edits(module: torch.nn.Module, edits) -> LaneEdits | None:
    if edits is None:
        return None
    if isinstance(edits, LaneEdits):
        if edits.model is not module:
            raise SurgeryError("these LaneEdits were built for another model object")
        return edits
    return LaneEdits(module, edits) if len(edits) else None


class _Engine:
    """Runs jobs in lanes: one batched forward per step over the rows alive, a row refilled as its episode ends."""

    def __init__(self, policy: DTPolicy, md: DTMetadata, env_id: str, target: float, time_limit: int, keep: bool):
        self.policy, self.md, self.env_id = policy, md, env_id
        self.target, self.time_limit, self.keep = target, time_limit, keep
        self.mean = torch.tensor(md.state_mean or [0.0] * md.state_dim, dtype=torch.float32)
        self.std = torch.tensor(md.state_std or [1.0] * md.state_dim, dtype=torch.float32)
        self.max_timestep = policy.model.embed_timestep.num_embeddings - 1
        self.info = env_info(env_id)

    def _normalise(self, obs: np.ndarray) -> torch.Tensor:
        # The HF example's arithmetic: float32 state, minus float32 mean, over float32 std.
        return (torch.as_tensor(obs, dtype=torch.float32) - self.mean) / self.std

    def run(self, envs, jobs: list[Job], seed: int, on_finish, on_steps=None, on_trajectory=None) -> RolloutStats:
        md, R, T = self.md, len(envs), self.time_limit
        states = torch.zeros(R, T + 1, md.state_dim)  # per row: the history of its current job
        actions = torch.zeros(R, T, md.act_dim)
        rtg = torch.zeros(R, T + 1, 1)
        job: list[Job | None] = list(jobs[:R])
        t = [0] * R  # steps taken by each row's job
        seeds = [episode_seed(seed, j.episode) for j in job]
        returns = np.zeros(R)
        traj: list[dict | None] = [None] * R
        obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
        states[:, 0] = self._normalise(obs)
        rtg[:, 0, 0] = self.target / md.return_scale
        if self.keep:
            traj = [self._new_trajectory(o) for o in obs]
        pending = R  # index of the next job to start
        live = list(range(R))
        steps = forwards = padded = 0
        while live:
            s, a, r, timesteps, mask, rows = self._windows(states, actions, rtg, live, t, R)
            lane = None
            if self.policy.edits is not None:
                lane = torch.tensor([job[i].edit for i in live])
            out = self.policy(s, a, r, timesteps, mask, lanes=lane).cpu()
            forwards, padded = forwards + 1, padded + (mask is not None)
            now = [t[i] for i in live]
            at = now[0] if len(set(now)) == 1 else torch.tensor(now)  # each row's step
            if md.discrete:
                choice = out.argmax(dim=-1)
                actions[rows, at] = torch.nn.functional.one_hot(choice, md.act_dim).float()
                env_actions = choice.tolist()
            else:
                actions[rows, at] = out
                env_actions = out.numpy()
            still, next_obs, rewards, freed = [], [], [], []
            for k, i in enumerate(live):
                o, reward, terminated, truncated, _ = envs[i].step(env_actions[k])
                returns[i] += reward
                if self.keep:
                    tr = traj[i]
                    tr["observations"].append(o), tr["actions"].append(env_actions[k])
                    tr["rewards"].append(reward), tr["outputs"].append(out[k].numpy())
                if terminated or truncated or t[i] + 1 == T:
                    on_finish(job[i], self._record(job[i].episode, seeds[i], returns[i], t[i] + 1, terminated,
                                                   reward))
                    if on_trajectory is not None:
                        on_trajectory(job[i], {k_: np.array(v) for k_, v in traj[i].items()})
                    freed.append(i)
                else:
                    still.append(i), next_obs.append(o), rewards.append(reward)
            steps += len(live)
            if on_steps is not None:
                on_steps(len(live))
            if still:
                idx = torch.tensor(still)
                now = torch.tensor([t[i] for i in still])
                states[idx, now + 1] = self._normalise(np.stack(next_obs))
                # float32 arithmetic as in the HF example: rtg - float32(reward / scale).
                spent = torch.as_tensor(np.asarray(rewards) / md.return_scale, dtype=torch.float32)
                rtg[idx, now + 1, 0] = rtg[idx, now, 0] - spent
                for i in still:
                    t[i] += 1
            for i in freed:  # refill: the next job starts in the freed row
                if pending < len(jobs):
                    job[i], pending = jobs[pending], pending + 1
                    seeds[i], t[i], returns[i] = episode_seed(seed, job[i].episode), 0, 0.0
                    o = envs[i].reset(seed=seeds[i])[0]
                    states[i, 0] = self._normalise(o[None])[0]
                    rtg[i, 0, 0] = self.target / md.return_scale
                    if self.keep:
                        traj[i] = self._new_trajectory(o)
                else:
                    job[i] = None
            live = [i for i in range(R) if job[i] is not None]
        return RolloutStats(steps, forwards, padded)

    def _windows(self, states, actions, rtg, live: list[int], t: list[int], R: int):
        """The batch's windows: (states, actions, returns-to-go, timesteps, attention mask or None, rows)."""
        K = self.md.context_len
        ts = [t[i] for i in live]
        if all(x == ts[0] for x in ts):  # lockstep: exactly the historical call, unpadded, shared timesteps
            now = ts[0]
            lo = max(0, now + 1 - K)
            # Every row alive: the windows are strided views of the buffers, as the lockstep engine always
            # passed them. torch's linear rounds a strided batch differently for every row, so a run with
            # edits gathers instead (contiguous), where neighbouring rows round alike: a lane whose edit
            # changes nothing then gives bitwise the episode of the unedited lane beside it.
            rows = slice(None) if len(live) == R and self.policy.edits is None else torch.tensor(live)
            timesteps = torch.arange(lo, now + 1).clamp_(max=self.max_timestep)
            return states[rows, lo:now + 1], actions[rows, lo:now], rtg[rows, lo:now + 1], timesteps, None, rows
        L = min(max(ts) + 1, K)
        rows = torch.tensor(live)
        pos = torch.tensor(ts)[:, None] - (L - 1) + torch.arange(L)  # [n, L]: each row's last L positions
        real = pos >= 0
        pos = pos.clamp_(min=0)
        idx = rows[:, None]
        s, a, r = states[idx, pos], actions[idx, pos[:, :-1]], rtg[idx, pos]  # [n, L, .], [n, L-1, .], [n, L, 1]
        timesteps = pos.clamp(max=self.max_timestep)
        if bool(real.all()):
            return s, a, r, timesteps, None, rows
        pad = ~real  # left padding as the HF example: zero inputs, timestep 0, masked out
        s[pad], a[pad[:, :-1]], r[pad] = 0, 0, 0
        return s, a, r, timesteps.masked_fill_(pad, 0), real.long(), rows

    def _new_trajectory(self, first_obs) -> dict:
        return {"observations": [first_obs], "actions": [], "rewards": [], "outputs": []}

    def _record(self, episode, seed, ret, length, terminated, last_reward) -> EpisodeRecord:
        failed = is_failure(self.env_id, terminated, last_reward)
        return EpisodeRecord(
            episode=episode, seed=seed, episode_return=float(ret),
            score=self.info.normalized_score(float(ret)) if self.info else None,
            length=length, failed=failed, failure_step=length if failed else None,
            terminated=bool(terminated), truncated=not terminated,
        )
