"""A stand-in for the lane engine (`surgery.behaviour.rollout.run_lanes`) built from `patch` + the lockstep rollout.

Same signature and the same records as the engine's: each job (edit e, episode j) is played with
edit e applied by `surgery.patch` (-1: unedited), reset with `episode_seed(seed, j)`. The jobs of
one edit run in lockstep waves of `lanes` episodes, one edit after the other. Used until the lane
engine is merged, and afterwards as the reference the engine is tested against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from surgery.behaviour.evaluation import _env_factory, _Lockstep, _unwrap, episode_seed
from surgery.behaviour.policy import DTPolicy
from surgery.core.patching import Patch
from surgery.errors import SurgeryError


@dataclass(frozen=True)
class RolloutStats:
    env_steps: int
    forwards: int
    padded_forwards: int = 0


def run_lanes(model, edits, jobs, *, seed: int, on_finish: Callable, metadata=None, target_return=None, env=None,
              env_kwargs=None, dtype: torch.dtype = torch.float32, lanes: int = 256, max_steps: int | None = None,
              on_steps: Callable | None = None, on_trajectory=None) -> RolloutStats:
    """Play every (edit, episode) job once under its edit; `on_finish((edit, episode), record)` as each ends."""
    if on_trajectory is not None:
        raise SurgeryError("the stand-in engine keeps no trajectories")
    module, md = _unwrap(model, metadata)
    make_env, env_id, env_limit, _ = _env_factory(env, md, env_kwargs)
    target = md.target_returns[0] if target_return is None else target_return
    time_limit = max_steps or env_limit or md.max_ep_len
    edits = list(edits or [])
    by_edit: dict[int, list[int]] = {}
    for e, j in jobs:
        if not -1 <= e < len(edits):
            raise SurgeryError(f"job {(e, j)}: edit must be -1 or 0..{len(edits) - 1}")
        by_edit.setdefault(int(e), []).append(int(j))
    runner = _Lockstep(DTPolicy(module, dtype), md, env_id, target, time_limit, keep_trajectories=False)
    counts = {"steps": 0, "forwards": 0}

    def on_step(t, alive):
        counts["steps"] += alive
        counts["forwards"] += 1
        if on_steps is not None:
            on_steps(alive)

    envs = [make_env() for _ in range(min(lanes, max((len(v) for v in by_edit.values()), default=0)))]
    try:
        for e, episodes in by_edit.items():
            patch = Patch(module, edits[e]) if e >= 0 else None
            if patch is not None:
                patch.apply()
            try:
                for start in range(0, len(episodes), lanes):
                    wave = episodes[start:start + lanes]
                    runner.run(envs[:len(wave)], wave, [episode_seed(seed, j) for j in wave],
                               lambda record, _traj, e=e: on_finish((e, record.episode), record), on_step)
            finally:
                if patch is not None:
                    patch.revert()
    finally:
        for x in envs:
            x.close()
    return RolloutStats(counts["steps"], counts["forwards"])
