"""What one episode is: its record, its environment seed, what counts as a failure, and what it costs in memory."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from surgery.errors import SurgeryError

__all__ = ["EpisodeRecord", "episode_seed", "is_failure", "check_memory", "SEED_SCHEME"]

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


# A finished episode held in memory: its record, its job and their dict entries take 420 bytes
# (tracemalloc, 100,000 episodes); doubled for the copies the statistics and stores make.
BYTES_PER_EPISODE = 1024


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (MemAvailable), None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(episodes: int, what: str = "this run") -> None:
    """Refuse, before anything runs, a number of episodes whose records alone would not fit in memory.

    A billion episodes once grew to 24 GB before the kernel killed the run; this says so at once.
    """
    need, have = episodes * BYTES_PER_EPISODE, available_memory()
    if have is not None and need > have:
        fits = max(1, have // BYTES_PER_EPISODE)
        raise SurgeryError(f"{what} would play {episodes:,} episodes in all, whose records need about "
                           f"{need / 2**30:,.1f} GiB "
                           f"({BYTES_PER_EPISODE} bytes each), more than the {have / 2**30:.1f} GiB available; "
                           f"use at most about {fits:,} episodes")
