"""Ctrl-C held back while patch code edits or restores weights, wherever the interrupt lands.

Python raises KeyboardInterrupt from its SIGINT handler at the next *check point* of the main
thread: a function's first instruction, a loop's backward jump, the return of a call. Swapping
the handler only around the lines that edit weights leaves gaps no line of the patch can close:
the first instruction of `__exit__` runs before any of its lines, so an interrupt landing there
escaped with the patch still applied (3-6% of SIGINTs sent into a tight `with patch(...)` loop;
tests/test_patch_interrupts.py measures it).

So while a patch is applied, SIGINT's handler is this module's (`install`), and it decides by
*where* the interrupt landed. It walks the interrupted frame and its callers to the innermost
function marked `critical` (Patch.apply, which is also `__enter__`, and Patch.revert, also
`__exit__`); if that frame has not yet set its local variable `released` to True, the interrupt
is held, to be delivered by the `settle()` that every critical function calls right after
setting `released`; otherwise it runs the previous handler as usual. The order "set `released`,
then `settle`" leaves no gap: an interrupt before the assignment is seen by `settle`, one after
it is raised where it lands. Inside a function marked `interruptible` (apply computing its edits,
which may run an SVD for minutes) an interrupt is raised at once and the critical caller cleans up.

CPython calls `__exit__` exactly when `__enter__` returned: the `with` block's exception table
starts at the instruction after the one that calls `__enter__`. With `__enter__` being `apply`
itself there is no check point between apply's last line and that table (checked on 3.11 with
`dis` and tests/test_patch_interrupts.py; on 3.10, 3.11, 3.12 and 3.13 with
scripts/interrupt_semantics.py: 0 failures in 3000 SIGINTs each, against 0.5% with `__exit__`
as a wrapper around revert). Only the main thread receives signals; elsewhere all of this does
nothing.
"""
from __future__ import annotations

import signal
import sys
import threading
from types import CodeType

__all__ = ["critical", "interruptible", "install", "uninstall", "settle", "acquire"]

_CRITICAL: set[CodeType] = set()
_INTERRUPTIBLE: set[CodeType] = set()


def critical(fn):
    """Mark a function that holds a Ctrl-C (in itself and everything it calls) until its local
    `released` is True; it must then call `settle()`."""
    _CRITICAL.add(fn.__code__)
    return fn


def interruptible(fn):
    """Mark a function, called from critical code, inside which a Ctrl-C is raised at once."""
    _INTERRUPTIBLE.add(fn.__code__)
    return fn


class _Held:
    """Main-thread state (only the main thread runs signal handlers)."""

    handler = None
    """The handler a held interrupt is owed to (what `settle` calls), or None."""


_held = _Held()


def _holds(frame) -> bool:
    while frame is not None:  # the innermost marked function decides
        code = frame.f_code
        if code in _INTERRUPTIBLE:
            return False
        if code in _CRITICAL:
            return not frame.f_locals.get("released", False)
        frame = frame.f_back
    return False


class _Handler:
    """SIGINT's handler while patches are applied: held in unreleased critical code, else `previous`."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, signum, frame):
        if _holds(frame):
            _held.handler = self.previous
            return None
        return self.previous(signum, frame)

    def __repr__(self) -> str:
        return f"<surgery: SIGINT held in patch code, else {self.previous!r}>"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def install():
    """Make this module's handler SIGINT's; returns the token `uninstall` needs (None: nothing done).

    Nothing is done outside the main thread, when it is installed already, or when the current
    handler is not a Python function (SIG_IGN and SIG_DFL never raise KeyboardInterrupt).
    """
    if not _main_thread():
        return None
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, _Handler) or not callable(current):
        return None
    _held.handler = None  # one left by a frame that a second Ctrl-C ended early; already raised
    try:
        signal.signal(signal.SIGINT, _Handler(current))
    except ValueError:  # the main thread of a sub-interpreter
        return None
    return current


def uninstall(token) -> None:
    """Undo `install`, unless someone replaced the handler since (theirs then stays)."""
    if token is None:
        return
    current = signal.getsignal(signal.SIGINT)
    if isinstance(current, _Handler) and current.previous is token:
        signal.signal(signal.SIGINT, token)


def settle() -> None:
    """Deliver the interrupt held until now, if any: call the handler it was owed to."""
    handler = _held.handler
    if handler is None or not _main_thread():
        return
    _held.handler = None
    handler(signal.SIGINT, sys._getframe(1))


def acquire(lock) -> None:
    """Take `lock`; in the main thread wait in slices, so a Ctrl-C held meanwhile ends the wait."""
    if not _main_thread():
        lock.acquire()
        return
    while not lock.acquire(timeout=0.05):
        settle()  # raises KeyboardInterrupt if one was held (nothing is acquired yet)
