"""Every command, every bad input: exit status 2 and exactly one line on stderr, no traceback, nothing run first."""
from __future__ import annotations

import json

import pytest
import torch

from surgery import cli
from tests.bad_checkpoints import DEFECTS, bad_checkpoint, save
from tests.lm_fixtures import make_tokenizer


def run(capsys, argv) -> tuple[int, list[str], str]:
    """(exit status, stderr lines, stdout) of `surgery ARGV`, argparse's exits included."""
    capsys.readouterr()  # what building the fixtures printed (save_pretrained's bar)
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, err.strip().splitlines(), out


def assert_one_line(code, err, *fragments):
    assert code == 2, (code, err)
    assert len(err) == 1 and err[0].startswith("surgery ") and "Traceback" not in err[0], err
    for f in fragments:
        assert f in err[0], err


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    """A good tiny GPT-J with a tokenizer, a DT with and without metadata.json, a file, a directory, metadata files."""
    root = tmp_path_factory.mktemp("cli")
    save("gptj", root / "gptj")
    make_tokenizer(root / "gptj")
    save("dt", root / "dt")
    save("dt", root / "nometa")
    (root / "nometa" / "metadata.json").unlink()
    (root / "file").write_text("x")
    (root / "dir").mkdir()
    good = {"env_id": "Hopper-v5", "state_dim": 5, "act_dim": 3}
    for name, text in {"not_json": "{not json", "list": "[1, 2]", "binary": "\udcff",
                       "type": json.dumps({**good, "state_dim": "five"}),
                       "mean": json.dumps({**good, "state_mean": "abc"}),
                       "unknown": json.dumps({**good, "colour": 1}),
                       "lacking": json.dumps({"env_id": "Hopper-v5"}),
                       "mismatch": json.dumps({**good, "state_dim": 6})}.items():
        (root / f"meta_{name}.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    return root


LM_BAD = [
    (["scan", "{gptj}", "--device", "bogus"], "argument --device: device='bogus' is not a device; valid: cpu"),
    (["scan", "{gptj}", "--device", "cuda:x"], "device='cuda:x' is not a device"),
    (["scan", "{gptj}", "--device", "meta"], "device='meta' holds no data"),
    pytest.param(["scan", "{gptj}", "--device", "cuda"], "device='cuda' is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here")),
    (["width", "{gptj}", "--device", "cuda:99"], "device='cuda:99' is not available"),
    (["tokens", "{gptj}", "--block", "0", "--weight", "K", "--device", "bogus"], "is not a device"),
    (["scan", "random:gpt2-small", "--blocks", "0"], "argument --blocks: must be a positive integer, got '0'"),
    (["scan", "random:gpt2-small", "--blocks", "-1"], "argument --blocks: must be a positive integer"),
    (["scan", "{gptj}", "--k", "0"], "argument --k: must be a positive integer"),
    (["scan", "{gptj}", "--tokens", "0"], "argument --tokens: must be a positive integer"),
    (["scan", "{gptj}", "--blocks", "1"], "--blocks builds a shorter random model"),
    (["scan", "random:gpt9"], "shape='gpt9' is not known; valid: gpt2-small"),
    (["scan", "{gptj}", "--out", "{file}"], "--out {file} exists; pass --force"),
    (["scan", "{gptj}", "--out", "{dir}"], "--out {dir} is a directory"),
    (["scan", "{gptj}", "--out", "{file}/x.json"], "{file} is not a directory"),
    (["scan", "{gptj}", "--out", "{root}/nowhere/x.json"], "{root}/nowhere does not exist"),
    (["tokens", "{gptj}", "--block", "0", "--weight", "K", "--k", "0"], "argument --k: must be a positive integer"),
    (["tokens", "{gptj}", "--block", "-1", "--weight", "K"], "argument --block: must be a non-negative integer"),
    (["tokens", "{gptj}", "--block", "5", "--weight", "OV", "--head", "1"], "block=5 is out of range"),  # before --k
    (["width", "{gptj}", "{gptj}"], "named more than once"),
    (["tokens", "{gptj}", "--block", "0", "--weight", "OV", "--head", "-2"], "argument --head"),
    (["tokens", "{gptj}", "--block", "0", "--weight", "K", "--tokens", "-3"], "argument --tokens"),
    (["tokens", "{gptj}", "--block", "9", "--weight", "K"], "block=9 is out of range"),
    (["width", "{gptj}", "--blocks", "0"], "argument --blocks: must be a positive integer"),
    (["width", "{gptj}", "--blocks", "5"], "--blocks 5: the models have at most 2 blocks (valid: 1..2)"),
    (["width", "{gptj}", "--draws", "0"], "argument --draws: must be a positive integer"),
    (["width", "{gptj}", "--k", "-1"], "argument --k: must be a positive integer"),
    (["scan"], "the following arguments are required: model"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


@pytest.mark.parametrize("argv, message", LM_BAD)
def test_lm_bad_input(capsys, paths, argv, message):
    fill = dict(gptj=paths / "gptj", file=paths / "file", dir=paths / "dir", root=paths)
    code, err, _ = run(capsys, ["lm", *(a.format(**fill) for a in argv)])
    assert_one_line(code, err, message.format(**fill))


@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("command", [["lm", "scan", "{m}", "--k", "2", "--tokens", "3"],
                                     ["lm", "tokens", "{m}", "--block", "0", "--weight", "K"],
                                     ["lm", "width", "{m}", "--blocks", "1"],
                                     ["analyze", "{m}", "--no-report"]],
                         ids=["scan", "tokens", "width", "analyze"])
def test_lm_damaged_checkpoints(capsys, tmp_path, command, defect):
    bad_checkpoint("gpt2", tmp_path / "m", defect, tmp_path / "PWNED")
    code, err, _ = run(capsys, [a.format(m=tmp_path / "m") for a in command])
    assert_one_line(code, err, str(tmp_path / "m"))
    assert not (tmp_path / "PWNED").exists()


DT_COMMANDS = {
    "analyze": ["analyze", "{m}", "--no-report"],
    "evaluate": ["evaluate", "{m}", "--episodes", "2", "--quiet"],
    "edit-eval": ["edit-eval", "{m}", "--block", "0", "--weight", "K", "--episodes", "2", "--quiet"],
    "validate": ["validate", "{m}", "--episodes", "2", "--quiet"],
    "zoo eval": ["zoo", "eval", "{m}", "--episodes", "2", "--quiet"],
}


@pytest.mark.parametrize("defect", DEFECTS)
@pytest.mark.parametrize("command", DT_COMMANDS)
def test_dt_damaged_checkpoints(capsys, tmp_path, monkeypatch, command, defect):
    monkeypatch.chdir(tmp_path)  # default output directories land here, if anything is written
    bad_checkpoint("dt", tmp_path / "m", defect, tmp_path / "PWNED")
    code, err, _ = run(capsys, [a.format(m=tmp_path / "m") for a in DT_COMMANDS[command]])
    assert_one_line(code, err, f"surgery {command}: error: ", str(tmp_path / "m"))
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", DT_COMMANDS)
@pytest.mark.parametrize("meta, message", [
    ("missing", "no decision-transformer metadata at"),
    ("not_json", "is not valid JSON"),
    ("binary", "is not valid JSON"),
    ("list", "must hold a JSON object, got list"),
    ("type", "state_dim must be an integer, got 'five'"),
    ("mean", "state_mean must be a list of numbers, got 'abc'"),
    ("unknown", "unknown metadata fields ['colour']"),
    ("lacking", "metadata is missing required fields ['state_dim', 'act_dim']"),
    ("mismatch", "state_dim=6 but config.state_dim=5"),
])
def test_dt_bad_metadata_file(capsys, paths, tmp_path, monkeypatch, command, meta, message):
    monkeypatch.chdir(tmp_path)
    argv = [a.format(m=paths / "nometa") for a in DT_COMMANDS[command]] + ["--metadata", paths / f"meta_{meta}.json"]
    code, err, _ = run(capsys, argv)
    assert_one_line(code, err, message, f"meta_{meta}.json")


@pytest.mark.parametrize("argv, message", [
    (["analyze", "{dt}", "--out", "{file}"], "--out {file} exists and is not a directory"),
    (["analyze", "{dt}", "--out", "{file}/sub"], "{file} is a file, not a directory"),
    (["evaluate", "{dt}", "--out", "{file}"], "--out {file} exists and is not a directory"),
    (["edit-eval", "{dt}", "--block", "0", "--weight", "K", "--out", "{file}"], "exists and is not a directory"),
    (["validate", "{dt}", "--out", "{file}/sub"], "{file} is a file, not a directory"),
    (["zoo", "build", "hopper", "--out", "{file}"], "--out {file} exists and is not a directory"),
    (["analyze", "{dt}", "--vectors", "0"], "argument --vectors: must be a positive integer"),
    (["analyze", "{dt}", "--draws", "-5"], "argument --draws: must be a positive integer"),
    (["analyze", "{dt}", "--top", "0"], "argument --top: must be a positive integer"),
    (["analyze", "{dt}", "--blocks", "-1"], "argument --blocks: must be a non-negative integer"),
    (["analyze", "{dt}", "--seed", "-1"], "argument --seed: must be a non-negative integer"),
    (["evaluate", "{dt}", "--episodes", "0"], "argument --episodes: must be at least 2"),
    (["evaluate", "{dt}", "--max-steps", "0"], "argument --max-steps: must be a positive integer"),
    (["validate", "{dt}", "--top", "0"], "argument --top: must be a positive integer"),
    (["zoo", "eval", "{dt}", "--episodes", "0"], "argument --episodes: must be a positive integer"),
    (["zoo", "eval", "{dt}", "--seed", "-3"], "argument --seed: must be a non-negative integer"),
    (["zoo", "build", "hopper", "--seed", "-3"], "argument --seed: must be a non-negative integer"),
    (["zoo", "build", "hopper", "--expert-minutes", "nan"], "argument --expert-minutes: must be a finite number"),
    (["zoo", "build", "hopper", "--expert-minutes", "0"], "argument --expert-minutes: must be a number above 0"),
    (["evaluate", "{dt}", "--target-return", "inf"], "argument --target-return: must be a finite number"),
    (["laser", "{dt}", "--alpha", "nan"], "argument --alpha: must be a finite number"),
])
def test_dt_bad_options(capsys, paths, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    fill = dict(dt=paths / "dt", file=paths / "file")
    code, err, _ = run(capsys, [a.format(**fill) for a in argv] + (["--quiet"] if argv[0] != "analyze" else []))
    assert_one_line(code, err, message.format(**fill))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def test_scan_out_is_written_whole_and_force_overwrites(capsys, paths, tmp_path):
    out = tmp_path / "scan.json"
    argv = ["lm", "scan", paths / "gptj", "--k", "2", "--tokens", "3", "--weights", "K", "--out", out]
    code, err, _ = run(capsys, argv)
    assert code == 0, err
    first = json.loads(out.read_text())
    code, err, _ = run(capsys, argv)
    assert_one_line(code, err, "exists; pass --force")
    code, err, _ = run(capsys, argv + ["--force"])
    assert code == 0 and json.loads(out.read_text())["config"] == first["config"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.json"]  # no temporary files left
