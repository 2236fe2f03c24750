"""Smoke test: the throughput benchmark runs end to end on a tiny budget and prints its table."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

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


LANES = Path(__file__).resolve().parents[1] / "benchmarks" / "lane_throughput.py"


@pytest.mark.slow  # ~25 s: five runs on the zoo's Hopper
def test_lane_benchmark_runs_on_a_tiny_budget(capsys):
    from surgery import zoo

    if "hopper" not in zoo.names():
        pytest.skip("the zoo's hopper checkpoint is not shipped")
    spec = importlib.util.spec_from_file_location("lane_throughput", LANES)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--edits", "2", "--episodes", "2", "--steps", "10"]) == 0
    out = capsys.readouterr().out
    for line in ("(a) one evaluate per edit under patch", "(b) all edits as lanes of one run", "ratio (b) / (a)",
                 "2 edits + baseline x 2 episodes"):
        assert line in out
