"""The examples a reader runs first keep working (the notebook has its own test)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs_and_the_patch_is_undone():
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True,
                          text=True, timeout=300, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "block 2 K: top singular values" in done.stdout
    assert "(restored exactly: True)" in done.stdout
    before = done.stdout.split("action before patch")[1].split("\n")[0]
    inside = done.stdout.split("inside patch")[1].split("\n")[0]
    assert before.strip() != inside.strip()  # the patch did change the action while applied
