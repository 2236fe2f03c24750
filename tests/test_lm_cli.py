"""`surgery lm ...` end to end on tiny models saved to disk."""
from __future__ import annotations

import json

import pytest

from surgery.cli import lm as lm_cli
from tests.lm_fixtures import make_tokenizer, saved_model


def test_scan_tokens_and_width_commands(tmp_path, capsys):
    saved_model("gptj", tmp_path / "m")
    make_tokenizer(tmp_path / "m")
    out = tmp_path / "scan.json"
    assert lm_cli.main(["scan", str(tmp_path / "m"), "--k", "2", "--tokens", "3", "--dtype", "bf16",
                        "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["config"]["k"] == 2 and {v["weight"] for v in doc["vectors"]} == {"K", "V", "OV", "QK"}
    assert lm_cli.main(["tokens", str(tmp_path / "m"), "--block", "1", "--weight", "OV", "--head", "2",
                        "--k", "2", "--tokens", "3"]) == 0
    text = capsys.readouterr().out
    assert "block 1 OV head 2: out side vs token_out" in text and "'w" in text  # decoded by the saved tokenizer
    assert lm_cli.main(["width", str(tmp_path / "m"), "--blocks", "1", "--k", "2", "--draws", "50"]) == 0
    assert "median z" in capsys.readouterr().out


def test_errors_are_one_line(tmp_path, capsys):
    assert lm_cli.main(["scan", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("surgery lm scan: error: ") and "nowhere' does not exist" in err
    with pytest.raises(SystemExit) as e:  # a count is checked as the arguments are parsed
        lm_cli.main(["scan", "random:gpt2-small", "--blocks", "1", "--k", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("surgery lm scan: error: argument --k: must be a positive integer, got '0' "
                                       "(see surgery lm scan --help)\n")


def test_width_compares_models_of_different_depths_over_the_shallower_ones_blocks(tmp_path, capsys):
    """`--blocks 3` with a 2-block and a 3-block model (as GPT-2's 12 against GPT-J's 28): the first 2 of each."""
    saved_model("gptj", tmp_path / "m")
    make_tokenizer(tmp_path / "m")
    assert lm_cli.main(["width", str(tmp_path / "m"), "random:gpt2-small", "--blocks", "3", "--k", "2",
                        "--draws", "50", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "comparing the first 2 blocks: the shallowest model has 2" in captured.err
    assert "median z" in captured.out
