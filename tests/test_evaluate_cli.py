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
    for n in ("0", "1"):
        with pytest.raises(SystemExit):
            parse(["evaluate", "hopper", "--episodes", n])
        assert "must be at least 2" in capsys.readouterr().err
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


@pytest.mark.parametrize("command", [["evaluate"], ["edit-eval", "--block", "0", "--weight", "K"],
                                     ["validate", "--top", "1"], ["atlas", "--vectors", "1", "--workers", "0"]])
@pytest.mark.parametrize("flags, message", [
    (["--episodes", "1"], "must be at least 2|two looks fall on the same episode"),
    (["--target-return", "nan"], "target.return:? must be a finite number"),
    (["--target-return", "inf"], "target.return:? must be a finite number"),
    (["--episodes", "1000000000"], "more than the .* GiB available; use at most about"),
])
def test_what_cannot_work_is_refused_before_anything_runs(checkpoint, tmp_path, capsys, command, flags, message):
    """One line, exit 2, nothing written: not a traceback after the work, nor a run the kernel kills."""
    import re

    from surgery.cli.main import main

    out = tmp_path / "out"
    try:
        rc = main([command[0], str(checkpoint), *command[1:], *flags, "--max-steps", "5", "--out", str(out), "--quiet"])
    except SystemExit as e:  # argparse: its usage line, then the error
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) <= 2 and re.search(message, err[-1]), err
    assert not out.exists() or [p.name for p in out.rglob("*") if p.name != ".surgery.lock"] == []


def test_the_memory_check_counts_every_run(monkeypatch):
    from surgery.behaviour import episodes
    from surgery.errors import SurgeryError

    monkeypatch.setattr(episodes, "available_memory", lambda: 100 * episodes.BYTES_PER_EPISODE)
    episodes.check_memory(100)
    with pytest.raises(SurgeryError, match="101 episodes.*use at most about 100 episodes"):
        episodes.check_memory(101)
    monkeypatch.setattr(episodes, "available_memory", lambda: None)  # unknown: nothing is refused
    episodes.check_memory(10**12)
