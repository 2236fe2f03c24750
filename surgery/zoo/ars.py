"""Augmented Random Search (Mania et al. 2018, V2-t): a linear policy with observation normalisation."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from surgery.zoo.policies import LinearPolicy, make_env


@dataclass
class ARSConfig:
    """Hyper-parameters of one ARS run (defaults: the paper's Hopper settings)."""

    env_id: str = "Hopper-v5"
    """gymnasium id of the environment to solve."""
    n_directions: int = 8
    """N: random directions sampled per iteration (each rolled out with + and - sign)."""
    top_directions: int = 4
    """b: best directions kept for the update (the "-t" in V2-t)."""
    step_size: float = 0.01
    """alpha: learning rate of the update."""
    noise: float = 0.025
    """nu: scale of the exploration perturbation."""
    shift: float = 0.0
    """Subtracted from every training reward; the paper removes Hopper's alive bonus (1) so standing still does not pay."""
    max_tilt: float | None = None
    """End a training rollout when |observation[1]| (the torso pitch, rooty) exceeds this many radians.
    HalfCheetah can flip onto its back and stay there; ending those rollouts makes gaits that flip
    lose their remaining reward. Evaluations always play the full, unmodified episode."""
    iters: int = 1000
    """Upper bound on iterations."""
    minutes: float | None = None
    """Optional wall-clock cap; with it the run is no longer reproducible, so the run records the iterations it did."""
    eval_every: int = 10
    """Evaluate the unperturbed policy every this many iterations (snapshots for the medium level)."""
    eval_episodes: int = 3
    """Episodes per evaluation."""
    select_top: int = 5
    """At the end the best `select_top` snapshots are re-evaluated on `select_episodes` more episodes,
    and the best of those is the expert: a few evaluation episodes miss rare failures (a flip)."""
    select_episodes: int = 20
    """Episodes of that final re-evaluation."""
    seed: int = 0
    """Seeds the direction sampler and every episode's reset."""


@dataclass
class ARSResult:
    """The best policy found, and evaluated snapshots along the way."""

    best: LinearPolicy
    best_return: float
    """Mean return of the best policy over the final selection episodes."""
    snapshots: list[tuple[int, float, LinearPolicy]] = field(default_factory=list)
    iters_done: int = 0
    seconds: float = 0.0


class RunningStat:
    """Running mean and variance of observations (Chan et al. parallel update)."""

    def __init__(self, dim: int):
        self.n = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)

    def update(self, x: np.ndarray) -> None:
        n, mean, m2 = len(x), x.mean(0), ((x - x.mean(0)) ** 2).sum(0)
        total = self.n + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.n * n / total
        self.n = total

    @property
    def std(self) -> np.ndarray:
        # Dimensions that never moved (or have one sample) keep std 1 so the policy ignores scale there.
        if self.n < 2:
            return np.ones_like(self.mean)
        std = np.sqrt(self.m2 / (self.n - 1))
        return np.where(std < 1e-8, 1.0, std)


def rollout(env, policy: LinearPolicy, seed: int, shift: float = 0.0, max_tilt: float | None = None):
    """One episode; returns the (shifted) return and the raw observations seen."""
    obs, _ = env.reset(seed=seed)
    total, states = 0.0, []
    while True:
        states.append(obs)
        obs, r, term, trunc, _ = env.step(policy.act(obs))
        total += r - shift
        if term or trunc or (max_tilt is not None and abs(obs[1]) > max_tilt):
            return total, np.asarray(states)


def evaluate(env, policy: LinearPolicy, seeds) -> float:
    """Mean unshifted return over episodes reset with the given seeds."""
    return float(np.mean([rollout(env, policy, int(s))[0] for s in seeds]))


def train_ars(cfg: ARSConfig, progress: bool = True) -> ARSResult:
    """Run ARS V2-t and return the best evaluated policy and its snapshots."""
    rng = np.random.default_rng(cfg.seed)
    env = make_env(cfg.env_id)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    M = np.zeros((act_dim, obs_dim))
    stat = RunningStat(obs_dim)
    stat.mean = np.zeros(obs_dim)
    # Fixed evaluation seeds, disjoint from the training ones (which come from rng, below 2**31).
    eval_seeds = [2**31 + i for i in range(cfg.eval_episodes)]
    snapshots = []
    start = time.monotonic()
    bar = tqdm(range(1, cfg.iters + 1), desc=f"ARS {cfg.env_id}", disable=not progress)
    it = 0
    for it in bar:
        mean, std = stat.mean.copy(), stat.std.copy()
        deltas = rng.standard_normal((cfg.n_directions, act_dim, obs_dim))
        seeds = rng.integers(0, 2**31, size=cfg.n_directions)
        r_pos, r_neg, seen = np.zeros(cfg.n_directions), np.zeros(cfg.n_directions), []
        for k in range(cfg.n_directions):
            # Both signs share a reset seed: the difference then measures the direction, not the start.
            for sign, r_out in ((1, r_pos), (-1, r_neg)):
                policy = LinearPolicy(M + sign * cfg.noise * deltas[k], mean, std)
                r_out[k], states = rollout(env, policy, int(seeds[k]), cfg.shift, cfg.max_tilt)
                seen.append(states)
        top = np.argsort(-np.maximum(r_pos, r_neg), kind="stable")[: cfg.top_directions]
        sigma = np.concatenate([r_pos[top], r_neg[top]]).std()
        step = np.tensordot(r_pos[top] - r_neg[top], deltas[top], axes=1)
        M = M + cfg.step_size / (cfg.top_directions * max(sigma, 1e-8)) * step
        stat.update(np.concatenate(seen))
        if it % cfg.eval_every == 0 or it == cfg.iters:
            policy = LinearPolicy(M.copy(), stat.mean.copy(), stat.std.copy())
            ret = evaluate(env, policy, eval_seeds)
            snapshots.append((it, ret, policy))
            bar.set_postfix(eval=f"{ret:.0f}", best=f"{max(s[1] for s in snapshots):.0f}")
        if cfg.minutes is not None and time.monotonic() - start > 60 * cfg.minutes:
            break
    if not snapshots:  # stopped before the first evaluation
        policy = LinearPolicy(M, stat.mean.copy(), stat.std.copy())
        snapshots.append((it, evaluate(env, policy, eval_seeds), policy))
    # Final selection on fresh seeds, disjoint from the evaluation seeds above.
    select_seeds = [2**31 + 1000 + i for i in range(cfg.select_episodes)]
    top = sorted(snapshots, key=lambda x: -x[1])[: cfg.select_top]
    best_ret, best = max(((evaluate(env, p, select_seeds), p) for _, _, p in top), key=lambda x: x[0])
    env.close()
    return ARSResult(best, best_ret, snapshots, it, time.monotonic() - start)
