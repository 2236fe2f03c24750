"""Behaviour evaluation: N episodes of a decision transformer in lockstep, one batched forward per step.

    result = evaluate(model, episodes=200, seed=0, metadata=md)
    with patch(model, block=1, weight="K", idx=0):
        edited = evaluate(model, episodes=200, seed=0, metadata=md)
    surgery.stats.compare(result, edited)

or in one line: `base, edited = evaluate_pair(model, patch(model, block=1, weight="K", idx=0), ...)`.

Episode i of a run with seed S is reset with `episode_seed(S, i)`, whatever N is, so a baseline and
an edited run face the same initial states. See docs/evaluation.md for the semantics.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from surgery.behaviour.envs import env_info
from surgery.behaviour.metadata import DTMetadata
from surgery.behaviour.policy import DTPolicy
from surgery.behaviour.results_store import RESULTS_FILE, ResultsStore
from surgery.errors import SurgeryError, load_first

__all__ = ["evaluate", "evaluate_pair", "EpisodeRecord", "EvalResult", "episode_seed", "is_failure"]

SEED_SCHEME = "numpy.random.SeedSequence(seed, spawn_key=(episode,)).generate_state(1, uint32)[0]"
ENGINE_VERSION = 1  # bump when a change alters what an episode returns, so stored results are not mixed


@dataclass(frozen=True)
class EpisodeRecord:
    """The outcome of one episode."""

    episode: int
    """Index in the run; with the run's seed it fixes the episode's environment seed."""
    seed: int
    """The seed passed to env.reset."""
    episode_return: float
    """Sum of rewards."""
    score: float | None
    """D4RL-normalised return (100 = expert, 0 = random), None where D4RL has no reference."""
    length: int
    """Environment steps taken."""
    failed: bool
    """Ended in failure (see is_failure): the hopper fell, the lander crashed."""
    failure_step: int | None
    """The step (1-based) at which it failed, None if it did not."""
    terminated: bool
    """The environment ended the episode (a failure, or e.g. the lander coming to rest)."""
    truncated: bool
    """Ran to the time limit."""


def episode_seed(seed: int, episode: int) -> int:
    """The env.reset seed of episode `episode` in a run seeded `seed` (independent of the run's length)."""
    if seed < 0 or episode < 0:
        raise SurgeryError(f"seed and episode must be non-negative, got seed={seed}, episode={episode}")
    return int(np.random.SeedSequence(seed, spawn_key=(episode,)).generate_state(1, np.uint32)[0])


def is_failure(env_id: str, terminated: bool, reward: float) -> bool:
    """Whether a finished step is a failure.

    LunarLander terminates both on a crash or flying off screen (final reward -100) and on coming
    to rest (+100): only the former is a failure. Elsewhere (Hopper falling, any other env) every
    termination is a failure; HalfCheetah never terminates. A time-limit truncation never is.
    """
    if env_id.split("-")[0] == "LunarLander":
        return bool(terminated) and reward == -100
    return bool(terminated)


@dataclass
class EvalResult:
    """Per-episode records of an evaluation, with helpers for tables and summaries."""

    records: list[EpisodeRecord]
    env_id: str
    target_return: float
    seed: int
    dtype: str
    time_limit: int
    trajectories: dict[int, dict] | None = field(default=None, repr=False)
    """Per episode (when asked for): observations, actions sent, rewards, model outputs."""

    def _column(self, name: str) -> np.ndarray:
        return np.array([getattr(r, name) for r in self.records])

    @property
    def returns(self) -> np.ndarray:
        return self._column("episode_return").astype(float)

    @property
    def lengths(self) -> np.ndarray:
        return self._column("length").astype(int)

    @property
    def failed(self) -> np.ndarray:
        return self._column("failed").astype(bool)

    @property
    def scores(self) -> np.ndarray | None:
        s = self._column("score")
        return None if any(v is None for v in s) else s.astype(float)

    def survival(self, confidence: float = 0.95):
        """Kaplan-Meier curve of the step of failure (surgery.stats.survival); non-failures are censored."""
        from surgery import stats

        return stats.survival(self.lengths, self.failed, confidence)

    def to_frame(self):
        """The records as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.records])

    def summary(self, confidence: float = 0.95) -> dict:
        """Return (and score) with bootstrap CIs, failure rate with a Wilson interval, survival median."""
        from surgery import stats

        out = {
            "env_id": self.env_id, "episodes": len(self.records), "target_return": self.target_return,
            "return": stats.summarize(self.returns, confidence),
            "length": stats.summarize(self.lengths, confidence),
            "failure_rate": stats.failure_rate(self.failed, confidence),
            "median_steps_to_failure": self.survival(confidence).median,
        }
        if self.scores is not None:
            out["score"] = stats.summarize(self.scores, confidence)
        return out

    def __str__(self) -> str:
        s = self.summary()
        r, f = s["return"]["mean"], s["failure_rate"]
        rate = f"{100 * f.rate.value:.0f}% [{100 * f.rate.low:.0f}, {100 * f.rate.high:.0f}]"
        text = (f"{self.env_id}: {s['episodes']} episodes, return {r.value:.1f} [{r.low:.1f}, {r.high:.1f}], "
                f"failed {f.failures}/{f.episodes} ({rate})")
        if "score" in s:
            sc = s["score"]["mean"]
            text += f", score {sc.value:.1f} [{sc.low:.1f}, {sc.high:.1f}]"
        return text


def _unwrap(model, metadata: DTMetadata | None):
    """(HF DecisionTransformerModel, DTMetadata) from a model or an adapter (.model/.metadata)."""
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
    """(make_env, env_id, time_limit_of_env, identity for the fingerprint)."""
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


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, dtypes, shapes, bytes): edits change it."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _experiment_spec(module, md, identity, target, seed, dtype, time_limit, tag) -> dict:
    config = module.config
    return {
        "engine_version": ENGINE_VERSION,
        "weights_sha256": weights_sha256(module),
        "model": {k: getattr(config, k, None) for k in (
            "activation_function", "layer_norm_epsilon", "action_tanh", "n_head",
            "scale_attn_weights", "scale_attn_by_inverse_layer_idx")},
        "metadata": {k: getattr(md, k) for k in (
            "state_mean", "state_std", "return_scale", "context_len", "max_ep_len", "discrete")},
        **identity,
        "target_return": float(target),
        "seed": int(seed),
        "seed_scheme": SEED_SCHEME,
        "dtype": str(dtype),
        "time_limit": int(time_limit),
        "tag": tag,
    }


class _Lockstep:
    """Runs a wave of episodes together: one batched forward per step over the episodes still alive."""

    def __init__(self, policy: DTPolicy, md: DTMetadata, env_id: str, target: float, time_limit: int,
                 keep_trajectories: bool):
        self.policy, self.md, self.env_id = policy, md, env_id
        self.target, self.time_limit, self.keep = target, time_limit, keep_trajectories
        self.mean = torch.tensor(md.state_mean or [0.0] * md.state_dim, dtype=torch.float32)
        self.std = torch.tensor(md.state_std or [1.0] * md.state_dim, dtype=torch.float32)
        self.max_timestep = policy.model.embed_timestep.num_embeddings - 1
        self.info = env_info(env_id)

    def _normalise(self, obs: np.ndarray) -> torch.Tensor:
        # The HF example's arithmetic: float32 state, minus float32 mean, over float32 std.
        return (torch.as_tensor(obs, dtype=torch.float32) - self.mean) / self.std

    def run(self, envs, episodes: list[int], seeds: list[int], on_finish, on_step=None) -> None:
        md, B, T, K = self.md, len(episodes), self.time_limit, self.md.context_len
        states = torch.zeros(B, T + 1, md.state_dim)
        actions = torch.zeros(B, T, md.act_dim)
        rtg = torch.zeros(B, T + 1, 1)
        obs = np.stack([env.reset(seed=s)[0] for env, s in zip(envs, seeds)])
        states[:, 0] = self._normalise(obs)
        rtg[:, 0, 0] = self.target / md.return_scale
        returns = np.zeros(B)
        traj = [{"observations": [o], "actions": [], "rewards": [], "outputs": []} for o in obs] if self.keep else None
        live = list(range(B))
        for t in range(T):
            lo = max(0, t + 1 - K)
            rows = slice(None) if len(live) == B else torch.tensor(live)
            timesteps = torch.arange(lo, t + 1).clamp_(max=self.max_timestep)
            out = self.policy(states[rows, lo:t + 1], actions[rows, lo:t], rtg[rows, lo:t + 1], timesteps).cpu()
            if md.discrete:
                choice = out.argmax(dim=-1)
                actions[rows, t] = torch.nn.functional.one_hot(choice, md.act_dim).float()
                env_actions = choice.tolist()
            else:
                actions[rows, t] = out
                env_actions = out.numpy()
            still, next_obs, rewards = [], [], []
            for j, i in enumerate(live):
                o, r, terminated, truncated, _ = envs[i].step(env_actions[j])
                returns[i] += r
                if traj is not None:
                    tr = traj[i]
                    tr["observations"].append(o), tr["actions"].append(env_actions[j])
                    tr["rewards"].append(r), tr["outputs"].append(out[j].numpy())
                if terminated or truncated or t + 1 == T:
                    on_finish(self._record(episodes[i], seeds[i], returns[i], t + 1, terminated, r),
                              None if traj is None else {k: np.array(v) for k, v in traj[i].items()})
                else:
                    still.append(i), next_obs.append(o), rewards.append(r)
            if on_step is not None:
                on_step(t, len(live))
            if not still:
                return
            idx = torch.tensor(still)
            states[idx, t + 1] = self._normalise(np.stack(next_obs))
            # float32 arithmetic as in the HF example: rtg - float32(reward / scale).
            spent = torch.as_tensor(np.asarray(rewards) / md.return_scale, dtype=torch.float32)
            rtg[idx, t + 1, 0] = rtg[idx, t, 0] - spent
            live = still

    def _record(self, episode, seed, ret, length, terminated, last_reward) -> EpisodeRecord:
        failed = is_failure(self.env_id, terminated, last_reward)
        return EpisodeRecord(
            episode=episode, seed=seed, episode_return=float(ret),
            score=self.info.normalized_score(float(ret)) if self.info else None,
            length=length, failed=failed, failure_step=length if failed else None,
            terminated=bool(terminated), truncated=not terminated,
        )


def evaluate(model, episodes: int = 100, seed: int = 0, target_return: float | None = None, env=None,
             metadata: DTMetadata | None = None, dtype: torch.dtype = torch.float32, progress: bool = True, *,
             max_steps: int | None = None, batch_size: int = 256, out: str | Path | None = None,
             tag=None, env_kwargs: dict | None = None, trajectories: bool = False) -> EvalResult:
    """Play `episodes` episodes of a decision transformer, all in lockstep, and return their records.

    model: a DecisionTransformerModel (with metadata=) or an adapter with .model/.metadata (`surgery.load(NAME)`).
    target_return: return-to-go to condition on, in the environment's units (default: metadata's first).
    env: an environment id (default metadata.env_id) or a callable returning a gymnasium env.
    dtype: torch.float32, or torch.bfloat16 for the faster, less exact opt-in mode.
    max_steps: cut episodes at this many steps (default: the environment's time limit).
    batch_size: most episodes run together; more run in successive waves of this size.
    out: a directory; each finished episode is committed to out/episodes.sqlite as it ends, and a
        rerun with the same experiment resumes, running only the episodes not stored yet.
    tag: anything JSON-able naming the experiment (e.g. the edit), part of the stored fingerprint.
    env_kwargs: keyword arguments for gymnasium.make.
    trajectories: keep every episode's observations, actions, rewards and model outputs.
    """
    if episodes < 1:
        raise SurgeryError(f"episodes must be at least 1, got {episodes}")
    if batch_size < 1:
        raise SurgeryError(f"batch_size must be at least 1, got {batch_size}")
    module, md = _unwrap(model, metadata)
    make_env, env_id, env_limit, identity = _env_factory(env, md, env_kwargs)
    if target_return is None:
        if not md.target_returns:
            raise SurgeryError("no target_return given and the metadata lists no target_returns")
        target_return = md.target_returns[0]
    time_limit = max_steps or env_limit or md.max_ep_len
    if max_steps is not None and max_steps < 1:
        raise SurgeryError(f"max_steps must be at least 1, got {max_steps}")

    done: dict[int, EpisodeRecord] = {}
    store = None
    if out is not None:
        spec = _experiment_spec(module, md, identity, target_return, seed, dtype, time_limit, tag)
        store = ResultsStore(Path(out) / RESULTS_FILE, spec, EpisodeRecord)
        done = {i: r for i, r in store.finished().items() if i < episodes}
    todo = [i for i in range(episodes) if i not in done]
    seeds = {i: episode_seed(seed, i) for i in todo}
    kept: dict[int, dict] = {}
    records = dict(done)

    from tqdm.auto import tqdm

    bar = tqdm(total=episodes, initial=len(done), desc=f"evaluate {env_id}", unit="ep", disable=not progress,
               dynamic_ncols=True)

    def on_finish(record: EpisodeRecord, trajectory) -> None:
        if store is not None:
            store.add(record)
        records[record.episode] = record
        if trajectory is not None:
            kept[record.episode] = trajectory
        bar.update(1)

    def on_step(t: int, alive: int) -> None:
        if t % 50 == 0:
            bar.set_postfix(step=t, alive=alive, refresh=False)

    try:
        if todo:
            runner = _Lockstep(DTPolicy(module, dtype), md, env_id, target_return, time_limit, trajectories)
            envs = [make_env() for _ in range(min(batch_size, len(todo)))]
            try:
                for start in range(0, len(todo), batch_size):
                    wave = todo[start:start + batch_size]
                    runner.run(envs[:len(wave)], wave, [seeds[i] for i in wave], on_finish, on_step)
            finally:
                for e in envs:
                    e.close()
    finally:
        bar.close()
        if store is not None:
            store.close()
    return EvalResult(
        records=[records[i] for i in range(episodes)], env_id=env_id, target_return=float(target_return),
        seed=seed, dtype=str(dtype), time_limit=time_limit, trajectories=kept if trajectories else None,
    )


def evaluate_pair(model, edit, *, out: str | Path | None = None, **kwargs) -> tuple[EvalResult, EvalResult]:
    """The same model evaluated without and with `edit` (a context manager such as a `patch`), on the same seeds.

    kwargs go to `evaluate`; with `out`, the two runs are stored in out/baseline and out/edited.
    """
    kwargs.setdefault("tag", None)
    baseline = evaluate(model, out=None if out is None else Path(out) / "baseline", **kwargs)
    with edit:
        edited = evaluate(model, out=None if out is None else Path(out) / "edited",
                          **{**kwargs, "tag": kwargs["tag"] if kwargs["tag"] is not None else repr(edit)})
    return baseline, edited
