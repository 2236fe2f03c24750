"""Writing experiment outputs: atomic files, JSON that any reader accepts, the model's identity."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from surgery.errors import SurgeryError, load_first


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(tmp: str | Path, path: str | Path) -> Path:
    """Give a finished temporary file ordinary permissions (mkstemp makes it private) and move it in place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    return Path(path)


def write_atomic(path: str | Path, text: str) -> Path:
    """Write text to path so a reader sees the old file or the new one, never half of either."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
    if isinstance(x, Path):
        return str(x)
    return str(x)


def to_json(x) -> str:
    return json.dumps(jsonable(x), indent=2, allow_nan=False) + "\n"


def adapter_with_metadata(model, what: str):
    """The adapter of a loaded decision transformer that carries its metadata (env, normalisation, return scale)."""
    from adapters import wrap

    if isinstance(model, (str, os.PathLike)):
        raise load_first(what, model)
    adapter = wrap(model)
    if getattr(adapter, "metadata", None) is None:
        raise SurgeryError("the model has no decision-transformer metadata (env_id, state mean/std, return scale, "
                           "context length): load it with surgery.load(..., metadata=...)")
    return adapter


def model_identity(adapter, source) -> dict:
    """What a report needs to say which model produced its numbers."""
    from surgery.behaviour.evaluation import weights_sha256

    md = adapter.metadata
    name = source if isinstance(source, (str, os.PathLike)) else type(adapter.model).__name__
    return {
        "model": str(name),
        "env_id": md.env_id,
        "weights_sha256": weights_sha256(adapter.model),
        "notes": md.notes or "",
        "untrained": "untrained" in (md.notes or "").lower(),
    }


def fmt(x: float | None, digits: int = 1) -> str:
    """A number for a table: fixed digits, 'inf' / '-' for the special values."""
    if x is None:
        return "-"
    if isinstance(x, float) and math.isinf(x):
        return "never" if x > 0 else "-inf"
    return f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    """A p-value to two significant digits."""
    if p is None:
        return "-"
    return f"{p:.2g}" if p >= 1e-300 else "<1e-300"
