"""What one episode is: its record, its environment seed, and what counts as a failure."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surgery.errors import SurgeryError

__all__ = ["EpisodeRecord", "episode_seed", "is_failure", "SEED_SCHEME"]

SEED_SCHEME = "numpy.random.SeedSequence(seed, spawn_key=(episode,)).generate_state(1, uint32)[0]"


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
