#!/usr/bin/env bash
# Set up on a fresh machine and run the default (fast) test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export MUJOCO_GL="${MUJOCO_GL:-egl}"
python -m pytest "$@"
