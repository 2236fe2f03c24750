"""Progress of long work: plain lines when not a terminal, nothing when disabled, a clock for one long call."""
from __future__ import annotations

import io
import time

import surgery.core.decomposition as decomposition
from surgery import decompose
from surgery.progress import busy, progress
from tests.conftest import build


def test_lines_when_not_a_terminal():
    out = io.StringIO()
    with progress(total=4, desc="work", unit="step", every=0.0, stream=out) as bar:
        for _ in range(4):
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("work: 1/4 step in ") and lines[-1].startswith("work: 4/4 step in ")
    silent = io.StringIO()
    with progress(total=4, enabled=False, stream=silent) as bar:
        bar.update(4)
    assert silent.getvalue() == ""


def test_a_resumed_run_promises_time_left_from_its_own_rate(monkeypatch):
    # 90 of 100 found done (stored by an earlier run), then 5 more in 10 s: 5 left at 0.5/s is 10 s,
    # not the 0.5 s that counting the stored 90 as this run's work would promise.
    now = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    out = io.StringIO()
    with progress(total=100, desc="atlas", unit="ep", every=0.0, stream=out, initial=90) as bar:
        now[0] = 10.0
        bar.update(5)
    assert out.getvalue().splitlines()[0] == "atlas: 95/100 ep in 10 s, about 10 s left"


def test_busy_reports_start_ticks_and_end():
    out = io.StringIO()
    with busy("SVD of something", every=0.05, stream=out):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0] == "SVD of something: started" and lines[-1].startswith("SVD of something: done in 0.")
    assert any(line.startswith("SVD of something: running for") for line in lines[1:-1])
    quiet = io.StringIO()
    with busy("x", enabled=False, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_only_large_dense_decompositions_report(monkeypatch, capsys):
    # GPT-J K: 4096 x 16384 x 4096 = 2.7e11 multiply-adds, well past the bar; GPT-2's 768 x 3072 is not
    assert 4096 * 16384 * 4096 >= decomposition._SLOW_SVD > 768 * 3072 * 768
    model = build("gpt2")
    decompose(model, block=0, weight="K")
    assert capsys.readouterr().err == ""  # small weights stay silent
    monkeypatch.setattr(decomposition, "_SLOW_SVD", 1)  # as if this 24x48 K were GPT-J's 4096x16384
    decompose(model, block=1, weight="K")
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "SVD of block 1 K [24, 48] (float64): started" and err[-1].startswith("SVD of block 1 K")
