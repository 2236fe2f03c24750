"""`surgery edit-eval` and `surgery validate` from the command line: a full run, and input errors as one line."""
from __future__ import annotations

import json

import pytest

from surgery import cli


def main(argv) -> int:
    return cli.main(argv)


def test_edit_eval_writes_report_figures_and_video(balancer_checkpoint, tmp_path, capsys):
    out = tmp_path / "ee"
    argv = ["edit-eval", str(balancer_checkpoint), "--block", "0", "--weight", "V", "--idx", "0", "--episodes", "6",
            "--max-steps", "30", "--out", str(out), "--video", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "edit: block 0 V #0 (write side): constant 0.01562" in text and "Wilcoxon signed-rank p" in text
    for name in ("report.md", "report.json", "returns.png", "survival.png", "video.gif", "video.mp4"):
        assert (out / name).stat().st_size > 0, name
    assert main(argv[:-2] + ["--json"]) == 0  # resumes (nothing to run) and prints the report as JSON
    report = json.loads(capsys.readouterr().out)
    assert report["comparison"]["pairs"] == 6 and report["edits"][0]["weight"] == "V"


@pytest.mark.parametrize("argv, message", [
    (["edit-eval", "{ckpt}", "--block", "0", "--weight", "K", "--idx", "999"], "idx=999 is out of range"),
    (["edit-eval", "{ckpt}", "--block", "5", "--weight", "K"], "block"),
    (["edit-eval", "{ckpt}", "--block", "0", "--weight", "K", "--op", "zero", "--value", "1"], "--op zero takes no"),
    (["edit-eval", "{ckpt}", "--block", "0", "--weight", "K", "--op", "scale"], "--op scale needs --value"),
    (["edit-eval", "{ckpt}", "--block", "0", "--weight", "OV"], "per head: give head="),
    (["edit-eval", "{missing}", "--block", "0", "--weight", "K"], "does not exist"),
    (["edit-eval", "{ckpt}", "--weight", "K"], "say which edit: --block B --weight W"),
    (["edit-eval", "{ckpt}", "--edits", "{missing}", "--block", "0"], "give either --edits DIR"),
    (["edit-eval", "{ckpt}", "--edits", "{missing}"], "no saved patch at"),
    (["validate", "{ckpt}", "--embedding", "nope"], "nope"),
    (["validate", "{ckpt}", "--alpha", "2"], "alpha"),
])
def test_bad_input_is_one_clear_line(balancer_checkpoint, tmp_path, capsys, argv, message):
    argv = [a.format(ckpt=balancer_checkpoint, missing=tmp_path / "missing") for a in argv]
    assert main(argv + ["--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"surgery {argv[0]}: error:") and message in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["edit-eval", "M", "--block", "0", "--weight", "W"], "invalid choice: 'W'"),
    (["edit-eval", "M", "--block", "0", "--weight", "K", "--episodes", "0"], "must be at least 2"),
    (["validate", "M", "--top", "-1"], "must be a positive integer"),
    (["validate", "M", "--op", "scale"], "invalid choice: 'scale'"),
    (["validate", "M", "--weights", "MLP"], "invalid choice: 'MLP'"),
])
def test_bad_arguments_exit_non_zero_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code != 0
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_a_second_run_on_the_same_out_is_refused_at_start(balancer_checkpoint, tmp_path, capsys):
    from surgery import runlock
    from tests.test_runlock import _hold_in_child

    out = tmp_path / "busy"
    child = _hold_in_child(out)
    try:
        for argv in (["edit-eval", str(balancer_checkpoint), "--block", "0", "--weight", "K"],
                     ["validate", str(balancer_checkpoint), "--top", "1"]):
            assert main(argv + ["--episodes", "4", "--max-steps", "10", "--out", str(out), "--quiet"]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"{out} is in use by another run (pid {child.pid}" in err[0], err
            assert sorted(p.name for p in out.iterdir()) == [runlock.LOCK_NAME]  # nothing written
    finally:
        child.kill()
        child.wait()


def test_ctrl_c_in_edit_eval_says_what_was_saved_and_where(balancer_checkpoint, tmp_path, capsys, monkeypatch):
    from surgery.behaviour import results_store
    from surgery.behaviour.results_store import ResultsStore

    real_add, calls = ResultsStore.add, []

    def add_then_interrupt(self, rec):
        real_add(self, rec)
        calls.append(rec.episode)
        if len(calls) == 5:  # baseline and edited episodes share the lanes, in the order they end
            raise KeyboardInterrupt

    monkeypatch.setattr(ResultsStore, "add", add_then_interrupt)
    out = tmp_path / "ee"
    assert main(["edit-eval", str(balancer_checkpoint), "--block", "0", "--weight", "V", "--episodes", "4",
                 "--max-steps", "15", "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    saved = {name: results_store.saved(out / name) for name in ("baseline", "edited")}
    assert sum(saved.values()) == 5 and all(saved.values()), saved
    assert err == [f"surgery edit-eval: interrupted: 5 episodes saved under {out} "
                   f"(baseline: {saved['baseline']}, edited: {saved['edited']}); rerun the same command to resume"], err
