#!/usr/bin/env bash
# Set up on a fresh machine and run the default (fast) test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export MUJOCO_GL="${MUJOCO_GL:-egl}"
# Threads that spin while waiting starve each other on a shared 2-core machine.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
python -m pytest "$@"
