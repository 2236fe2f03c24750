"""A reference for the atlas's use of the lane engine: every edit applied with `surgery.patch`, one edit at a time.

Same signature as `surgery.behaviour.rollout.run_lanes` and the same records as `surgery.evaluate`
under the patch: each edit's jobs are played with no lane deltas (the unedited path of the engine)
while the edit is patched into the weights. The atlas's tasks are checked against it.
"""
from __future__ import annotations

from typing import Callable

import torch

from surgery.behaviour.rollout import Job
from surgery.behaviour.rollout import run_lanes as engine
from surgery.core.patching import Patch
from surgery.errors import SurgeryError


def run_lanes(model, edits, jobs, *, seed: int, on_finish: Callable, dtype: torch.dtype = torch.float32,
              lanes: int = 256, on_steps: Callable | None = None, **kwargs):
    """Play every (edit, episode) job under its edit, patched in; `on_finish(Job, record)` as each ends."""
    edits = list(edits or [])
    by_edit: dict[int, list[int]] = {}
    for e, j in jobs:
        if not -1 <= e < len(edits):
            raise SurgeryError(f"job {(e, j)}: edit must be -1 or 0..{len(edits) - 1}")
        by_edit.setdefault(int(e), []).append(int(j))
    module = getattr(model, "model", model)
    steps = 0
    for e, episodes in by_edit.items():
        patch = Patch(module, edits[e]) if e >= 0 else None
        if patch is not None:
            patch.apply()
        try:
            stats = engine(model, None, [(-1, j) for j in episodes], seed=seed, dtype=dtype, lanes=lanes,
                           on_finish=lambda job, record, e=e: on_finish(Job(e, job.episode), record),
                           on_steps=on_steps, **kwargs)
            steps += stats.env_steps
        finally:
            if patch is not None:
                patch.revert()
    return type(stats)(steps, 0, 0)
