"""One run at a time per output: an exclusive lock file held for the run, naming its holder.

`with hold(directory):` takes an exclusive `flock` on `directory/.surgery.lock`
and writes who holds it (pid, host, start time, command) into the file. A second run on the same
directory is refused at once with a SurgeryError naming that holder, instead of the two
interleaving their writes or one dying half-way. The kernel drops a flock when its holder dies,
however it dies, so a lock left by a killed run never blocks the next one (no pid files to go
stale). Holding is re-entrant within a process (a command that locks its output directory can
call a library function that locks the same one). The file is removed when the last hold ends,
and so are the directories the lock created if nothing was written in them; the inode check in
`_open_locked` makes removing the file safe against a run that opened it just before.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from surgery.errors import SurgeryError

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None

__all__ = ["hold", "acquire", "release", "holder", "LOCK_NAME"]

LOCK_NAME = ".surgery.lock"

_held: dict[str, list] = {}  # real path of the lock file -> [fd, holds, directories it created], this process
_registry = threading.Lock()


def _describe(info: dict) -> str:
    if not info:
        return "details not written yet"
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}, "
            f"command: {info.get('command')}")


def holder(directory: str | Path) -> dict:
    """What the lock file of `directory` says about its holder ({} when there is none or it is unreadable)."""
    try:
        return json.loads((Path(directory) / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _open_locked(path: Path) -> int | None:
    """An fd of `path` holding its exclusive flock, or a SurgeryError naming the holder."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SurgeryError(f"{path.parent} is in use by another run ({_describe(holder(path.parent))}); "
                               "wait for it to finish, or choose another output directory") from None
        except OSError as e:  # a filesystem without flock (some network mounts): run unlocked
            os.close(fd)
            warnings.warn(f"cannot lock {path} ({e}); concurrent runs on this directory are not prevented",
                          stacklevel=4)
            return None
        try:
            mine, now = os.fstat(fd), os.stat(path)
            same = (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one


def acquire(directory: str | Path) -> str | None:
    """Take the lock of `directory` (created if missing); returns the token `release` needs."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SurgeryError(f"{directory} exists and is not a directory; give an output directory")
    created = [p for p in [directory, *directory.parents] if not p.exists()]  # innermost first
    directory.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        return None
    path = directory / LOCK_NAME
    key = os.path.realpath(path)
    with _registry:
        entry = _held.get(key)
        if entry is None:
            try:
                fd = _open_locked(path)
            except BaseException:
                _remove_empty(created)
                raise
            entry = _held[key] = [fd, 0, created]
            if fd is not None:
                info = {"pid": os.getpid(), "host": socket.gethostname(),
                        "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        entry[1] += 1
    return key


def release(token: str | None) -> None:
    """End one `acquire`; the last one removes the lock file and drops the lock."""
    if token is None:
        return
    with _registry:
        entry = _held[token]
        entry[1] -= 1
        if entry[1]:
            return
        del _held[token]
        if entry[0] is not None:
            try:
                os.unlink(token)  # while still locked: a run that opened this inode meanwhile sees it gone
            except FileNotFoundError:
                pass
            os.close(entry[0])
        _remove_empty(entry[2])  # a run that wrote nothing (refused, failed early) leaves no directory


def _remove_empty(directories) -> None:
    """Remove the directories this lock created, innermost first, if nothing was put in them."""
    for d in directories:
        try:
            d.rmdir()
        except OSError:  # not empty (the run wrote results), or already gone
            return


@contextmanager
def hold(directory: str | Path):
    """Hold the lock of `directory` (created if missing) for the duration of the block."""
    token = acquire(directory)
    try:
        yield
    finally:
        release(token)
