"""One experiment's finished episodes in an SQLite file: one committed row per episode, resumable.

The file belongs to one experiment, named by a fingerprint of its spec (weights hash, edit,
environment, target return, seed scheme, dtype, ...). Reopening it with the same spec returns
the episodes already finished, so an interrupted run continues where it stopped; a different
spec, a corrupt file or a file that is not a results store is refused with a clear message.
Each row is written in its own transaction: a crash leaves whole rows or none. The file uses
SQLite's write-ahead log, so episodes.sqlite-wal and -shm may sit beside it while it is open.

A file that is refused is not changed: it is first read without locks or side files
(`immutable=1`), and only a file that passes is opened for writing. While a store is open its
directory is locked (surgery/runlock.py), so a second run on the same directory is refused at
once, with the holder's pid, host, start time and command.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sqlite3
import time
import typing
from pathlib import Path

from surgery import runlock
from surgery.errors import SurgeryError

__all__ = ["ResultsStore", "fingerprint", "saved", "stored_spec", "RESULTS_FILE"]

RESULTS_FILE = "episodes.sqlite"
SCHEMA_VERSION = 1
_SQL_TYPES = {int: "INTEGER", float: "REAL", bool: "INTEGER", str: "TEXT"}


def fingerprint(spec: dict) -> str:
    """A stable hash of an experiment spec (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _read_only_uri(path: Path) -> str:
    """A URI that reads a results file without writing anything beside it (no -shm/-wal unless it has a log)."""
    wal = Path(f"{path}-wal")
    return Path(path).resolve().as_uri() + "?mode=ro" + ("" if wal.is_file() and wal.stat().st_size else "&immutable=1")


def saved(directory: str | Path, below: int | None = None) -> int:
    """Episodes stored in the results files under `directory` (read-only; 0 where there are none).

    `below`: count only keys below this (the episodes a run of that many would reuse).
    """
    total = 0
    for path in sorted(Path(directory).rglob(RESULTS_FILE)) if Path(directory).is_dir() else []:
        try:
            conn = sqlite3.connect(_read_only_uri(path), uri=True)
            try:
                where = "" if below is None else f" WHERE episode < {int(below)}"
                total += conn.execute(f"SELECT COUNT(*) FROM episodes{where}").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.DatabaseError:
            pass
    return total


def _columns(record_type) -> list[tuple[str, type, bool]]:
    """(name, python type, nullable) for each field of a flat dataclass of int/float/bool/str."""
    hints = typing.get_type_hints(record_type)
    cols = []
    for f in dataclasses.fields(record_type):
        hint = hints[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        nullable = type(None) in typing.get_args(hint)
        base = args[0] if nullable else hint
        if base not in _SQL_TYPES:
            raise TypeError(f"field {f.name}: {hint} cannot be stored; use int, float, bool or str (optionally | None)")
        cols.append((f.name, base, nullable))
    return cols


def stored_spec(path: str | Path) -> dict | None:
    """The spec a results file was made for, read without changing it; None if there is no such readable file."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            row = conn.execute("SELECT value FROM experiment WHERE name = 'spec'").fetchone()
        finally:
            conn.close()
        return None if row is None else json.loads(row[0])
    except (sqlite3.DatabaseError, json.JSONDecodeError):
        return None  # ResultsStore says what is wrong with it


class ResultsStore:
    """Finished episodes of one experiment, keyed by an integer field (the episode) or several ((edit, episode))."""

    def __init__(self, path: str | Path, spec: dict, record_type, key: str | tuple[str, ...] = "episode"):
        self.path = Path(path)
        self.spec = json.loads(json.dumps(spec, sort_keys=True, default=str))
        self.fingerprint = fingerprint(spec)
        self.record_type = record_type
        self.columns = _columns(record_type)
        keys = (key,) if isinstance(key, str) else tuple(key)
        missing = [k for k in keys if k not in [c[0] for c in self.columns]]
        if missing or not keys:
            raise SurgeryError(f"key {missing or key!r} is not a field of {record_type.__name__}")
        self.key = key
        self._keys = keys
        self._inspect()  # refuses a foreign, corrupt or other experiment's file before anything is changed
        self._lock = runlock.acquire(self.path.parent)  # refuses a second run on the same directory
        try:
            self._conn = self._open()
        except BaseException:
            runlock.release(self._lock)
            raise

    def _refuse(self, why: str) -> SurgeryError:
        return SurgeryError(f"{self.path}: {why}. Choose another output directory, "
                            "or move the file away to start afresh.")

    def _inspect(self) -> None:
        """Check an existing file read-only, creating and changing nothing (not even SQLite's -wal/-shm)."""
        if not self.path.exists():
            return
        if not self.path.is_file():
            raise self._refuse("not a file")
        with open(self.path, "rb") as f:
            header = f.read(16)
        if not header:
            return  # an empty file is an empty database: nothing to lose
        if header != b"SQLite format 3\x00":
            raise self._refuse("not a readable results file (not an SQLite database)")
        uri = self.path.resolve().as_uri() + "?mode=ro"
        try:
            # immutable: read the main file only, with no locks and no -shm; enough to tell whose file it is
            conn = sqlite3.connect(uri + "&immutable=1", uri=True)
            try:
                tables = _tables(conn)
                wal = Path(f"{self.path}-wal")
                if not tables and wal.is_file() and wal.stat().st_size:
                    # created by a run killed before its first checkpoint: the tables are in the log
                    conn.close()
                    conn = sqlite3.connect(uri, uri=True)
                    tables = _tables(conn)
                if tables:
                    self._check(conn, tables)
            finally:
                conn.close()
        except sqlite3.DatabaseError as e:
            raise self._refuse(f"not a readable results file (corrupt or not SQLite: {e})") from None

    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None)  # explicit transactions below
            try:
                tables = _tables(conn)
                if tables:  # checked again, now that no other run can be creating it
                    self._check(conn, tables)
                # WAL: a committed row survives the process being killed, without an fsync per episode
                # (only a power cut can drop the last few commits; the file stays consistent either way).
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if not tables:
                    self._create(conn)
            except BaseException:
                conn.close()
                raise
        except sqlite3.DatabaseError as e:
            raise self._refuse(f"not a readable results file (corrupt or not SQLite: {e})") from None
        return conn

    def _check(self, conn: sqlite3.Connection, tables: set[str]) -> None:
        """Refuse a file that is corrupt, foreign, or another experiment's (raises; closes nothing)."""
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise sqlite3.DatabaseError(check)
        if tables != {"experiment", "episodes"}:
            raise self._refuse(f"not a surgery results file (tables {sorted(tables)})")
        self._check_experiment(conn)

    def _create(self, conn: sqlite3.Connection) -> None:
        cols = ", ".join(f"{name} {_SQL_TYPES[t]}{'' if nullable else ' NOT NULL'}"
                         for name, t, nullable in self.columns)
        # Schema and identity are created in one transaction: a crash leaves an empty file, never half a header.
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("CREATE TABLE experiment (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        key = ", ".join(self._keys)
        conn.execute(f"CREATE TABLE episodes ({cols}, finished_at REAL NOT NULL, PRIMARY KEY ({key}))")
        conn.executemany(
            "INSERT INTO experiment VALUES (?, ?)",
            [("schema_version", str(SCHEMA_VERSION)), ("fingerprint", self.fingerprint),
             ("spec", json.dumps(self.spec, sort_keys=True)), ("record_type", self.record_type.__name__),
             ("created", time.strftime("%Y-%m-%dT%H:%M:%S"))],
        )
        conn.execute("COMMIT")

    def _check_experiment(self, conn: sqlite3.Connection) -> None:
        meta = dict(conn.execute("SELECT name, value FROM experiment"))
        if meta.get("schema_version") != str(SCHEMA_VERSION):
            raise self._refuse(f"results schema version {meta.get('schema_version')!r}, "
                               f"this tool reads {SCHEMA_VERSION}")
        if meta.get("fingerprint") != self.fingerprint:
            try:
                theirs = json.loads(meta.get("spec", "{}"))
            except json.JSONDecodeError:
                theirs = {}
            diff = [f"{k}: file has {theirs.get(k)!r}, this run has {self.spec.get(k)!r}"
                    for k in sorted(set(theirs) | set(self.spec)) if theirs.get(k) != self.spec.get(k)]
            why = "; ".join(diff) or "fingerprint differs"
            raise self._refuse(f"holds results of another experiment ({why})")
        names = [r[1] for r in conn.execute("PRAGMA table_info(episodes)")]
        expected = [c[0] for c in self.columns] + ["finished_at"]
        if names != expected:
            raise self._refuse(f"episodes table has columns {names}, expected {expected}")

    def _key_of(self, record_or_values):
        get = record_or_values.get if isinstance(record_or_values, dict) else (
            lambda k: getattr(record_or_values, k))
        return get(self.key) if isinstance(self.key, str) else tuple(get(k) for k in self._keys)

    def finished(self) -> dict:
        """The records already stored, by key (a tuple of the key fields' values for a composite key)."""
        names = [c[0] for c in self.columns]
        order = ", ".join(self._keys)
        rows = self._conn.execute(f"SELECT {', '.join(names)} FROM episodes ORDER BY {order}").fetchall()
        out = {}
        for row in rows:
            values = {n: (None if v is None else t(v)) for (n, t, _), v in zip(self.columns, row)}
            out[self._key_of(values)] = self.record_type(**values)
        return out

    def add(self, record) -> None:
        """Store one finished record in its own transaction; a key already stored is an error."""
        self.add_many([record])

    def add_many(self, records, seconds: float = 0.0) -> None:
        """Store records in one transaction: all of them or, on any error (a key already stored), none.

        seconds: the playing time that produced them, added in the same transaction to the total kept with the
        episodes (`seconds()`): a resumed experiment's report can then say what all its runs took."""
        records, rows = list(records), []
        for record in records:
            values = [getattr(record, name) for name, _, _ in self.columns]
            missing = [name for (name, _, nullable), v in zip(self.columns, values) if v is None and not nullable]
            if missing:
                raise SurgeryError(f"record has no value for {missing}: {record!r}")
            rows.append(values)
        names = ", ".join([c[0] for c in self.columns] + ["finished_at"])
        marks = ", ".join("?" * (len(self.columns) + 1))
        now = time.time()
        with self._transaction():
            for record, values in zip(records, rows):
                try:
                    self._conn.execute(f"INSERT INTO episodes ({names}) VALUES ({marks})", [*values, now])
                except sqlite3.IntegrityError as e:
                    if "UNIQUE" in str(e):
                        where = ", ".join(f"{k} {getattr(record, k)}" for k in self._keys)
                        raise SurgeryError(f"{self.path}: {where} is already stored") from None
                    raise
            if seconds:
                total = self.seconds() + float(seconds)
                self._conn.execute("INSERT OR REPLACE INTO experiment VALUES ('seconds', ?)", (repr(total),))

    @contextlib.contextmanager
    def _transaction(self):
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def __len__(self) -> int:
        return self._conn.execute("SELECT COUNT(*) FROM episodes").fetchone()[0]

    def seconds(self) -> float:
        """Playing time of every run that filled this file (0 for files written before it was kept)."""
        row = self._conn.execute("SELECT value FROM experiment WHERE name = 'seconds'").fetchone()
        return 0.0 if row is None else float(row[0])

    def close(self) -> None:
        try:
            self._conn.close()
        finally:
            runlock.release(self._lock)
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
