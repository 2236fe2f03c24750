"""Progress of long work: a tqdm bar on a terminal, plain periodic lines otherwise (logs, CI, notebooks' files).

    with progress(total=steps, desc="atlas", unit="step") as bar:
        bar.update(n)

A bar that nobody sees still costs nothing: `enabled=False` (a `--quiet` flag) makes every call a no-op.
"""
from __future__ import annotations

import sys
import time

__all__ = ["progress"]


class _Lines:
    """A tqdm stand-in for files that are not terminals: one line every `every` seconds and at the end."""

    def __init__(self, total, desc: str, unit: str, every: float, stream):
        self.total, self.desc, self.unit, self.every, self.stream = total, desc, unit, every, stream
        self.n, self.start, self.last, self.postfix = 0, time.monotonic(), time.monotonic(), ""

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line()

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        self.postfix = text

    def refresh(self) -> None:
        """A line now if one is due (work that advances without finishing items, e.g. env steps)."""
        self.update(0)

    def _line(self) -> None:
        elapsed = time.monotonic() - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        eta = ""
        if self.total and self.n:
            eta = f", about {max(self.total - self.n, 0) * elapsed / self.n:.0f} s left"
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} in {elapsed:.0f} s{eta}{post}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.n:
            self._line()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Silent:
    n = 0
    total = None

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = False) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int | None = None, desc: str = "", unit: str = "it", enabled: bool = True,
             every: float = 30.0, stream=None):
    """A progress bar: tqdm on a terminal, a plain line every `every` seconds otherwise, nothing if not enabled.

    `total` may be changed later (`bar.total = n`) when the amount of work is found out as it goes.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Silent()
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True)
    return _Lines(total, desc, unit, every, stream)
