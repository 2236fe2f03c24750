"""`surgery.atlas`: every singular triple's effect on behaviour against one shared baseline; does alignment predict it?

    atlas = surgery.atlas(model, weights=("K", "V"), op="zero", episodes=50, out="runs/atlas")
    atlas.rows                        # one row per edited triple: size, alignment, damage, tests
    atlas.claim("action_out")         # does alignment with the action outputs predict damage?

Each edit (one triple, `op` applied) plays paired episodes against the unedited model on the same
seeds, in stages: after each stage every open edit is tested and may stop early
(`surgery.experiments.sequential`: the error guarantees hold whatever stops). A stage's jobs
(edit, episode) are cut into tasks of about `lanes` jobs, run in this process or on Dask
(`surgery.experiments.distribute`); the client stores every finished task's episodes in one SQLite
transaction, so rerunning the same call resumes where it stopped and counts nothing twice.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from surgery.checks import integer, one_of
from surgery.errors import SurgeryError
from surgery.experiments.sequential import Design, pool_p, schedule
from surgery.experiments.settings import ATLAS_DTYPES, ATLAS_OPS, AtlasSettings
from surgery.names import CORRECTIONS, DT_EMBEDDINGS, WEIGHTS

__all__ = ["atlas", "Atlas", "plan_edits", "RESULTS_FILE", "PLAN_FILE"]

RESULTS_FILE = "episodes.sqlite"
PLAN_FILE = "plan.json"
MODEL_DIR = "model"
ATLAS_VERSION = 2  # bump when a change alters which jobs run or how tasks are cut (2: typical_pairs)
POOLED_ATLAS_VERSION = 3
"""The same for an atlas with a pool, counted apart so that a change to the pooled design leaves every paired
store's fingerprint as it was (3: futility on two-sample statistics, `sequential.two_sample_z`)."""


@dataclass
class Atlas:
    """Every edited triple's size, alignment and effect on behaviour: what `atlas` returns."""

    model: dict
    """Which model: name, environment, weights hash."""
    settings: AtlasSettings
    """What was edited and how it was decided, defaults resolved."""
    alignment_settings: object
    """The AlignmentSettings of the one `surgery.alignment` call the alignment columns come from."""
    rows: object
    """A `surgery.analysis.tables.Table`, one row per edit (see docs/atlas.md for the columns)."""
    baseline: object
    """The unedited model's episodes (`EvalResult`)."""
    design: object
    """The sequential design (`surgery.experiments.sequential.Design`)."""
    cost: dict
    """Episodes and environment steps spent, and what a fixed design would have spent; wall time."""
    embeddings: tuple = ()
    """Embedding sets with alignment columns."""
    alignment_alpha: float = 0.05
    """Level at which a vector counts as aligned beyond chance (its p_adj)."""
    thresholds: dict = field(default_factory=dict)
    """Embedding set -> the |cos| a vector must reach to be aligned beyond chance."""
    warnings: list = field(default_factory=list)
    placebo: dict | None = None
    """The return drop of the quarter of edits that change the weights least: the level damage is read against
    (`atlas_rows.placebo`); None where fewer than 4 edits are that small."""
    files: dict = field(default_factory=dict)
    _claims: dict = field(default_factory=dict, repr=False, compare=False)

    def __repr__(self) -> str:
        n_sig = int(np.sum(self.rows["significant"])) if len(self.rows) else 0
        return (f"Atlas({self.model['model']}: {len(self.rows)} edits of {', '.join(self.settings.weights)}, op "
                f"{self.settings.op}; {n_sig} change the return significantly)")

    def claim(self, embedding: str | None = None, per_bin: int = 20, seed: int = 0):
        """The study's claim on every edit: does |cos| with `embedding` predict damage, beyond size? (`Claim`).

        per_bin: vectors per bin of singular value for the within-size comparison. seed: of the bootstraps.
        """
        from surgery.experiments.claim import claim

        key = (embedding or self.settings.embedding, per_bin, seed)
        if key not in self._claims:  # bootstraps over thousands of edits: computed once per question
            self._claims[key] = claim(self, key[0], per_bin=per_bin, seed=seed)
        return self._claims[key]

    def to_csv(self, path=None) -> str:
        return self.rows.to_csv(path)

    def to_pandas(self):
        return self.rows.to_pandas()

    def text(self) -> str:
        from surgery.experiments.atlas_report import text

        return text(self)

    def markdown(self) -> str:
        from surgery.experiments.atlas_report import markdown

        return markdown(self)

    def html(self) -> str:
        from surgery.experiments.atlas_report import html

        return html(self)

    def write(self, out) -> list[Path]:
        """atlas.csv, atlas.md, atlas.html (figures inlined), atlas.json and the figures as PNG, each atomically."""
        from surgery.experiments.atlas_report import write

        return write(self, out)


# ---- settings and the edits ------------------------------------------------------------------------
def _resolve(settings: AtlasSettings | None, overrides: dict) -> AtlasSettings:
    names = {f.name for f in dataclasses.fields(AtlasSettings)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise SurgeryError(f"unknown atlas setting(s) {unknown}; valid: {', '.join(sorted(names))}")
    for k in ("weights", "blocks", "heads", "looks"):  # one value where a tuple is meant
        if k in overrides and isinstance(overrides[k], (str, int, float)):
            overrides[k] = (overrides[k],)
        elif k in overrides and overrides[k] is not None:
            overrides[k] = tuple(overrides[k])
    s = replace(settings or AtlasSettings(), **overrides)
    bad_w = [w for w in s.weights if w not in WEIGHTS]
    if bad_w or not s.weights:
        raise SurgeryError(f"weights {bad_w or list(s.weights)} not known; valid: {', '.join(WEIGHTS)}")
    if s.op not in ATLAS_OPS:
        raise SurgeryError(f"op={s.op!r} is not an atlas edit; valid: {', '.join(map(repr, ATLAS_OPS))}")
    if s.op == "zero" and s.value is not None:
        raise SurgeryError("op='zero' takes no value")
    if s.op == "scale" and s.value is None:
        raise SurgeryError("op='scale' needs value=<factor for the singular value> (1.0 edits nothing)")
    one_of(s.dtype, "dtype", ATLAS_DTYPES)
    one_of(s.correction, "correction", CORRECTIONS)
    for name, low in (("episodes", 1), ("lanes", 1), ("max_steps", 1), ("vectors", 1), ("seed", 0), ("pool", 0)):
        value = getattr(s, name)
        if value is not None or name not in ("max_steps", "vectors"):  # those two: None means the default
            s = replace(s, **{name: integer(value, name, low=low)})  # a numpy integer becomes an int
    if s.pool == 1:
        raise SurgeryError("pool=1: a pool needs at least 2 unedited episodes (0: paired; about 200 pin its mean)")
    one_of(s.embedding, "embedding", DT_EMBEDDINGS)
    # The design's own checks (looks, alpha, futility, spend, correction), before any model or cluster is touched.
    Design(schedule(s.episodes, s.looks), 1, s.alpha, s.futility, s.correction, s.spend)
    return s


def plan_edits(model, settings: AtlasSettings, triples=None) -> list:
    """The atlas's edits, one triple each, in a fixed order: weight, block, head, idx (validated, defaults filled).

    triples: instead, exactly these (block, weight, idx, head) triples (head None for K and V), in this order.
    """
    from adapters import wrap
    from surgery.analysis.alignment import _check_indices
    from surgery.core.patching import Edit, validate_edit

    adapter = wrap(model)
    if triples is not None:
        if any(getattr(settings, k) is not None for k in ("blocks", "heads", "vectors")):
            raise SurgeryError("give either triples= or blocks/heads/vectors, not both")
        edits = []
        for t in triples:
            try:
                block, weight, idx, head = (*t, None) if len(t) == 3 else t
            except (TypeError, ValueError):
                raise SurgeryError(f"a triple is (block, weight, idx) or (block, weight, idx, head), "
                                   f"got {t!r}") from None
            edits.append(validate_edit(adapter, Edit(block, weight, idx, head, settings.op, settings.value)))
        if len({(e.block, e.weight, e.head, e.idx) for e in edits}) != len(edits):
            raise SurgeryError("a triple is listed more than once")
        return edits
    blocks = _check_indices(settings.blocks, adapter.n_blocks, "block", "blocks")
    heads = _check_indices(settings.heads, adapter.n_heads, "head", "heads")
    edits = []
    for w in settings.weights:
        rank = adapter.rank(w)
        n = rank if settings.vectors is None else min(settings.vectors, rank)
        for b in blocks:
            for h in (heads if w in ("OV", "QK") else [None]):
                for i in range(n):
                    edits.append(validate_edit(adapter, Edit(b, w, i, h, settings.op, settings.value)))
    return edits


# ---- the run -------------------------------------------------------------------------------------
def atlas(model, settings: AtlasSettings | None = None, *, out: str | Path | None = None, alignment=None,
          client=None, scheduler: str | None = None, workers: int | None = None, progress: bool = True,
          source: str | Path | None = None, metadata_file: str | Path | None = None, triples=None,
          edits=None, **overrides) -> Atlas:
    """Edit every singular triple of the chosen weights, one at a time, and measure what each does to behaviour.

    model: a loaded decision transformer with metadata (`surgery.load("hopper")`).
    settings: an AtlasSettings; keyword arguments override its fields, e.g. `atlas(model, weights=("K", "V"),
        episodes=50)`. See AtlasSettings for every field.
    out: a directory for the results store, the plan and the report; rerunning the same call resumes there.
    alignment: the AlignmentSettings of the alignment columns (default: `surgery analyze`'s defaults).
    client / scheduler / workers: where the tasks run: an existing `distributed.Client`, a scheduler
        address ("tcp://host:8786"), or a LocalCluster of `workers` processes started here and closed
        on the way out (default: one per core); workers=0 runs everything in this process, without Dask.
    source: the zoo name or checkpoint directory the model was loaded from; Dask workers load it from
        there (its weights must hash the same). Without it the model is saved once under out/model.
    metadata_file: the metadata JSON the model was loaded with, for a checkpoint without metadata.json.
    triples: edit exactly these (block, weight, idx[, head]) triples instead of every triple of `weights`
        (a sample; `weights` is then set to the weight types they cover).
    edits: a saved patch (a folder `Patch.save` wrote, or `surgery.load_patch`'s result) applied to the model
        for the whole run and reverted after it: the atlas of the edited model (which triples matter once
        that edit is in). Its baseline is the edited model; the report names the patch.
    """
    from surgery.experiments.distribute import Runner
    from surgery.experiments.output import adapter_with_metadata, saved_edits_applied

    start = time.perf_counter()
    s = _resolve(settings, dict(overrides))
    adapter = adapter_with_metadata(model, "atlas")
    sets = getattr(alignment, "embeddings", None)
    if sets is not None and s.embedding not in sets:  # else the claim fails after every episode is played
        raise SurgeryError(f"embedding={s.embedding!r} is not among the alignment's embedding sets {list(sets)}: "
                           "the report's claim needs its alignment columns")
    with saved_edits_applied(adapter, edits) as applied:
        planned = plan_edits(adapter, s, triples)
        if triples is not None:
            s = replace(s, weights=tuple(dict.fromkeys(e.weight for e in planned)))
        if not planned:
            raise SurgeryError("no triples to edit: check weights, blocks, heads and vectors")
        # Everything the user could have got wrong is checked above; now connect (fail fast, before writing).
        with Runner(client=client, scheduler=scheduler, workers=workers) as runner:
            sweep = _Sweep(adapter, s, planned, out, runner, progress, source, metadata_file, applied)
            result = sweep.run(alignment)
    result.cost["wall_seconds"] = time.perf_counter() - start
    if out is not None:
        result.write(out)
    return result


class _Sweep:
    """One atlas run: the store, the model reference, the stages, and the rows at the end."""

    def __init__(self, adapter, s: AtlasSettings, edits, out, runner, progress: bool, source, metadata_file,
                 base_patch=None):
        from surgery.behaviour.episodes import check_memory
        from surgery.behaviour.evaluation import weights_sha256
        from surgery.behaviour.rollout import prepare

        self.adapter, self.s, self.edits, self.runner, self.progress = adapter, s, edits, runner, progress
        self.out = None if out is None else Path(out)
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise SurgeryError(f"out={str(self.out)!r} exists and is not a directory")
        self.source, self.metadata_file = source, metadata_file
        self.base_patch = base_patch
        """The saved patch applied to the model for this run (None: the model as loaded)."""
        check_memory(s.episodes * (len(edits) + 1) + s.pool, f"this atlas ({len(edits)} edits and a baseline)")
        setting = prepare(adapter, target_return=s.target_return, max_steps=s.max_steps)
        self.env_id, self.env_identity, self.time_limit = setting.env_id, setting.env_identity, setting.time_limit
        self.s = s = replace(s, target_return=setting.target_return, value=edits[0].value)
        self.design = Design(schedule(s.episodes, s.looks), len(edits), s.alpha, s.futility, s.correction, s.spend)
        self.sha = weights_sha256(adapter.model)
        self.warnings = []
        if not self.design.reachable(s.pool):  # the smallest p the design's test can give is above its bound
            d, bound = self.design, self.design.efficacy_p(self.design.K - 1)
            self.warnings.append(
                f"no edit can be significant: against a pool of {s.pool} with {s.episodes} episodes per edit the "
                f"smallest p is {d.smallest_p(s.pool):.2g}, above the last look's bound {bound:.2g}; use a larger "
                "pool or fewer edits" if s.pool else
                f"no edit can be significant: with {s.episodes} pairs the smallest p is 2^{1 - s.episodes}, above "
                f"the last look's bound {bound:.2g} (its share {d.weights[-1]:.2f} of alpha/m = "
                f"{s.alpha:g}/{len(edits)}); use at least {d.pairs_needed()} episodes or fewer edits")

    # -- identity and storage --
    def spec(self) -> dict:
        from surgery.behaviour.evaluation import EDIT_ENGINE, ENGINE_VERSION, SEED_SCHEME

        md, config = self.adapter.metadata, self.adapter.model.config
        # pool 0 (paired) is left out: a paired atlas keeps the fingerprint it had before pools existed
        settings = {k: v for k, v in dataclasses.asdict(self.s).items()
                    if k != "embedding" and not (k == "pool" and v == 0)}
        return {
            "experiment": "atlas", "atlas_version": POOLED_ATLAS_VERSION if self.s.pool else ATLAS_VERSION,
            "engine_version": ENGINE_VERSION,
            "edit_engine": EDIT_ENGINE, "weights_sha256": self.sha,
            "model": {k: getattr(config, k, None) for k in (
                "activation_function", "layer_norm_epsilon", "action_tanh", "n_head",
                "scale_attn_weights", "scale_attn_by_inverse_layer_idx")},
            "metadata": {k: getattr(md, k) for k in (
                "state_mean", "state_std", "return_scale", "context_len", "max_ep_len", "discrete")},
            **self.env_identity, "seed_scheme": SEED_SCHEME, "time_limit": int(self.time_limit),
            "settings": settings, "edits_sha256": _edits_hash(self.edits),
        }

    def _store(self):
        from surgery.behaviour.results_store import ResultsStore, fingerprint
        from surgery.experiments.distribute import EditEpisode

        spec = self.spec()
        self.fingerprint = fingerprint(spec)
        if self.out is None:
            return _MemoryStore()
        from surgery.experiments.edits import tag
        from surgery.files import to_json, write_atomic

        store = ResultsStore(self.out / RESULTS_FILE, spec, EditEpisode, key=("edit", "episode"))
        try:
            write_atomic(self.out / PLAN_FILE, to_json({
                "experiment": "atlas", "fingerprint": self.fingerprint, "spec": spec,
                "design": self.design, "edits": [tag(e) for e in self.edits]}))
        except BaseException:  # also Ctrl-C: the store holds the folder's lock, which must not outlive the call
            store.close()
            raise
        return store

    def _model_ref(self, tmp: Path | None):
        """Where workers load the model: the source it came from if it hashes the same, else a checkpoint saved once."""
        from surgery.behaviour.checkpoint import save_checkpoint
        from surgery.behaviour.evaluation import weights_sha256
        from surgery.experiments.distribute import ModelRef
        from surgery.loading import load

        meta = None if self.metadata_file is None else str(Path(self.metadata_file).resolve())
        if self.source is not None and self.base_patch is None:  # edited weights: workers need the copy
            name = str(self.source)
            path = Path(name).expanduser()
            ref = str(path.resolve()) if path.exists() else name  # workers may run in another directory
            if weights_sha256(load(ref, metadata=meta).model) == self.sha:
                return ModelRef(ref, self.sha, meta)
            self.warnings.append(f"the model differs from {name!r} (edited since it was loaded?): workers load a "
                                 "copy saved with the results")
        where = (self.out if self.out is not None else tmp) / MODEL_DIR
        if _saved_sha(where) != self.sha:  # absent, another model's, or unreadable: (re)write it whole
            from surgery.files import atomic_folder

            with _no_hub_progress_bars(), atomic_folder(where, overwrite=True, replaceable=_a_model_copy) as new:
                save_checkpoint(self.adapter.model, self.adapter.metadata, new)
        return ModelRef(str(where.resolve()), self.sha, None)

    # -- the stages --
    def run(self, alignment_settings) -> Atlas:
        from surgery.analysis.alignment import alignment
        from surgery.analysis.settings import AlignmentSettings
        from surgery.experiments.sequential import Sequential

        store = self._store()  # first: a store of another experiment is refused before any work
        try:
            align = alignment(self.adapter, alignment_settings or AlignmentSettings(), progress=False)
            with tempfile.TemporaryDirectory(prefix="surgery-atlas-") as tmp:
                ref = None if self.runner.serial else self._model_ref(Path(tmp))
                seq = Sequential(self.design)
                done = store.finished()
                steps = self._stages(seq, done, store, ref)
                self.seconds_all_runs = store.seconds()
        finally:
            store.close()
        from surgery.experiments.atlas_rows import build

        return Atlas(**build(self, seq, done, align, steps))

    def _stages(self, seq, done: dict, store, ref) -> dict:
        """Run stage after stage; returns env steps taken now, by edit (-1: baseline)."""
        from surgery import progress as progress_bar
        from surgery.experiments.distribute import Rollout

        d, s = self.design, self.s
        rollout = Rollout(s.seed, s.target_return, s.max_steps, s.dtype, s.lanes)
        N, m = d.looks[-1], d.edits
        steps: dict[int, int] = {}
        live: dict[str, int] = {}
        stored = [len(done)]  # a resumed run's stored episodes: done, but not at this run's rate
        clock = [time.perf_counter()]  # when the last result was stored
        planned = (m + (0 if s.pool else 1)) * N + s.pool  # pooled: the pool instead of a paired baseline
        with progress_bar.progress(total=planned, desc=f"atlas {self.env_id}", unit="ep",
                                   enabled=self.progress, initial=stored[0]) as bar:
            if self.progress:
                bar.set_postfix_str(f"{m} edits, {self.runner.describe()}")

            def show(running: dict) -> None:
                live.clear(), live.update(running)
                bar.update(stored[0] + sum(live.values()) - bar.n)

            def on_result(task, result) -> None:
                new = [r for r in result.records if (r.edit, r.episode) not in done]
                # With the time that produced them (an interrupted run's too): a resumed run's report can say
                # what all its runs took together.
                now = time.perf_counter()
                store.add_many(new, seconds=now - clock[0])
                clock[0] = now
                for r in new:
                    done[(r.edit, r.episode)] = r
                    steps[r.edit] = steps.get(r.edit, 0) + r.length
                live.pop(task.key, None)
                stored[0] += len(new)
                show(live)

            def play(tasks) -> None:
                tasks = [t for t in tasks if not all(job in done for job in t.jobs())]
                if self.runner.serial:
                    self._run_serial(tasks, on_result, live, show)
                else:
                    self.runner.run(tasks, on_result, on_progress=show if self.progress else None)

            if s.pool:  # before any look: every decision is against the whole pool
                play(self._pool_tasks(rollout, ref))
                pool = np.array([done[(-1, j)].episode_return for j in range(N, N + s.pool)])
            for k, n in enumerate(d.looks):
                if not seq.open():
                    break
                lo = d.looks[k - 1] if k else 0
                # Paired: the baseline plays each look's episodes with the edits. Pooled: the pool is all it plays.
                play(self._tasks(k, ([] if s.pool else [-1]) + seq.open(), lo, n, rollout, ref))
                edited = {e: np.array([done[(e, j)].episode_return for j in range(n)]) for e in seq.open()}
                if s.pool:  # unpaired: p and futility from two-sample statistics against the whole pool
                    decisions = seq.look(k, edited, p_values={e: pool_p(x, pool, e, k) for e, x in edited.items()},
                                         pool=pool)
                else:
                    base = np.array([done[(-1, j)].episode_return for j in range(n)])
                    decisions = seq.look(k, {e: x - base for e, x in edited.items()}, baseline=base)
                stopped = sum(v != "continue" for v in decisions.values())
                left = len(seq.open())
                if bar.total is not None:  # the plan shrinks: stopped edits (and a baseline nobody needs) end here
                    bar.total -= stopped * (N - n) + (N - n if left == 0 and not s.pool else 0)
                if self.progress:
                    bar.set_postfix_str(f"look {k + 1}/{d.K} at {n} {'episodes' if s.pool else 'pairs'}: "
                                        f"{left} of {m} edits open")
        return steps

    def _run_serial(self, tasks, on_result, live: dict, show) -> None:
        """In this process: the bar moves per episode."""
        from surgery.experiments.distribute import run_task

        for t in tasks:
            def tick(_record, key=t.key) -> None:
                live[key] = live.get(key, 0) + 1
                show(dict(live))

            on_result(t, run_task(t, self.adapter, on_episode=tick if self.progress else None))

    def _pool_tasks(self, rollout, ref) -> list:
        """The pool: the baseline's episodes [N, N + pool), on seeds no edit plays, in tasks of `lanes` episodes."""
        from surgery.experiments.distribute import Task

        N, step = self.design.looks[-1], self.s.lanes
        return [Task(f"atlas-{self.fingerprint[:12]}-pool-{c}", ref, ((-1, ()),),
                     (lo, min(lo + step, N + self.s.pool)), rollout)
                for c, lo in enumerate(range(N, N + self.s.pool, step))]

    def _tasks(self, k: int, members: list[int], lo: int, hi: int, rollout, ref) -> list:
        """Cut stage k's jobs into tasks of about `lanes` jobs: chunks of edits, each over episodes [lo, hi)."""
        from surgery.experiments.distribute import Task

        per = max(1, self.s.lanes // (hi - lo))
        tasks = []
        for c, i in enumerate(range(0, len(members), per)):
            chunk = tuple((e, () if e < 0 else (self.edits[e],)) for e in members[i:i + per])
            tasks.append(Task(f"atlas-{self.fingerprint[:12]}-look{k}-{c}", ref, chunk, (lo, hi), rollout))
        return tasks


class _MemoryStore:
    """The results store's interface, in memory (an atlas without `out`)."""

    def __init__(self):
        self._rows, self._seconds = {}, 0.0

    def finished(self) -> dict:
        return dict(self._rows)

    def add_many(self, records, seconds: float = 0.0) -> None:
        records = list(records)
        dup = [(r.edit, r.episode) for r in records if (r.edit, r.episode) in self._rows]
        if dup:
            raise SurgeryError(f"(edit, episode) {dup[0]} is already stored")
        self._rows.update({(r.edit, r.episode): r for r in records})
        self._seconds += float(seconds)

    def close(self) -> None:
        pass

    def seconds(self) -> float:
        return self._seconds


@contextmanager
def _no_hub_progress_bars():
    """transformers draws a bar for writing one small shard: not in the middle of the atlas's own."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _saved_sha(folder: Path) -> str | None:
    """The weights hash of the model copy saved for the workers; None when there is none that loads."""
    from surgery.behaviour.evaluation import weights_sha256
    from surgery.loading import load

    if not (folder / "config.json").is_file():
        return None
    try:
        return weights_sha256(load(folder).model)
    except (OSError, ValueError):  # a copy cut short by an interrupted run (SurgeryError is a ValueError)
        return None


def _a_model_copy(folder: Path) -> str | None:
    """Why out/model must not be replaced: None when it holds only a checkpoint's files."""
    extra = sorted(p.name for p in folder.iterdir()
                   if p.name not in ("config.json", "model.safetensors", "metadata.json", "generation_config.json"))
    return None if not extra else f"it holds files a model copy does not ({', '.join(extra)})"


def _edits_hash(edits) -> str:
    from surgery.experiments.edits import tag

    return hashlib.sha256(json.dumps([tag(e) for e in edits], sort_keys=True, default=str).encode()).hexdigest()
