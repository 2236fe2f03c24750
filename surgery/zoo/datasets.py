"""Offline datasets in D4RL's layout: collect, save as .npz, load (.npz or Minari), split into episodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from surgery.errors import SurgeryError
from surgery.zoo.policies import make_env

# D4RL's field names; next_observations as in d4rl.qlearning_dataset.
FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts", "next_observations")


def collect(env_id: str, make_policy, episodes: int, seed: int, desc: str = "collect", progress: bool = True) -> dict:
    """Roll out `episodes` episodes, episode i reset with seed + i; returns D4RL-named flat arrays.

    make_policy(env, rng) builds the behaviour policy; rng is seeded from `seed` so noise is reproducible.
    """
    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    policy = make_policy(env, rng)
    cols = {k: [] for k in FIELDS}
    for i in tqdm(range(episodes), desc=desc, disable=not progress):
        obs, _ = env.reset(seed=seed + i)
        while True:
            a = policy.act(obs)
            nxt, r, term, trunc, _ = env.step(a)
            for k, v in zip(FIELDS, (obs, a, r, term, trunc and not term, nxt)):
                cols[k].append(v)
            obs = nxt
            if term or trunc:
                break
    env.close()
    discrete = not hasattr(env.action_space, "shape") or env.action_space.shape == ()
    out = {
        "observations": np.asarray(cols["observations"], np.float32),
        "actions": np.asarray(cols["actions"], np.int64 if discrete else np.float32),
        "rewards": np.asarray(cols["rewards"], np.float32),
        "terminals": np.asarray(cols["terminals"], bool),
        "timeouts": np.asarray(cols["timeouts"], bool),
        "next_observations": np.asarray(cols["next_observations"], np.float32),
    }
    return out


def concat(*datasets: dict) -> dict:
    """Concatenate datasets episode-wise (each one ends on an episode boundary)."""
    return {k: np.concatenate([d[k] for d in datasets]) for k in datasets[0]}


def save(data: dict, path: str | Path) -> Path:
    """Write a dataset as an uncompressed .npz of plain arrays (no pickled objects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **data)
    tmp.replace(path)  # a half-written file never carries the final name, so resuming can trust it
    return path


def load(source: str | Path) -> dict:
    """Load a dataset from a .npz path, or a Minari dataset id (e.g. "mujoco/hopper/expert-v0") if minari is installed."""
    path = Path(source)
    if path.suffix == ".npz" or path.exists():
        return _load_npz(path)
    if "/" in str(source):
        return load_minari(str(source))
    raise FileNotFoundError(f"no dataset at {source!r}: give a .npz file or a Minari dataset id such as 'mujoco/hopper/expert-v0'")


def _load_npz(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"no dataset file at {path}")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except (ValueError, OSError) as e:  # zip errors, pickled object arrays
        raise SurgeryError(f"{path} is not a readable .npz of plain arrays: {e}") from None
    return validate(data, str(path))


def load_minari(dataset_id: str) -> dict:
    """Convert an installed Minari dataset to D4RL-named arrays (never downloads)."""
    try:
        import minari
    except ImportError:
        raise SurgeryError(f"{dataset_id!r} looks like a Minari dataset id, but minari is not installed (pip install minari)") from None
    try:
        ds = minari.load_dataset(dataset_id, download=False)
    except Exception as e:  # minari raises its own FileNotFoundError/ValueError variants by version
        raise FileNotFoundError(f"Minari dataset {dataset_id!r} is not installed locally ({e}); "
                                f"download it yourself with `minari download {dataset_id}`") from None
    cols = {k: [] for k in FIELDS}
    for ep in ds.iterate_episodes():
        obs = np.asarray(ep.observations)
        if obs.dtype == object or obs.ndim != 2:
            raise SurgeryError(f"Minari dataset {dataset_id!r} has non-flat observations {obs.shape}; only Box observations are supported")
        term, trunc = np.asarray(ep.terminations, bool), np.asarray(ep.truncations, bool)
        # Minari stores T+1 observations per episode (the last one after the final step).
        for k, v in zip(FIELDS, (obs[:-1], np.asarray(ep.actions), np.asarray(ep.rewards), term, trunc & ~term, obs[1:])):
            cols[k].append(v)
    data = {k: np.concatenate(v) for k, v in cols.items()}
    data["observations"] = data["observations"].astype(np.float32)
    data["next_observations"] = data["next_observations"].astype(np.float32)
    data["rewards"] = data["rewards"].astype(np.float32)
    return validate(data, dataset_id)


def validate(data: dict, where: str) -> dict:
    """Check D4RL field names and consistent lengths; raise ValueError naming the problem."""
    required = ("observations", "actions", "rewards", "terminals", "timeouts")
    missing = [k for k in required if k not in data]
    if missing:
        raise SurgeryError(f"dataset {where} lacks fields {missing}; D4RL fields are {list(required)}")
    n = len(data["observations"])
    bad = {k: len(data[k]) for k in data if len(data[k]) != n}
    if bad:
        raise SurgeryError(f"dataset {where}: fields have different lengths from observations ({n}): {bad}")
    if data["observations"].ndim != 2:
        raise SurgeryError(f"dataset {where}: observations must be [steps, state_dim], got shape {data['observations'].shape}")
    return data


def episodes(data: dict) -> list[dict]:
    """Split flat arrays into episodes at terminals or timeouts (a trailing partial episode is kept)."""
    ends = np.flatnonzero(np.asarray(data["terminals"], bool) | np.asarray(data["timeouts"], bool)) + 1
    bounds = list(ends) if len(ends) and ends[-1] == len(data["rewards"]) else list(ends) + [len(data["rewards"])]
    out, start = [], 0
    for end in bounds:
        if end > start:
            out.append({k: v[start:end] for k, v in data.items()})
        start = end
    return out


def card(data: dict) -> dict:
    """Dataset card: episodes, steps and return statistics."""
    rets = np.array([float(ep["rewards"].sum()) for ep in episodes(data)])
    lens = np.array([len(ep["rewards"]) for ep in episodes(data)])
    return {
        "episodes": int(len(rets)),
        "steps": int(lens.sum()),
        "return_mean": float(rets.mean()), "return_std": float(rets.std()),
        "return_min": float(rets.min()), "return_max": float(rets.max()),
        "length_mean": float(lens.mean()),
        "terminals": int(np.asarray(data["terminals"]).sum()),
    }
