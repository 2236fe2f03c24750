"""The atlas on Dask: a 2-worker LocalCluster gives the in-process records exactly, loses nothing when a worker is
killed mid-run, refuses a model whose weights differ, and is always closed."""
from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time

import pytest

import surgery
from surgery.experiments.atlas import RESULTS_FILE, atlas
from surgery.experiments.distribute import ModelRef, Rollout, Runner, Task, run_task
from tests.experiments_models import cartpole_dt
from tests.test_atlas import SMALL, _stored

pytest.importorskip("distributed")

# Fewer edits and longer episodes than test_atlas's: tasks that take long enough to be caught running.
KILL = {**SMALL, "vectors": 2, "max_steps": 150}


@pytest.fixture(scope="module")
def cluster():
    with Runner(workers=2) as runner:
        yield runner


@pytest.fixture(scope="module")
def serial(balancer, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    return atlas(balancer, out=out, workers=0, progress=False, **KILL), out


def test_distributed_records_are_the_serial_ones(balancer, cluster, serial, tmp_path):
    a, out = serial
    b = atlas(balancer, out=tmp_path, client=cluster.client, progress=False, **KILL)
    assert _stored(tmp_path) == _stored(out)
    assert list(b.rows["p"]) == list(a.rows["p"]) and b.cost["where"].startswith("2 Dask workers")
    assert (tmp_path / "model" / "model.safetensors").is_file()  # a model given in Python is saved for the workers


def test_workers_run_the_atlas_of_an_edited_model(balancer, cluster, tmp_path):
    """With edits= the workers must play the edited weights: the copy saved for them hashes as the edited model,
    and their records are the in-process ones."""
    from surgery.behaviour.evaluation import weights_sha256
    from surgery.core.patching import Edit, Patch

    folder = tmp_path / "edit"
    Patch(balancer, [Edit(0, "V", 0, op="zero")]).save(folder)
    small = {**KILL, "vectors": 1, "max_steps": 40}
    here = atlas(balancer, out=tmp_path / "serial", workers=0, progress=False, edits=folder, **small)
    there = atlas(balancer, out=tmp_path / "dask", client=cluster.client, progress=False, edits=folder,
                  source="the-balancer", **small)  # a source that cannot hold the edited weights
    assert _stored(tmp_path / "dask") == _stored(tmp_path / "serial")
    assert there.model["weights_sha256"] == here.model["weights_sha256"] != weights_sha256(balancer.model)
    assert weights_sha256(surgery.load(tmp_path / "dask" / "model").model) == here.model["weights_sha256"]
    assert not there.warnings


def _count(path) -> int:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def test_a_worker_killed_mid_run_loses_nothing_and_counts_nothing_twice(balancer, cluster, serial, tmp_path):
    _, out = serial
    client = cluster.client
    killed = {}

    def kill_a_busy_worker():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            busy = {w: keys for w, keys in client.processing().items() if keys}
            if busy and _count(tmp_path / RESULTS_FILE) > 0:  # mid-run: something stored, a task running
                worker, keys = next(iter(busy.items()))
                pid = client.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                killed.update(worker=worker, keys=list(keys), pid=pid)
            time.sleep(0.02)

    thread = threading.Thread(target=kill_a_busy_worker, daemon=True)
    thread.start()
    atlas(balancer, out=tmp_path, client=client, progress=False, **KILL)
    thread.join(timeout=5)
    assert killed, "no task was caught running"
    assert _stored(tmp_path) == _stored(out)  # the killed task ran again elsewhere: every job once, as in one process
    client.wait_for_workers(2, timeout=60)  # the nanny restarts the killed worker for the tests after this one


def test_a_worker_refuses_a_model_whose_weights_differ(balancer, tmp_path):
    model, md = cartpole_dt(seed=1)  # the same wiring, other random weights elsewhere
    surgery.load(model, metadata=md)
    from surgery.behaviour.checkpoint import save_checkpoint

    save_checkpoint(model, md, tmp_path)
    from surgery.behaviour.evaluation import weights_sha256

    task = Task("t", ModelRef(str(tmp_path), weights_sha256(balancer.model)), ((-1, ()),), (0, 1),
                Rollout(0, 500.0, 5, "float32", 4))
    with pytest.raises(ValueError, match="every worker must load the same checkpoint"):
        run_task(task)


def test_a_cluster_started_here_is_closed_on_an_interrupt():
    runner = Runner(workers=1)
    with pytest.raises(KeyboardInterrupt):
        with runner:
            cluster = runner._own[0]
            raise KeyboardInterrupt
    assert runner.client is None and not runner._own and cluster.status.name == "closed"


def test_workers_report_progress_while_a_task_runs(balancer, cluster, tmp_path):
    """The bar moves inside long tasks: each worker tells the client every 2 s how many episodes it finished."""
    from surgery.behaviour.checkpoint import save_checkpoint
    from surgery.behaviour.evaluation import weights_sha256
    from surgery.experiments.atlas import plan_edits
    from surgery.experiments.settings import AtlasSettings

    save_checkpoint(balancer.model, balancer.metadata, tmp_path)
    ref = ModelRef(str(tmp_path), weights_sha256(balancer.model))
    edits = plan_edits(balancer, AtlasSettings(weights=("K",), vectors=4, blocks=(1,)))
    tasks = [Task(f"progress-{k}", ref, tuple((i, (e,)) for i, e in enumerate(edits)), (4 * k, 4 * k + 4),
                  Rollout(0, 500.0, 400, "float32", 4)) for k in range(2)]
    seen, results = [], {}
    cluster.run(tasks, lambda task, result: results.__setitem__(task.key, result),
                on_progress=lambda live: seen.append(dict(live)))
    assert {k: len(r.records) for k, r in results.items()} == {t.key: 16 for t in tasks}
    assert any(0 < n < 16 for live in seen for n in live.values()), seen  # counts from inside running tasks
