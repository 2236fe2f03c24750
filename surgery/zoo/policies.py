"""Behaviour policies that generate the zoo's data: linear ARS policies and LunarLander's heuristic."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from surgery.errors import SurgeryError


def make_env(env_id: str):
    """A gymnasium environment without the passive checker (it costs time on every step)."""
    import gymnasium as gym  # optional dependency: only data collection and rollouts need it

    return gym.make(env_id, disable_env_checker=True)


@dataclass
class LinearPolicy:
    """a = clip(M @ (s - mean) / std, -1, 1): the ARS policy class."""

    M: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.clip(self.M @ ((obs - self.mean) / self.std), -1.0, 1.0)

    def save(self, path: str | Path, **info: float) -> Path:
        """Write the policy (and scalar info such as its return) as a plain .npz."""
        path = Path(path)
        np.savez(path, M=self.M, mean=self.mean, std=self.std, **{k: np.asarray(v) for k, v in info.items()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LinearPolicy":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no policy file at {path}")
        with np.load(path, allow_pickle=False) as f:
            missing = {"M", "mean", "std"} - set(f.files)
            if missing:
                raise SurgeryError(f"{path} is not a linear policy: missing arrays {sorted(missing)}")
            return cls(f["M"], f["mean"], f["std"])


class GaussianNoise:
    """Adds N(0, sigma^2) to a continuous policy's action, then clips to [-1, 1]."""

    def __init__(self, policy, sigma: float, rng: np.random.Generator):
        self.policy, self.sigma, self.rng = policy, sigma, rng

    def act(self, obs: np.ndarray) -> np.ndarray:
        a = self.policy.act(obs)
        if self.sigma > 0:
            a = a + self.sigma * self.rng.standard_normal(a.shape)
        return np.clip(a, -1.0, 1.0)


class LunarHeuristic:
    """gymnasium's hand-written LunarLander controller; with probability epsilon a uniform random action."""

    def __init__(self, env, epsilon: float, rng: np.random.Generator):
        from gymnasium.envs.box2d.lunar_lander import heuristic

        self.heuristic, self.env, self.epsilon, self.rng = heuristic, env, epsilon, rng

    def act(self, obs: np.ndarray) -> int:
        if self.epsilon > 0 and self.rng.random() < self.epsilon:
            return int(self.rng.integers(4))
        return int(self.heuristic(self.env, obs))
