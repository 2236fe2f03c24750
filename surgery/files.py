"""Writing results: files, figures and folders written atomically, JSON that any reader accepts.

A reader (or a crash) sees the old file or the new one, never half of either: everything is written
to a temporary file (or folder) in the same directory, flushed to disk, then renamed into place.
"""
from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Give a finished temporary file ordinary permissions (mkstemp makes it private) and move it in place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    return Path(path)


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write text or bytes to path so a reader sees the old file or the new one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def atomic_folder(path: str | Path, *, overwrite: bool = False, replaceable=None):
    """`with atomic_folder(DIR) as tmp:` write files into tmp; on success tmp becomes DIR, else it is removed.

    The temporary folder is in DIR's parent (a rename never crosses file systems); its files and the
    folder itself are fsynced before the rename, so after a crash DIR is the old folder or the complete
    new one. An existing DIR is refused unless `overwrite`; then `replaceable(DIR)` (if given) must
    return None, or a reason not to replace that folder, and DIR is swapped with the new folder in one
    step where the system can (Linux renameat2 RENAME_EXCHANGE), else renamed aside first.
    """
    from surgery.errors import SurgeryError

    path = Path(path)
    _check_replace(path, overwrite, replaceable)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private
        for f in tmp.rglob("*"):  # and transformers 5's save_pretrained writes model.safetensors 0600
            if f.is_file() and not f.is_symlink():
                os.chmod(f, 0o666 & ~_umask())
        _fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            _check_replace(path, overwrite, replaceable)  # again: it may have appeared while we wrote
            _swap_in(tmp, path)
        else:
            try:
                os.rename(tmp, path)
            except OSError as e:  # someone else made it meanwhile: keep theirs
                raise SurgeryError(f"{path} appeared while it was being written ({e.strerror}); "
                                   "nothing was replaced") from None
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # after a swap, tmp holds the old folder


def _check_replace(path: Path, overwrite: bool, replaceable) -> None:
    from surgery.errors import SurgeryError

    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise SurgeryError(f"{path} already exists; choose another path, or overwrite it (overwrite=True, --overwrite)")
    if path.is_symlink() or not path.is_dir():
        raise SurgeryError(f"{path} exists and is not a folder; not replacing it")
    why = replaceable(path) if replaceable is not None else None
    if why:
        raise SurgeryError(f"not replacing {path}: {why}")


def _swap_in(new: Path, path: Path) -> None:
    """Put the folder `new` at `path` (which exists) and the old folder at `new`."""
    if _rename_exchange(new, path):
        return
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    os.rename(path, aside / "old")  # between this rename and the next, `path` is briefly absent
    try:
        os.rename(new, path)
    except BaseException:
        os.rename(aside / "old", path)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _rename_exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux >= 3.15 with glibc >= 2.28); False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):  # kernel or file system without it
        return False
    raise OSError(err, f"renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}")


def _fsync_tree(root: Path) -> None:
    """Flush every file under root, then every folder, deepest first (a folder's entries are data too)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some systems cannot open folders; their renames are then as durable as they get
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 16 MB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def jsonable(x):
    """Plain JSON values: dataclasses as dicts, arrays as lists, inf/nan as null (JSON has neither)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)  # paths, slices, torch dtypes...


def to_json(x) -> str:
    return json.dumps(jsonable(x), indent=2, allow_nan=False) + "\n"


def markdown_table(head, rows) -> str:
    """A Markdown table; every cell escaped, so a '|cos|' header or a label with a pipe cannot split a row."""
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows])


def read_json_object(path: str | Path) -> dict:
    """The JSON object in `path`; a SurgeryError naming the file if it is not valid JSON or not an object."""
    from surgery.errors import SurgeryError

    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SurgeryError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise SurgeryError(f"{path} must hold a JSON object, got {type(d).__name__}")
    return d
