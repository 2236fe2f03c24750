"""Smoke test: the throughput benchmark runs end to end on a tiny budget and prints its table."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rollout_throughput.py"


def test_benchmark_runs_on_a_tiny_budget(capsys):
    spec = importlib.util.spec_from_file_location("rollout_throughput", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--model", "untrained", "--episodes", "3", "--steps", "25", "--rounds", "1",
                       "--loop-steps", "25"]) == 0
    out = capsys.readouterr().out
    for line in ("per-episode HF loop", "batched float32", "batched bfloat16", "70.8 MFLOP", "MuJoCo step",
                 "bfloat16 vs float32 actions", "where a float32 step goes"):
        assert line in out
