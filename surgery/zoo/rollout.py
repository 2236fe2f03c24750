"""The zoo's evaluation record of a model: surgery.evaluate's episodes, summarised for metadata and cards.

The zoo plays models with the same engine and episode seeds as `surgery evaluate`, so a card's
numbers and an edit experiment's baseline come from the same episodes.
"""
from __future__ import annotations

import numpy as np

from surgery.behaviour.envs import env_info
from surgery.behaviour.metadata import DTMetadata


def play(model, meta: DTMetadata, episodes: int, seed: int, target_return: float | None = None,
         max_steps: int | None = None, progress: bool = True) -> dict:
    """Play `episodes` episodes with surgery.evaluate (run seed `seed`); return the card's summary dict."""
    from surgery.behaviour.evaluation import evaluate

    result = evaluate(model, episodes=episodes, seed=seed, target_return=target_return, metadata=meta,
                      max_steps=max_steps, progress=progress)
    return summarize(meta.env_id, result.returns, result.lengths, seed, result.target_return)


def summarize(env_id: str, returns: np.ndarray, lengths: np.ndarray, seed: int, target: float) -> dict:
    """Mean/std/min/max return, D4RL-normalised score where a reference exists, and the run seed."""
    info = env_info(env_id)
    score = info.normalized_score(float(returns.mean())) if info else None
    return {
        "episodes": int(len(returns)), "seeds": f"run seed {seed}, episodes 0..{len(returns) - 1}",
        "target_return": float(target),
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "return_min": float(returns.min()), "return_max": float(returns.max()),
        "length_mean": float(lengths.mean()),
        "normalized_score": None if score is None else float(score),
        "returns": [round(float(r), 2) for r in returns],
    }
