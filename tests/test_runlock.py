"""The output-directory lock: one run at a time, the holder named, re-entrant in a process, gone with its holder."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from surgery import runlock
from surgery.errors import SurgeryError

ROOT = Path(__file__).resolve().parents[1]

HOLDER = textwrap.dedent("""
    import sys, time
    from surgery import runlock
    with runlock.hold(sys.argv[1]):
        print("holding", flush=True)
        time.sleep(120)
""")


def _hold_in_child(directory: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), "--some-flag"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "holding", child.stderr.read()
    return child


def test_a_second_process_is_refused_naming_the_holder_until_it_dies(tmp_path):
    child = _hold_in_child(tmp_path)
    try:
        with pytest.raises(SurgeryError) as refused:
            with runlock.hold(tmp_path):
                pytest.fail("two runs hold one directory")
        message = str(refused.value)
        assert message.startswith(f"{tmp_path} is in use by another run (pid {child.pid} on ")
        assert "command: -c " in message and "--some-flag" in message and "started 20" in message
        assert "choose another output directory" in message
    finally:
        child.kill()  # SIGKILL: its lock file stays, but the kernel has dropped the flock
        child.wait()
    assert (tmp_path / runlock.LOCK_NAME).exists()
    with runlock.hold(tmp_path):
        assert runlock.holder(tmp_path)["pid"] == os.getpid()
    assert not (tmp_path / runlock.LOCK_NAME).exists()


def test_holding_is_reentrant_within_a_process_and_the_file_goes_with_the_last_hold(tmp_path):
    out = tmp_path / "new" / "dir"
    with runlock.hold(out):
        with runlock.hold(out):
            assert (out / runlock.LOCK_NAME).exists()
        assert runlock.holder(out)["pid"] == os.getpid()
    assert not out.exists()  # it created the directory and nothing was written in it


def test_a_file_is_not_an_output_directory(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(SurgeryError, match="exists and is not a directory"):
        runlock.acquire(tmp_path / "f")
    assert (tmp_path / "f").read_text() == "x"


def test_a_run_that_writes_nothing_leaves_no_directory(tmp_path):
    out = tmp_path / "runs" / "x"
    with runlock.hold(out):
        assert out.is_dir()
    assert not (tmp_path / "runs").exists()  # both levels it created are gone again
    with runlock.hold(out):
        (out / "result.txt").write_text("kept")
    assert (out / "result.txt").read_text() == "kept" and not (out / runlock.LOCK_NAME).exists()
