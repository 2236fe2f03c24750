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
