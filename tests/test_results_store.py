"""The SQLite results store: one committed row per episode, resume after a kill, refusal of foreign files."""
from __future__ import annotations

import dataclasses
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from surgery.behaviour.evaluation import EpisodeRecord, evaluate
from surgery.behaviour.hf_loop import untrained_dt
from surgery.behaviour.results_store import RESULTS_FILE, ResultsStore, fingerprint
from surgery.core.threads import torch_threads

ROOT = Path(__file__).resolve().parents[1]


def record(i: int, **kw) -> EpisodeRecord:
    base = dict(episode=i, seed=100 + i, episode_return=1.5 * i, score=None, length=10 + i, failed=i % 2 == 0,
                failure_step=10 + i if i % 2 == 0 else None, terminated=i % 2 == 0, truncated=i % 2 == 1)
    return EpisodeRecord(**{**base, **kw})


def test_round_trip_and_reopen(tmp_path):
    path = tmp_path / RESULTS_FILE
    with ResultsStore(path, {"a": 1}, EpisodeRecord) as store:
        for i in range(3):
            store.add(record(i))
        assert len(store) == 3
    with ResultsStore(path, {"a": 1}, EpisodeRecord) as store:
        assert store.finished() == {i: record(i) for i in range(3)}


@dataclasses.dataclass(frozen=True)
class EditEpisode(EpisodeRecord):
    edit: int = -1


def test_a_composite_key_and_all_or_nothing_batches(tmp_path):
    """The atlas keys episodes by (edit, episode) and writes a finished task's records in one transaction."""
    path = tmp_path / RESULTS_FILE
    rows = [EditEpisode(**dataclasses.asdict(record(j)), edit=e) for e in (-1, 0, 3) for j in range(2)]
    with ResultsStore(path, {"a": 1}, EditEpisode, key=("edit", "episode")) as store:
        store.add_many(rows[:4], seconds=2.5)
        with pytest.raises(ValueError, match="edit 0, episode 1 is already stored"):
            store.add_many(rows[4:] + [rows[3]], seconds=100.0)  # one duplicate: none of the batch, nor its time
        assert len(store) == 4 and store.seconds() == 2.5
        store.add_many(rows[4:], seconds=1.0)
    with ResultsStore(path, {"a": 1}, EditEpisode, key=("edit", "episode")) as store:
        assert store.finished() == {(r.edit, r.episode): r for r in rows}
        assert store.seconds() == 3.5  # the playing time of every batch, kept with the episodes
    with pytest.raises(ValueError, match="not a field"):
        ResultsStore(tmp_path / "x.sqlite", {}, EditEpisode, key=("edit", "lane"))


def test_a_key_is_never_stored_twice(tmp_path):
    with ResultsStore(tmp_path / RESULTS_FILE, {"a": 1}, EpisodeRecord) as store:
        store.add(record(0))
        with pytest.raises(ValueError, match="already stored"):
            store.add(record(0, episode_return=9.0))
        assert store.finished()[0] == record(0)


def test_a_failed_write_leaves_no_row(tmp_path):
    with ResultsStore(tmp_path / RESULTS_FILE, {"a": 1}, EpisodeRecord) as store:
        store.add(record(0))
        with pytest.raises(ValueError, match="no value for"):
            store.add(record(1, length=None))
        with pytest.raises(sqlite3.Error):
            store.add(record(2, seed=[1, 2]))  # fails inside the transaction, which is rolled back whole
        assert list(store.finished()) == [0]
        store.add(record(2))
        assert list(store.finished()) == [0, 2]


def test_other_experiment_is_refused_naming_the_difference(tmp_path):
    path = tmp_path / RESULTS_FILE
    ResultsStore(path, {"env_id": "Hopper-v5", "seed": 0}, EpisodeRecord).close()
    want = r"another experiment \(env_id: file has 'Hopper-v5', this run has 'HalfCheetah-v5'\)"
    with pytest.raises(ValueError, match=want):
        ResultsStore(path, {"env_id": "HalfCheetah-v5", "seed": 0}, EpisodeRecord)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign"])
def test_corrupt_or_foreign_file_is_refused(tmp_path, damage):
    path = tmp_path / RESULTS_FILE
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "foreign":
        sqlite3.connect(path).execute("CREATE TABLE users (name TEXT)").connection.commit()
    else:
        with ResultsStore(path, {"a": 1}, EpisodeRecord) as store:
            for i in range(100):
                store.add(record(i))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable results file|not a surgery results file"):
        ResultsStore(path, {"a": 1}, EpisodeRecord)


def test_fingerprint_is_order_independent():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_evaluate_refuses_another_experiments_directory(tmp_path):
    model, md = untrained_dt("Hopper-v5")
    evaluate(model, episodes=2, seed=0, metadata=md, progress=False, max_steps=10, out=tmp_path)
    with pytest.raises(ValueError, match="target_return"):
        evaluate(model, episodes=2, seed=0, metadata=md, progress=False, max_steps=10, out=tmp_path,
                 target_return=123.0)
    with torch.no_grad():
        model.encoder.h[0].mlp.c_fc.weight[0, 0] += 1.0  # an edited model is another experiment
    with pytest.raises(ValueError, match="weights_sha256"):
        evaluate(model, episodes=2, seed=0, metadata=md, progress=False, max_steps=10, out=tmp_path)


def test_exception_after_k_episodes_then_resume(tmp_path, monkeypatch):
    model, md = untrained_dt("Hopper-v5")
    kwargs = dict(episodes=8, seed=3, metadata=md, progress=False, max_steps=25, batch_size=1, out=tmp_path)
    real_add = ResultsStore.add
    calls = []

    def flaky_add(self, rec):
        if len(calls) == 3:
            raise RuntimeError("injected crash")
        real_add(self, rec)
        calls.append(rec.episode)

    monkeypatch.setattr(ResultsStore, "add", flaky_add)
    with pytest.raises(RuntimeError, match="injected"):
        evaluate(model, **kwargs)
    monkeypatch.setattr(ResultsStore, "add", real_add)
    with ResultsStore(tmp_path / RESULTS_FILE, _spec_of(tmp_path), EpisodeRecord) as store:
        assert sorted(store.finished()) == [0, 1, 2]
    resumed = evaluate(model, **kwargs)
    fresh = evaluate(model, **{**kwargs, "out": None})
    assert resumed.records == fresh.records  # same episodes, none lost, none twice


def _spec_of(directory: Path) -> dict:
    import json

    con = sqlite3.connect(directory / RESULTS_FILE)
    spec = json.loads(dict(con.execute("SELECT name, value FROM experiment"))["spec"])
    con.close()
    return spec


CHILD = textwrap.dedent("""
    import sys
    import torch
    torch.set_num_threads(1)  # records are bitwise reproducible for one thread count, not across counts
    from surgery.behaviour.evaluation import evaluate
    from surgery.behaviour.hf_loop import untrained_dt
    model, md = untrained_dt("HalfCheetah-v5")
    evaluate(model, episodes={episodes}, seed=5, metadata=md, progress=False, max_steps=30, batch_size=1,
             out=sys.argv[1])
""")


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        n = con.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]
        con.close()
        return n
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_mid_run_then_resume(tmp_path):
    episodes = 30
    path = tmp_path / RESULTS_FILE
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(episodes=episodes), str(tmp_path)], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while _rows(path) < 3 and child.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_before = _rows(path)
    assert 3 <= done_before < episodes, (done_before, child.stderr.read().decode()[-2000:])

    model, md = untrained_dt("HalfCheetah-v5")
    started = time.time()
    with torch_threads(1):  # as in the child
        resumed = evaluate(model, episodes=episodes, seed=5, metadata=md, progress=False, max_steps=30,
                           batch_size=1, out=tmp_path)
    assert [r.episode for r in resumed.records] == list(range(episodes))
    con = sqlite3.connect(path)
    rows = con.execute("SELECT episode, finished_at FROM episodes").fetchall()
    con.close()
    assert len(rows) == episodes == len({e for e, _ in rows})
    assert sum(t >= started for _, t in rows) == episodes - done_before  # only the missing ones were run
    with torch_threads(1):
        fresh = evaluate(model, episodes=episodes, seed=5, metadata=md, progress=False, max_steps=30, batch_size=1)
    assert resumed.records == fresh.records


def test_asking_for_more_or_fewer_episodes_reuses_the_stored_ones(tmp_path):
    model, md = untrained_dt("Hopper-v5")
    kw = dict(seed=0, metadata=md, progress=False, max_steps=15, out=tmp_path, batch_size=1)
    first = evaluate(model, episodes=3, **kw)
    more = evaluate(model, episodes=5, **kw)
    assert more.records[:3] == first.records
    fewer = evaluate(model, episodes=2, **kw)
    assert fewer.records == first.records[:2]


def test_record_fields_are_storable():
    # Every EpisodeRecord field maps to an SQLite column (guards against adding an unstorable field).
    from surgery.behaviour.results_store import _columns

    assert [c[0] for c in _columns(EpisodeRecord)] == [f.name for f in dataclasses.fields(EpisodeRecord)]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _foreign(path: Path, kind: str) -> None:
    if kind == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif kind in ("foreign", "foreign-wal"):
        con = sqlite3.connect(path)
        if kind == "foreign-wal":
            con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE users (name TEXT)")
        con.execute("INSERT INTO users VALUES ('ada')")
        con.commit()
        con.close()
    else:  # another experiment's store, closed cleanly
        with ResultsStore(path, {"env_id": "Hopper-v5"}, EpisodeRecord) as store:
            store.add(record(0))


@pytest.mark.parametrize("kind", ["garbage", "foreign", "foreign-wal", "other-experiment"])
def test_a_refused_file_is_not_touched(tmp_path, kind):
    """Refused before anything changes: same bytes, no -wal/-shm, no lock file left behind."""
    path = tmp_path / RESULTS_FILE
    _foreign(path, kind)
    before = _files(tmp_path)
    with pytest.raises(ValueError, match="not a readable results file|not a surgery results file|another experiment"):
        ResultsStore(path, {"env_id": "HalfCheetah-v5"}, EpisodeRecord)
    assert _files(tmp_path) == before


HOLDER = textwrap.dedent("""
    import sys, time
    from surgery.behaviour.evaluation import EpisodeRecord
    from surgery.behaviour.results_store import ResultsStore
    store = ResultsStore(sys.argv[1], {"a": 1}, EpisodeRecord)
    print("holding", flush=True)
    time.sleep(120)
""")


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path):
    path = tmp_path / RESULTS_FILE
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "holding", child.stderr.read()
        with pytest.raises(ValueError, match=rf"{tmp_path} is in use by another run \(pid {child.pid} on "
                                             rf"\S+, started [0-9-]+ [0-9:]+, command: -c {path}\)"):
            ResultsStore(path, {"a": 1}, EpisodeRecord)
    finally:
        child.kill()  # SIGKILL: no cleanup; the kernel drops the flock
        child.wait()
    with ResultsStore(path, {"a": 1}, EpisodeRecord) as store:  # a killed holder does not block
        store.add(record(0))
    assert not (tmp_path / ".surgery.lock").exists()  # removed when the run ends
