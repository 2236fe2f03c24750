"""`surgery atlas` from the command line: a run and its resume, an unreachable scheduler, input errors as one line."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from surgery import cli

ROOT = Path(__file__).resolve().parents[1]


def test_atlas_writes_its_report_and_resumes(balancer_checkpoint, tmp_path, capsys):
    out = tmp_path / "atlas"
    argv = ["atlas", str(balancer_checkpoint), "--weights", "K,V", "--blocks", "0", "--vectors", "2", "--episodes", "12",
            "--max-steps", "40", "--workers", "0", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "2 of 4 edits change the return significantly" in text and "b0 V #0" in text
    for name in ("atlas.csv", "atlas.md", "atlas.html", "atlas.json", "plan.json", "episodes.sqlite"):
        assert (out / name).stat().st_size > 0, name
    assert cli.main(argv + ["--json"]) == 0  # resumes: every episode is stored, nothing runs again
    report = json.loads(capsys.readouterr().out)
    assert report["cost"]["env_steps_this_run"] == 0 and report["settings"]["weights"] == ["K", "V"]
    assert report["claim"]["table"]["aligned_damaging"] == 2


def test_a_pooled_run_gets_its_own_default_folder(balancer_checkpoint, tmp_path, monkeypatch, capsys):
    """A pooled atlas is another experiment than the paired one of the same weights: by default it goes to
    another folder instead of being refused by the paired run's store."""
    monkeypatch.chdir(tmp_path)
    argv = ["atlas", str(balancer_checkpoint), "--weights", "V", "--blocks", "0", "--vectors", "1", "--episodes", "4",
            "--looks", "1", "--max-steps", "20", "--workers", "0", "--quiet"]
    assert cli.main(argv) == 0 and cli.main(argv + ["--pool", "6"]) == 0
    runs = tmp_path / "runs" / "atlas"
    name = balancer_checkpoint.name
    assert (runs / f"{name}-V-zero" / "atlas.json").is_file() and (runs / f"{name}-V-zero-pool6" / "atlas.json").is_file()
    assert "judged against a pool of 6" in capsys.readouterr().out


def test_an_unreachable_scheduler_is_one_line_exit_2_and_nothing_written(balancer_checkpoint, tmp_path):
    out = tmp_path / "atlas"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "surgery", "atlas", str(balancer_checkpoint), "--scheduler",
                           "tcp://127.0.0.1:1", "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    elapsed = time.monotonic() - start
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert err[0].startswith("surgery atlas: error: cannot reach the Dask scheduler at tcp://127.0.0.1:1")
    assert elapsed < 10 and not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--op", "zero", "--value", "1"], "op='zero' takes no value"),
    (["--op", "scale"], "needs value"),
    (["--looks", "0.5", "0.2", "1"], "increasing fractions"),
    (["--blocks", "9"], "out of range"),
    (["--scheduler", "tcp://127.0.0.1:1", "--workers", "2"], "not both"),
])
def test_bad_input_is_one_clear_line(balancer_checkpoint, tmp_path, capsys, argv, message):
    assert cli.main(["atlas", str(balancer_checkpoint), "--workers", "0", "--out", str(tmp_path / "o"), "--quiet"] + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("surgery atlas: error:") and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_bad_arguments_exit_non_zero(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["atlas", "M", "--weights", "K,MLP"])
    assert exit_.value.code != 0 and "invalid choice: 'MLP'" in capsys.readouterr().err


def test_the_command_line_is_built_without_torch():
    """The flags come from AtlasSettings, which imports no torch: `surgery --help` stays fast."""
    code = "import sys; from surgery.cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr
