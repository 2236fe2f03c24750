"""`surgery edit-eval` and `surgery validate` from the command line: a full run, and input errors as one line."""
from __future__ import annotations

import json

import pytest

from surgery import cli
from tests.experiments_models import cartpole_dt


def main(argv) -> int:
    return cli.main(argv)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    model, md = cartpole_dt()
    directory = tmp_path_factory.mktemp("balancer")
    model.save_pretrained(directory)
    md.save(directory)
    return directory


def test_edit_eval_writes_report_figures_and_video(checkpoint, tmp_path, capsys):
    out = tmp_path / "ee"
    argv = ["edit-eval", str(checkpoint), "--block", "0", "--weight", "V", "--idx", "0", "--episodes", "6",
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
def test_bad_input_is_one_clear_line(checkpoint, tmp_path, capsys, argv, message):
    argv = [a.format(ckpt=checkpoint, missing=tmp_path / "missing") for a in argv]
    assert main(argv + ["--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"surgery {argv[0]}: error:") and message in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["edit-eval", "M", "--block", "0", "--weight", "W"], "invalid choice: 'W'"),
    (["edit-eval", "M", "--block", "0", "--weight", "K", "--episodes", "0"], "must be a positive integer"),
    (["validate", "M", "--top", "-1"], "must be a positive integer"),
    (["validate", "M", "--op", "scale"], "invalid choice: 'scale'"),
    (["validate", "M", "--weights", "MLP"], "invalid choice: 'MLP'"),
])
def test_bad_arguments_exit_non_zero_with_a_clear_message(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code != 0
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
