#!/usr/bin/env bash
# Set up on a fresh machine and run the main job on the embedded default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh env
. .venv/bin/activate
export MUJOCO_GL="${MUJOCO_GL:-egl}"
surgery analyze hopper --out results/analysis/hopper
