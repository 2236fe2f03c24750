"""`surgery evaluate` on a checkpoint directory, resuming from --out, and its input errors."""
from __future__ import annotations

import argparse
import json
import sqlite3

import pytest

from surgery.behaviour.hf_loop import untrained_dt
from surgery.cli import evaluate as evaluate_cli


def parse(argv):
    parser = argparse.ArgumentParser(prog="surgery")
    evaluate_cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, md = untrained_dt("Hopper-v5")
    directory = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(directory)
    md.save(directory)
    return directory


def test_evaluate_a_checkpoint_directory_and_resume(checkpoint, tmp_path, capsys):
    argv = ["evaluate", str(checkpoint), "--episodes", "3", "--seed", "2", "--max-steps", "20", "--quiet",
            "--out", str(tmp_path)]
    args = parse(argv)
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "Hopper-v5: 3 episodes" in out and "episodes.sqlite" in out
    args = parse([("5" if a == "3" else a) for a in argv] + ["--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["records"]) == 5 and report["summary"]["episodes"] == 5
    con = sqlite3.connect(tmp_path / "episodes.sqlite")
    assert con.execute("SELECT COUNT(*) FROM episodes").fetchone()[0] == 5
    con.close()


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(["evaluate", "hopper", "--episodes", "0"])
    assert "must be a positive integer" in capsys.readouterr().err
    args = parse(["evaluate", str(tmp_path / "missing"), "--quiet"])
    with pytest.raises((FileNotFoundError, ValueError), match="missing"):
        args.func(args)
