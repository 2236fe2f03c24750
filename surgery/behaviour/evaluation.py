"""Behaviour evaluation: N episodes of a decision transformer in lockstep, one batched forward per step.

    result = evaluate(model, episodes=200, seed=0, metadata=md)
    with patch(model, block=1, weight="K", idx=0):
        edited = evaluate(model, episodes=200, seed=0, metadata=md)
    surgery.stats.compare(result, edited)

or in one line: `base, edited = evaluate_pair(model, patch(model, block=1, weight="K", idx=0), ...)`.
Many edits at once, each as lanes of the same batched forward (no patching, one shared baseline):

    base, *edited = evaluate_runs(model, [Run(), Run([Edit(1, "K", 0)]), Run([Edit(2, "V", 3)])], episodes=200)

Episode i of a run with seed S is reset with `episode_seed(S, i)`, whatever N is, so a baseline and
an edited run face the same initial states. Every run goes through the one rollout engine,
surgery/behaviour/rollout.py. See docs/evaluation.md for the semantics.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from surgery.behaviour.episodes import SEED_SCHEME, EpisodeRecord, check_memory, episode_seed, is_failure
from surgery.behaviour.lanes import LaneEdits
from surgery.behaviour.metadata import DTMetadata
from surgery.behaviour.policy import DTPolicy
from surgery.behaviour.results_store import RESULTS_FILE, ResultsStore, stored_spec
from surgery.behaviour.rollout import Job, Setting, check_jobs, play, prepare
from surgery.checks import integer
from surgery.core.dtypes import parse_dtype
from surgery.core.patching import Edit, Patch
from surgery.errors import SurgeryError
from surgery.progress import progress as progress_bar

__all__ = ["evaluate", "evaluate_pair", "evaluate_runs", "Run", "EpisodeRecord", "EvalResult", "episode_seed",
           "is_failure"]

ENGINE_VERSION = 1  # bump when a change alters what an unedited episode returns, so stored results are not mixed
EDIT_ENGINE = "low-rank lanes v1"
"""How an edited run realises its edits (stored in its fingerprint): each row adds its edit's low-rank delta
`(x @ L) @ R` to the unedited weights' output (surgery/behaviour/lanes.py). Stores of edited runs made by the
patch-based engine before it have no such field and are refused, not mixed."""


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


def weights_sha256(module: torch.nn.Module) -> str:
    """A hash of every parameter and buffer (names, dtypes, shapes, bytes): edits change it."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _experiment_spec(setting: Setting, weights: str, seed, dtype, tag) -> dict:
    module, md = setting.module, setting.metadata
    config = module.config
    return {
        "engine_version": ENGINE_VERSION,
        "weights_sha256": weights,
        "model": {k: getattr(config, k, None) for k in (
            "activation_function", "layer_norm_epsilon", "action_tanh", "n_head",
            "scale_attn_weights", "scale_attn_by_inverse_layer_idx")},
        "metadata": {k: getattr(md, k) for k in (
            "state_mean", "state_std", "return_scale", "context_len", "max_ep_len", "discrete")},
        **setting.env_identity,
        "target_return": float(setting.target_return),
        "seed": int(seed),
        "seed_scheme": SEED_SCHEME,
        "dtype": str(dtype),
        "time_limit": int(setting.time_limit),
        "tag": tag,
    }


@dataclass(frozen=True)
class Run:
    """One evaluation among several played together by `evaluate_runs`."""

    edits: Sequence | Patch = ()
    """Edits (Edit or dict specs) applied together, as one `Patch` applies them, or a Patch (e.g. a loaded one);
    empty: the model as it is."""
    out: str | Path | None = None
    """A directory for this run's results store (out/episodes.sqlite, resumable), or None."""
    tag: object = None
    """Anything JSON-able naming the run (e.g. the edit); part of the stored fingerprint."""


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
    batch_size: most episodes run together; as one ends, the next not yet started takes its place.
    out: a directory; each finished episode is committed to out/episodes.sqlite as it ends, and a
        rerun with the same experiment resumes, running only the episodes not stored yet.
    tag: anything JSON-able naming the experiment (e.g. the edit), part of the stored fingerprint.
    env_kwargs: keyword arguments for gymnasium.make.
    trajectories: keep every episode's observations, actions sent, rewards and model outputs.

    Example (the same initial states with and without an edit: compare episode by episode):

    >>> hopper = surgery.load("hopper")
    >>> base = evaluate(hopper, episodes=200, seed=0)
    >>> with surgery.patch(hopper, block=1, weight="K", idx=0):
    ...     edited = evaluate(hopper, episodes=200, seed=0)
    >>> c = surgery.stats.compare(base, edited)   # paired tests, effect sizes, failures (a Comparison)
    """
    (result,) = evaluate_runs(model, [Run(out=out, tag=tag)], episodes, seed, target_return, env, metadata, dtype,
                              progress, max_steps=max_steps, batch_size=batch_size, env_kwargs=env_kwargs,
                              trajectories=trajectories)
    return result


def evaluate_runs(model, runs: Sequence[Run], episodes: int = 100, seed: int = 0, target_return: float | None = None,
                  env=None, metadata: DTMetadata | None = None, dtype: torch.dtype = torch.float32,
                  progress: bool = True, *,
                  max_steps: int | None = None, batch_size: int = 256, env_kwargs: dict | None = None,
                  trajectories: bool = False, desc: str | None = None) -> list[EvalResult]:
    """Evaluate the model as it is and/or under several edits, all as lanes of one batched rollout.

    runs: one `Run` per evaluation; each plays episodes 0..episodes-1 of run seed `seed` (the same
    initial states in every run), unedited or with its edits added as low-rank lane deltas
    (surgery/behaviour/lanes.py), so no weights are patched. Every argument is as for `evaluate`;
    batch_size is the number of lanes (rows of one forward) shared by all runs, refilled as episodes end.
    Each run with `out` keeps its own results store and resumes from it. Returns one EvalResult per run.
    Edits are validated, and every store opened, before any episode runs.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise SurgeryError(f"episodes must be a positive integer, got {episodes!r}")
    check_memory(episodes * len(runs), "this evaluation" if len(runs) == 1 else f"these {len(runs)} runs")
    batch_size = integer(batch_size, "batch_size", low=1)
    seed = integer(seed, "seed", low=0)
    if max_steps is not None:
        max_steps = integer(max_steps, "max_steps", low=1)
    dtype = parse_dtype(dtype) or torch.float32  # "bfloat16" as the settings records spell it
    runs = [r if isinstance(r, Run) else Run(*r) for r in runs]
    runs = [Run([r.edits], r.out, r.tag) if isinstance(r.edits, (Edit, dict)) else r for r in runs]  # one bare edit
    setting = prepare(model, metadata, env, env_kwargs, target_return, max_steps)
    edited = [i for i, r in enumerate(runs) if isinstance(r.edits, Patch) or len(r.edits)]
    lane_edits = LaneEdits(setting.module, [runs[i].edits for i in edited]) if edited else None
    edit_of = {i: e for e, i in enumerate(edited)}  # run -> its edit's index in lane_edits
    if len(runs) - len(edited) > 1:
        raise SurgeryError("evaluate_runs takes at most one run without edits (they would play the same episodes)")
    run_of = {edit_of.get(i, -1): i for i in range(len(runs))}  # a job's edit index -> its run

    stores: list[ResultsStore | None] = [None] * len(runs)
    done: list[dict[int, EpisodeRecord]] = [{} for _ in runs]
    weights = None
    try:
        for i, r in enumerate(runs):
            if r.out is None:
                continue
            weights = weights or weights_sha256(setting.module)
            spec = _experiment_spec(setting, weights, seed, dtype, r.tag)
            if i in edit_of:
                edits = [e.to_dict() for e in lane_edits.edits[edit_of[i]]]
                spec = {**spec, "edits": edits, "edit_engine": EDIT_ENGINE}
                # A saved patch adds the factors in its files: name them. (Not a hash of the factors an
                # edit made afresh: an SVD's last bits depend on the thread count, and a resume may use another.)
                if getattr(r.edits, "digest", None):
                    spec["patch_digest"] = r.edits.digest
            path = Path(r.out) / RESULTS_FILE
            _refuse_patch_engine_store(path, spec)
            stores[i] = ResultsStore(path, spec, EpisodeRecord)
            done[i] = {j: rec for j, rec in stores[i].finished().items() if j < episodes}
        records = [dict(d) for d in done]
        kept: list[dict[int, dict]] = [{} for _ in runs]
        # Episode-major: every run's episode j starts about when the others' do, so partial results pair up.
        jobs = check_jobs([(edit_of.get(i, -1), j) for j in range(episodes)
                           for i in range(len(runs)) if j not in done[i]], 0 if lane_edits is None else len(lane_edits))
        total = episodes * len(runs)
        bar = progress_bar(total, desc or f"evaluate {setting.env_id}", "ep", enabled=progress)
        bar.update(total - len(jobs))
        steps, shown = 0, time.monotonic()

        def on_finish(job: Job, record: EpisodeRecord) -> None:
            i = run_of[job.edit]
            if stores[i] is not None:
                stores[i].add(record)
            records[i][record.episode] = record
            bar.update(1)

        def on_steps(n: int) -> None:
            nonlocal steps, shown
            steps += n
            bar.set_postfix_str(f"{steps} env steps", refresh=False)
            if time.monotonic() - shown > 1.0:  # long episodes: show progress between finished episodes
                shown = time.monotonic()
                bar.refresh()

        def on_trajectory(job: Job, trajectory: dict) -> None:
            kept[run_of[job.edit]][job.episode] = trajectory

        try:
            if jobs:
                policy = DTPolicy(setting.module, dtype, edits=lane_edits)
                play(setting, policy, jobs, seed=seed, lanes=batch_size, on_finish=on_finish, on_steps=on_steps,
                     on_trajectory=on_trajectory if trajectories else None)
        finally:
            bar.close()
    finally:
        for st in stores:
            if st is not None:
                st.close()
    return [EvalResult(records=[records[i][j] for j in range(episodes)], env_id=setting.env_id,
                       target_return=setting.target_return, seed=seed, dtype=str(dtype),
                       time_limit=setting.time_limit, trajectories=kept[i] if trajectories else None)
            for i in range(len(runs))]


def _refuse_patch_engine_store(path: Path, spec: dict) -> None:
    """An edited run's store from the patch-based engine (before lanes) is refused with what to do, not mixed."""
    theirs = stored_spec(path)
    if theirs is None or "edit_engine" not in spec or "edit_engine" in theirs:
        return
    raise SurgeryError(f"{path} holds episodes of an edited run made by the patch-based engine (before "
                       f"{EDIT_ENGINE!r}); the lane engine's episodes differ by float rounding, so they are not "
                       "mixed into it. Choose another output directory, or move the file away to start afresh.")


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
