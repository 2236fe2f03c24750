"""Ctrl-C at any instant of a patch: afterwards the weights are bitwise restored, the patch stack
is empty, the lock is free and SIGINT's handler is the one before.

Two ways to choose the instants, for three forms (one `with`, two nested `with`, `apply`/`revert`):
- at random: a helper thread sends SIGINT to the main thread after a random delay (uniform over
  about two loop iterations), while the main thread runs the loop until the KeyboardInterrupt;
- every one in turn: a trace function trips SIGINT at each function entry in surgery/core and at
  each line of `apply` and `revert`, one run per event.
Plus the main thread interrupted while another thread patches the same model. Run as a script to
measure rates: `python tests/test_patch_interrupts.py --interrupts 2000`.
"""
from __future__ import annotations

import _thread
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import pytest
import torch

import surgery.core
from surgery import Edit, Patch, patch
from surgery.core.state import state
from tests.conftest import assert_bitwise_equal, build, snapshot


@dataclass
class Tally:
    """What happened to the interrupts of one stress run."""

    sent: int = 0
    """SIGINTs sent."""
    caught: int = 0
    """KeyboardInterrupts the loop raised (each checked afterwards)."""
    lost: int = 0
    """SIGINTs that raised nothing within a second (swallowed)."""
    bad: dict = field(default_factory=dict)
    """failure kind -> count: 'weights' (not bitwise), 'stack' (patches left applied), 'lock' (still held),
    'atomic' (a patch half applied: weights not those of the patches the stack lists), or the name of
    an exception raised instead of KeyboardInterrupt, 'handler' (SIGINT's handler not put back)."""

    def add(self, problems: list[str]) -> None:
        for kind in problems:
            self.bad[kind] = self.bad.get(kind, 0) + 1

    def failures(self) -> int:
        return sum(self.bad.values())

    def __str__(self) -> str:
        rate = self.failures() / max(self.caught, 1)
        return (f"{self.sent} SIGINTs, {self.caught} KeyboardInterrupts, {self.lost} lost, "
                f"{self.failures()} failures ({rate:.2%}): {self.bad or 'none'}")


class _Sender:
    """A thread that, each time it is armed, waits a random delay and sends SIGINT to the main thread."""

    def __init__(self, max_delay: float, seed: int):
        self.rng, self.max_delay = random.Random(seed), max_delay
        self.armed, self.caught, self.stop = threading.Event(), threading.Event(), False
        self.lost = 0
        self.main = threading.main_thread().ident
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            self.armed.wait()
            self.armed.clear()
            if self.stop:
                return
            time.sleep(self.rng.uniform(0, self.max_delay))
            signal.pthread_kill(self.main, signal.SIGINT)
            while not self.caught.wait(1.0):  # swallowed: count it and send another so the loop ends
                self.lost += 1
                signal.pthread_kill(self.main, signal.SIGINT)
            self.caught.clear()

    def close(self):
        self.stop = True
        self.armed.set()
        self.thread.join()


def _caused_by_interrupt(e: BaseException) -> bool:
    while e is not None:
        if isinstance(e, KeyboardInterrupt):
            return True
        e = e.__context__
    return False


def _lock_held(model) -> bool:
    return state(model).lock._is_owned()


def _matches(model, snap) -> bool:
    return all(torch.equal(v, snap[k]) for k, v in model.state_dict().items())


def _inspect(model, states: dict, handler, problems: list[str]) -> list[str]:
    """Check the model after an interrupt, put it back, and return what was wrong.

    `states` maps a tuple of applied patches (as the stack lists them) to the state_dict they make.
    With `with` blocks only `()` is legitimate; with `apply`/`revert` a patch may be left applied
    (the interrupt landed after `apply` returned), but only whole: the weights must be exactly
    those of the patches on the stack. Anything left applied is then reverted and checked again.
    """
    st = state(model)
    applied = tuple(st.patch_stack)
    if applied not in states:
        problems.append("stack")
    elif not _matches(model, states[applied]):
        problems.append("atomic" if applied else "weights")
    for p in reversed(applied):  # put things back the documented way, then check again
        p.revert()
    if applied and not _matches(model, states[()]):
        problems.append("weights")
    if _lock_held(model):
        problems.append("lock")
        while _lock_held(model):
            st.lock.release()
    if signal.getsignal(signal.SIGINT) is not handler:
        problems.append("handler")
        signal.signal(signal.SIGINT, handler)
    if not torch.is_grad_enabled():  # a torch.no_grad() block left without its __exit__
        problems.append("grad")
        torch.set_grad_enabled(True)
    if not _matches(model, states[()]):
        model.load_state_dict(states[()])
    return problems


def stress(body, model, states: dict, n: int, max_delay: float, seed: int = 0) -> Tally:
    """Interrupt `body()`, run in a loop, `n` times at random instants; check the model after each."""
    tally, handler = Tally(), signal.getsignal(signal.SIGINT)
    sender = _Sender(max_delay, seed)
    # The sender needs the GIL to send: let it take it within microseconds of waking, not 5 ms.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for _ in range(n):
            try:
                tally.sent += 1
                sender.armed.set()
                while True:
                    body()
            except KeyboardInterrupt:
                problems = []
            except Exception as e:  # raised while handling the interrupt: the user sees this instead
                if not _caused_by_interrupt(e):
                    raise
                problems = [type(e).__name__]
            sender.caught.set()
            tally.caught += 1
            tally.add(_inspect(model, states, handler, problems))
    finally:
        sys.setswitchinterval(interval)
        sender.close()
    tally.lost = sender.lost
    return tally


def _traced_files() -> set[str]:
    core = os.path.dirname(surgery.core.__file__)
    return {os.path.join(core, f) for f in os.listdir(core) if f.endswith(".py")} | {__file__}


def _run_traced(body, files: set[str], trip_at: int | None) -> int:
    """Run `body()` once, counting events; at event number `trip_at` trip SIGINT (as if Ctrl-C
    arrived just there). Returns the number of events.

    The events are those where a real SIGINT can be raised: the first instruction of every function
    in `files` (a "call" event), and every line of Patch.apply and Patch.revert, which hold Ctrl-C
    throughout. Other lines are left out because a trace function can raise where no signal can:
    at the first instruction of a `with` block's exit, which is outside the block's protection.
    """
    count, lines = 0, {Patch.apply.__code__, Patch.revert.__code__}

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename not in files:
            return None
        if event == "call" or (event == "line" and frame.f_code in lines):
            count += 1
            if count == trip_at:
                _thread.interrupt_main()
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        body()
    finally:
        sys.settrace(previous)
    return count


def sweep(body, model, states: dict) -> Tally:
    """Interrupt `body()` once at each of its traced events in turn; check the model after each."""
    files, handler, tally = _traced_files(), signal.getsignal(signal.SIGINT), Tally()
    for k in range(1, _run_traced(body, files, None) + 1):
        tally.sent += 1
        try:
            _run_traced(body, files, k)
            for _ in range(3):  # loops are check points: a held interrupt that was never raised shows here
                pass
            tally.lost += 1
            problems = []
        except KeyboardInterrupt:
            tally.caught += 1
            problems = []
        except Exception as e:
            if not _caused_by_interrupt(e):
                raise
            tally.caught += 1
            problems = [type(e).__name__]
        tally.add(_inspect(model, states, handler, problems))
    return tally


def one_with(model):
    """One `with patch(...)` block, as a sweep runs it."""
    def body():
        with patch(model, block=0, weight="K", idx=0):
            pass
    return body, {(): snapshot(model)}


def nested_with(model):
    """Two nested `with patch(...)` blocks: every instant of entry, body and exit, at two depths."""
    def body():
        with patch(model, block=0, weight="K", idx=0):
            with patch(model, block=1, weight="OV", head=0, idx=1, op="zero"):
                pass
    return body, {(): snapshot(model)}


def apply_revert(model):
    """`apply` and `revert` called directly: each must be all or nothing."""
    outer = patch(model, block=0, weight="K", idx=0)
    inner = patch(model, [dict(block=1, weight="V", idx=2, op="scale", value=0.5),
                          dict(block=0, weight="QK", head=1, idx=0, op="zero")])
    states = {(): snapshot(model)}
    with outer:
        states[(outer,)] = snapshot(model)
        with inner:
            states[(outer, inner)] = snapshot(model)

    def body():
        outer.apply()
        inner.apply()
        inner.revert()
        outer.revert()
    return body, states


KINDS = ["with", "nested", "apply"]


def _iteration_time(body) -> float:
    body()  # the first call computes the SVDs
    t = time.perf_counter()
    for _ in range(20):
        body()
    return (time.perf_counter() - t) / 20


def _setup(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = build("gpt2", seed=seed)
    body, states = {"with": one_with, "nested": nested_with, "apply": apply_revert}[kind](model)
    return model, body, states


def run(kind: str, n: int, seed: int = 0) -> Tally:
    model, body, states = _setup(kind, seed)
    # Delays spread over about two iterations (plus the sleep's own jitter) so every instant is hit.
    return stress(body, model, states, n, max_delay=2.5 * _iteration_time(body), seed=seed)


@pytest.mark.parametrize("kind", KINDS)
def test_ctrl_c_at_every_line_restores_everything(kind):
    model, body, states = _setup(kind)
    body()  # SVDs cached, as in a sweep
    tally = sweep(body, model, states)
    assert tally.sent > 50  # the tracer saw the patch code
    assert tally.failures() == 0, str(tally)
    assert tally.lost == 0, str(tally)


@pytest.mark.parametrize("kind", KINDS)
def test_ctrl_c_at_random_instants_restores_everything(kind):
    tally = run(kind, n=150)
    assert tally.failures() == 0, str(tally)
    assert tally.lost == 0, str(tally)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_ctrl_c_at_random_instants_restores_everything_long(kind):
    tally = run(kind, n=10000, seed=1)
    assert tally.failures() == 0, str(tally)
    assert tally.lost == 0, str(tally)


def _worker(model, stop: threading.Event, errors: list):
    """Patches `model` from another thread until `stop`, with both forms (no signal reaches it)."""
    try:
        while not stop.is_set():
            with patch(model, block=1, weight="K", idx=0):
                time.sleep(0.0002)
            p = patch(model, block=0, weight="V", idx=1, op="zero").apply()
            time.sleep(0.0002)
            p.revert()
            time.sleep(0.0002)
    except BaseException as e:  # reported by the test
        errors.append(e)


def test_ctrl_c_in_the_main_thread_while_another_thread_patches():
    """The main thread's patches (often waiting for the lock) are interrupted; the other thread's
    patches are untouched by it, and afterwards everything is restored."""
    model = build("gpt2")
    snap, handler, st = snapshot(model), signal.getsignal(signal.SIGINT), state(model)
    stop, errors = threading.Event(), []
    worker = threading.Thread(target=_worker, args=(model, stop, errors))

    def body():
        with patch(model, block=0, weight="K", idx=0):
            pass

    body()
    worker.start()
    sender = _Sender(max_delay=0.002, seed=3)
    bad = []
    try:
        for _ in range(100):
            try:
                sender.armed.set()
                while True:
                    body()
            except KeyboardInterrupt:
                pass
            sender.caught.set()
            ours = [p for p in list(st.patch_stack) if p.edits[0] == Edit(0, "K", 0)]
            if ours or _lock_held(model):
                bad.append(f"left applied: {ours}, lock held: {_lock_held(model)}")
                for p in reversed(ours):  # clean up, or the other thread waits for ever
                    p.revert()
                while _lock_held(model):
                    st.lock.release()
    finally:
        sender.close()
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    assert not errors, errors
    assert not bad, bad
    assert st.patch_stack == [] and not _lock_held(model) and sender.lost == 0
    assert signal.getsignal(signal.SIGINT) is handler
    assert_bitwise_equal(model, snap)


def test_ctrl_c_while_waiting_for_another_threads_patch_ends_the_wait():
    model = build("gpt2")
    snap, st = snapshot(model), state(model)
    inside, release = threading.Event(), threading.Event()

    def hold():
        with patch(model, block=1, weight="K", idx=0):
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=hold)
    worker.start()
    inside.wait(10)
    main = threading.main_thread().ident
    timer = threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGINT))
    start = time.perf_counter()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            with patch(model, block=0, weight="K", idx=0):
                pytest.fail("the lock is held by the other thread")
        waited = time.perf_counter() - start
    finally:
        release.set()
        worker.join()
        timer.join()
    assert 0.2 <= waited < 1.0  # the wait ended within a slice (0.05 s) of the interrupt
    assert st.patch_stack == [] and not _lock_held(model)
    assert_bitwise_equal(model, snap)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interrupts", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for kind in KINDS:
        t = time.perf_counter()
        model, body, states = _setup(kind, args.seed)
        body()
        tally = sweep(body, model, states)
        print(f"{kind:6s} every line:  {tally} [{time.perf_counter() - t:.1f} s]", flush=True)
        t = time.perf_counter()
        tally = run(kind, args.interrupts, args.seed)
        print(f"{kind:6s} random SIGINT: {tally} [{time.perf_counter() - t:.1f} s]", flush=True)
