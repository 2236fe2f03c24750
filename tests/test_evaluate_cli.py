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


def test_ctrl_c_says_what_was_saved_and_where_then_the_rerun_resumes(checkpoint, tmp_path, capsys, monkeypatch):
    from surgery.behaviour.results_store import ResultsStore
    from surgery.cli.main import main

    real_add, calls = ResultsStore.add, []

    def add_then_interrupt(self, rec):
        real_add(self, rec)
        calls.append(rec.episode)
        if len(calls) == 2:
            raise KeyboardInterrupt

    argv = ["evaluate", str(checkpoint), "--episodes", "4", "--max-steps", "15", "--quiet", "--out", str(tmp_path)]
    monkeypatch.setattr(ResultsStore, "add", add_then_interrupt)
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"surgery evaluate: interrupted: 2 episodes saved in {tmp_path / 'episodes.sqlite'}; "
                   "rerun the same command to resume"]
    monkeypatch.setattr(ResultsStore, "add", real_add)
    assert main(argv) == 0
    assert f"4 episodes saved in {tmp_path / 'episodes.sqlite'} (2 of them from an earlier run)" in capsys.readouterr().out


def test_a_foreign_database_as_out_is_one_line_and_untouched(checkpoint, tmp_path, capsys):
    from surgery.cli.main import main

    con = sqlite3.connect(tmp_path / "episodes.sqlite")
    con.execute("CREATE TABLE users (name TEXT)")
    con.commit()
    con.close()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["evaluate", str(checkpoint), "--episodes", "2", "--quiet", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a surgery results file (tables ['users'])" in err[0], err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
