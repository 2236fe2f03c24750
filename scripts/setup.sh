#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the given extras, torch pinned to the local CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | { grep -v "^WARNING: Location" || true; }
# constraints.txt pins torch==2.13.0 (the CPU build on this machine's disk); a loose torch pulls CUDA.
# (This machine's pip config names package folders that may be absent: those warnings are filtered;
# pipefail keeps a failed install fatal.)
# setuptools reports an editable install as a UserWarning box; the install itself still fails loudly.
PYTHONWARNINGS=ignore::UserWarning python -m pip install -q -c constraints.txt -e ".[${extras}]" 2>&1 \
  | { grep -v "^WARNING: Location" || true; }
python -c "import torch, surgery; print(f'set up: torch {torch.__version__}, surgery from {surgery.__file__}')"
