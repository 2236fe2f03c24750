"""Running an atlas's tasks: in this process, or on a Dask cluster (an in-process LocalCluster by default).

A task is a small picklable spec: which model (a zoo name or checkpoint directory and its weights'
SHA-256), which edits (at most a few dozen `Edit`s), which episodes, the seed and rollout settings.
A worker loads the model once per process (cached by reference and hash), refuses a model whose
weights hash differs from the client's, plays the task's jobs (edit, episode) through the lane
engine, and returns their records. The client alone writes results. A task's records depend only
on its spec, so the serial path, any number of workers, and a task rerun after its worker died
all give the same records.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

from surgery.behaviour.episodes import EpisodeRecord
from surgery.errors import SurgeryError

if TYPE_CHECKING:  # torch is imported where a task runs, not where the command line connects
    from surgery.core.patching import Edit

__all__ = ["ModelRef", "Rollout", "Task", "TaskResult", "EditEpisode", "run_task", "Runner", "EVENT_TOPIC"]

EVENT_TOPIC = "surgery-atlas-progress"
CONNECT_TIMEOUT_S = 5
WORKER_ENVIRON = {
    # One thread per worker process: the processes are the parallelism.
    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
    # Threads that spin while waiting starve each other on shared cores (see surgery/cli/main.py).
    "OMP_WAIT_POLICY": "PASSIVE",
    # Not Dask's default MALLOC_TRIM_THRESHOLD_=65536: see _tune_malloc.
}
"""The environment of the worker processes of a LocalCluster started here, set before they start."""


@dataclass(frozen=True)
class EditEpisode(EpisodeRecord):
    """An episode played under an edit: `edit` indexes the atlas's edits, -1 is the unedited model."""

    edit: int = -1


@dataclass(frozen=True)
class ModelRef:
    """How a worker finds the model: a zoo name or checkpoint directory, and the SHA-256 its weights must have."""

    source: str
    sha256: str
    metadata: str | None = None
    """A metadata JSON file for a checkpoint directory without metadata.json (as `--metadata`)."""


@dataclass(frozen=True)
class Rollout:
    """How every episode is played (the same for every task of an atlas)."""

    seed: int
    target_return: float
    max_steps: int | None
    dtype: str
    lanes: int


@dataclass(frozen=True)
class Task:
    """Episodes [start, stop) of each listed edit (index, its edits applied together; -1 with () is the baseline)."""

    key: str
    model: ModelRef | None
    edits: tuple[tuple[int, tuple["Edit", ...]], ...]
    episodes: tuple[int, int]
    rollout: Rollout

    def jobs(self) -> list[tuple[int, int]]:
        """(edit, episode) pairs in the order the engine starts them: episode-major, so the baseline's and
        every edit's episode j sit in neighbouring rows (the lane engine then rounds them alike)."""
        return [(e, j) for j in range(*self.episodes) for e, _ in self.edits]


@dataclass(frozen=True)
class TaskResult:
    key: str
    records: list
    """EditEpisode per job."""
    env_steps: int
    seconds: float
    worker: str
    """host:pid that ran it."""


# ---- the worker side -----------------------------------------------------------------------------
_MODELS: dict = {}
_LOCK = threading.Lock()


def _in_dask_worker() -> bool:
    try:
        from distributed import get_worker

        get_worker()
        return True
    except (ImportError, ValueError):
        return False


def _load(ref: ModelRef):
    """The model of `ref`, loaded once per process and checked against the client's weights hash."""
    key = (ref.source, ref.sha256, ref.metadata)
    with _LOCK:
        hit = _MODELS.get(key)
        if hit is not None:
            return hit
        import torch

        from surgery.behaviour.evaluation import weights_sha256
        from surgery.loading import load

        if _in_dask_worker():
            # One thread per worker process: the workers are the parallelism (a second BLAS thread per
            # process only contends for the same cores).
            torch.set_num_threads(1)
            _tune_malloc()
        adapter = load(ref.source, metadata=ref.metadata)
        found = weights_sha256(adapter.model)
        if found != ref.sha256:
            raise SurgeryError(f"the model {ref.source!r} on {_where()} has weights {found[:16]}..., the client's has "
                               f"{ref.sha256[:16]}...: every worker must load the same checkpoint")
        _MODELS.clear()  # one model per worker process at a time
        _MODELS[key] = adapter
        return adapter


def _tune_malloc() -> None:
    """Undo the malloc setting Dask's nanny gives its workers (glibc only; elsewhere nothing to undo).

    The nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536. Setting any glibc malloc threshold
    turns off its dynamic mmap threshold, so every allocation over 128 KiB is mmapped and unmapped
    afresh, and the rollout makes such tensors every step: the same task took 1.5-2.2x the CPU time
    (measured in one process with the variable set: 9.5-11.3 s, without it or after this call:
    5.7-6.9 s). Thresholds of 32 MiB (mmap, glibc's maximum) and 64 MiB (trim) let freed memory be
    reused. A LocalCluster started here does not set the variable; external workers may.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 32 * 2**20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 2**20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _where() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def run_task(task: Task, model=None, on_episode: Callable[[EditEpisode], None] | None = None) -> TaskResult:
    """Play a task's jobs; `model` (a loaded adapter) skips loading `task.model` (the in-process path)."""
    import torch

    start = time.perf_counter()
    adapter = model if model is not None else _load(task.model)
    edited = [(e, patch) for e, patch in task.edits if e >= 0]
    local = {e: i for i, (e, _) in enumerate(edited)}
    index = {i: e for e, i in local.items()}
    jobs = [(local[e] if e >= 0 else -1, j) for e, j in task.jobs()]
    records: list[EditEpisode] = []
    report = _reporter(task.key) if on_episode is None and _in_dask_worker() else None

    def finish(job, record) -> None:
        e = job[0]
        r = EditEpisode(**{f.name: getattr(record, f.name) for f in dataclasses.fields(EpisodeRecord)},
                        edit=index[e] if e >= 0 else -1)
        records.append(r)
        if on_episode is not None:
            on_episode(r)
        if report is not None:
            report(len(records))

    from surgery.behaviour.rollout import run_lanes

    ro = task.rollout
    stats = run_lanes(adapter, [list(patch) for _, patch in edited], jobs, seed=ro.seed, on_finish=finish,
                      target_return=ro.target_return, max_steps=ro.max_steps, dtype=getattr(torch, ro.dtype),
                      lanes=ro.lanes)
    if report is not None:
        report(len(records), force=True)
    return TaskResult(task.key, records, int(stats.env_steps), time.perf_counter() - start, _where())


def _reporter(key: str, every: float = 2.0):
    """Tell the client (through a Dask event) how many of a task's episodes are done, at most every `every` s."""
    from distributed import get_worker

    worker, last = get_worker(), [0.0]

    def report(done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - last[0] >= every:
            last[0] = now
            worker.log_event(EVENT_TOPIC, {"key": key, "done": done})

    return report


# ---- the client side -----------------------------------------------------------------------------
class Runner:
    """Where tasks run: this process (`workers=0`), a LocalCluster it starts, or an existing Dask cluster.

    Use it as a context manager: a cluster it started is closed on the way out, also on Ctrl-C or an
    error; a `client` given by the caller is left open.
    """

    def __init__(self, client=None, scheduler: str | None = None, workers: int | None = None):
        if sum(x is not None for x in (client, scheduler)) > 1 or (workers == 0 and (client or scheduler)):
            raise SurgeryError("give at most one of client=, scheduler= or workers=0 (in-process)")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise SurgeryError(f"workers={workers!r} must be a non-negative integer (0: in this process)")
        self.client, self.scheduler, self.workers = client, scheduler, workers
        self._own: list = []  # what __enter__ started, closed in reverse order on the way out

    @property
    def serial(self) -> bool:
        return self.client is None

    def describe(self) -> str:
        if self.client is None:
            return "in this process"
        n = len(self.client.scheduler_info().get("workers", {}))
        where = self.scheduler or getattr(self.client, "scheduler", None) and self.client.scheduler.address
        return f"{n} Dask worker{'s' * (n != 1)} at {where}"

    def __enter__(self) -> "Runner":
        if self.client is not None or self.workers == 0:
            return self
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise SurgeryError("running on Dask needs dask[distributed]: pip install 'svd-surgery[dist]' "
                               "(or workers=0 / --workers 0 to run in this process)") from None
        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
            except (OSError, TimeoutError, ValueError) as e:
                why = str(e).splitlines()[0] if str(e) else "no answer"
                raise SurgeryError(f"cannot reach the Dask scheduler at {self.scheduler} ({type(e).__name__}: {why})"
                                   ) from None
            self._own.append(self.client)
            return self
        import dask

        n = self.workers or os.cpu_count() or 1
        # The worker's statistical profiler samples the running task's stack every 10 ms, under the GIL.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": WORKER_ENVIRON,
                              "distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                                   silence_logs=logging.ERROR)
        self._own.append(cluster)
        try:
            self.client = Client(cluster)
        except BaseException:  # also Ctrl-C: `with` calls no __exit__ when __enter__ fails, so close the workers here
            self.close()
            raise
        self._own.append(self.client)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close what this runner started (client first, then its cluster)."""
        started = bool(self._own)
        while self._own:
            thing = self._own.pop()
            try:
                thing.close()
            except Exception:  # closing is best effort: a dead scheduler must not hide the real error
                pass
        if started:
            self.client = None

    def run(self, tasks: Sequence[Task], on_result: Callable[[Task, TaskResult], None], *, model=None,
            on_progress: Callable[[dict], None] | None = None) -> None:
        """Run every task; `on_result(task, result)` on this thread as each finishes (in completion order).

        model: the loaded adapter, for the in-process path. on_progress({task key: episodes done}) is
        called now and then with what running tasks have finished so far (Dask only).
        """
        if not tasks:
            return
        if self.serial:
            for t in tasks:
                on_result(t, run_task(t, model))
            return
        self._run_dask(list(tasks), on_result, on_progress)

    def _run_dask(self, tasks, on_result, on_progress) -> None:
        from distributed import as_completed

        by_key = {t.key: t for t in tasks}
        live: dict[str, int] = {}
        if on_progress is not None:
            self.client.subscribe_topic(EVENT_TOPIC, lambda event: live.__setitem__(event[1]["key"],
                                                                                     event[1]["done"]))
        futures = [self.client.submit(run_task, t, key=t.key, pure=False, retries=0) for t in tasks]
        try:
            done = as_completed(futures)
            while not done.is_empty():
                if not done.has_ready():
                    time.sleep(0.2)
                    if on_progress is not None:
                        on_progress(dict(live))
                    continue
                for fut in done.next_batch(block=False):
                    result = fut.result()  # a task's error is raised here, with the worker's traceback
                    live.pop(result.key, None)
                    on_result(by_key[result.key], result)
                    fut.release()
        finally:
            self.client.cancel([f for f in futures if not f.done()])
            if on_progress is not None:
                try:
                    self.client.unsubscribe_topic(EVENT_TOPIC)
                except Exception:
                    pass
