"""Progress of long work: a tqdm bar on a terminal, plain periodic lines otherwise (logs, CI, notebooks' files).

    with progress(total=steps, desc="atlas", unit="step") as bar:
        bar.update(n)

    with busy("SVD of block 3 K [4096, 16384]"):   # one long call that reports nothing itself
        torch.linalg.svd(W)

A bar that nobody sees still costs nothing: `enabled=False` (a `--quiet` flag) makes every call a no-op.
"""
from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

__all__ = ["progress", "busy"]


class _Lines:
    """A tqdm stand-in for files that are not terminals: one line every `every` seconds and at the end."""

    def __init__(self, total, desc: str, unit: str, every: float, stream, initial: int = 0):
        self.total, self.desc, self.unit, self.every, self.stream = total, desc, unit, every, stream
        self.n = self.initial = initial
        self.start, self.last, self.postfix = time.monotonic(), time.monotonic(), ""

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
        if self.total and self.n > self.initial:  # the rate of this run: work found done (resumed) took no time
            eta = f", about {max(self.total - self.n, 0) * elapsed / (self.n - self.initial):.0f} s left"
        post = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} in {elapsed:.0f} s{eta}{post}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.n > self.initial:
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
             every: float = 30.0, stream=None, initial: int = 0):
    """A progress bar: tqdm on a terminal, a plain line every `every` seconds otherwise, nothing if not enabled.

    `total` may be changed later (`bar.total = n`) when the amount of work is found out as it goes. `initial`:
    work already done before this run (a resumed one); it counts towards the total but not the rate, so the
    time left is not promised from work that took no time now.
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        return _Silent()
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=stream, dynamic_ncols=True, initial=initial)
    return _Lines(total, desc, unit, every, stream, initial)


@contextmanager
def busy(desc: str, enabled: bool = True, every: float = 30.0, stream=None):
    """Show that one long call is running: a ticking clock on a terminal (refreshed each second), else
    a line when it starts, one every `every` seconds, and one when it ends with the time it took.

    For work that cannot report its own progress, such as a single LAPACK SVD (which releases the
    GIL, so the clock keeps ticking).
    """
    stream = sys.stderr if stream is None else stream
    if not enabled:
        yield
        return
    start, stop = time.monotonic(), threading.Event()
    if getattr(stream, "isatty", lambda: False)():
        from tqdm.auto import tqdm

        bar = tqdm(total=None, desc=desc, file=stream, bar_format="{desc}: {elapsed}", dynamic_ncols=True)
        tick, period = bar.refresh, 1.0
    else:
        def tick():
            print(f"{desc}: running for {time.monotonic() - start:.0f} s", file=stream, flush=True)

        print(f"{desc}: started", file=stream, flush=True)
        bar, period = None, every
    def clock():
        while not stop.wait(period):
            tick()

    thread = threading.Thread(target=clock, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if bar is not None:
            bar.close()
        else:
            print(f"{desc}: done in {time.monotonic() - start:.1f} s", file=stream, flush=True)
