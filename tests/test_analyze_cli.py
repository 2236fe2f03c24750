"""`surgery analyze`: checkpoint directories, a saved GPT-2 with a tokenizer, the HF cache, the zoo, bad input."""
from __future__ import annotations

import csv
import io
import json

import pytest

from surgery import cli
from tests.conftest import build

pytestmark = pytest.mark.usefixtures("one_thread")


def run(capsys, *argv):
    code = cli.main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def dt_dir(tmp_path_factory):
    from surgery.behaviour.metadata import DTMetadata

    path = tmp_path_factory.mktemp("dt")
    build("dt").save_pretrained(path)
    DTMetadata(env_id="Hopper-v5", state_dim=5, act_dim=3, max_ep_len=40, state_names=["z", "angle", "thigh", "leg",
               "foot"], action_names=["thigh_joint", "leg_joint", "foot_joint"]).save(path)
    return path


LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWX"


def save_tiny_gpt2(path):
    """A tiny GPT-2 with a tiny byte-level BPE tokenizer (50 one-letter tokens), as `save_pretrained` writes it."""
    from transformers import GPT2Tokenizer

    build("gpt2").save_pretrained(path)
    vocab = {c: i for i, c in enumerate(LETTERS)}
    try:
        tok = GPT2Tokenizer(vocab=vocab, merges=[])  # transformers >= 5
    except TypeError:  # transformers 4: from files
        (path / "vocab.json").write_text(json.dumps(vocab))
        (path / "merges.txt").write_text("#version: 0.2\n")
        tok = GPT2Tokenizer(vocab_file=str(path / "vocab.json"), merges_file=str(path / "merges.txt"))
    tok.save_pretrained(path)
    return path


def test_dt_checkpoint_dir(capsys, tmp_path, dt_dir):
    out = tmp_path / "report"
    code, stdout, err = run(capsys, dt_dir, "--out", out, "--top", 3)
    assert code == 0, err
    assert "embedding" in stdout and "needs |cos|" in stdout and "action_out" in stdout
    assert "Searched K read, V write, OV read+write, QK query+key of blocks 0..1" in stdout
    assert "Ties: neighbours closer than" in stdout and "its group (span)" in stdout
    for f in ("report.html", "report.md", "summary.csv", "weights.csv", "vectors.csv", "groups.csv", "alignment.csv",
              "summary.json", "figures/overview.png"):
        assert (out / f).is_file(), f
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 + 3 * 7
    assert "thigh_joint" in (out / "alignment.csv").read_text()  # labels are the metadata's names
    assert not list(out.rglob("*.tmp"))


def test_saved_gpt2_with_tokenizer(capsys, tmp_path):
    model_dir = save_tiny_gpt2(tmp_path / "gpt2")
    out = tmp_path / "report"
    code, stdout, err = run(capsys, model_dir, "--out", out, "--weights", "K", "V", "OV", "--embeddings", "token_out",
                            "--no-figures")
    assert code == 0, err
    assert "token_out" in stdout and "token_in" not in stdout
    labels = {r["label"] for r in csv.DictReader(io.StringIO((out / "vectors.csv").read_text()))}
    assert labels and labels <= set(LETTERS)  # decoded tokens, not "#12"


def test_hf_name_found_in_local_cache(capsys, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    snapshot = tmp_path / "hub" / "models--tiny-org--tiny-gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_tiny_gpt2(snapshot)
    (tmp_path / "hub" / "models--tiny-org--tiny-gpt2" / "refs").mkdir()
    (tmp_path / "hub" / "models--tiny-org--tiny-gpt2" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code, stdout, err = run(capsys, "tiny-org/tiny-gpt2", "--no-report", "--weights", "K", "--vectors", 4)
    assert code == 0, err
    assert "Alignment of tiny-org/tiny-gpt2" in stdout
    code, _, err = run(capsys, "tiny-org/not-cached", "--no-report")
    assert code == 2 and "neither a checkpoint directory, a zoo model name nor a model in the local Hugging Face " \
        "cache" in err and "nothing is downloaded" in err


@pytest.mark.parametrize("args, message", [
    (["--embeddings", "nope"], "unknown embedding set(s) ['nope']; this model has: state_in, action_in"),
    (["--blocks", "7"], "block [7] out of range: this model has 2 blocks (valid: 0..1)"),
    (["--heads", "9"], "head [9] out of range"),
    (["--noise", "-0.1"], "noise=-0.1 must be a non-negative number"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, dt_dir, args, message):
    code, stdout, err = run(capsys, dt_dir, "--out", tmp_path / "r", *args)
    assert code == 2
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    assert err.startswith("surgery analyze: error: ") and message in err
    assert not (tmp_path / "r").exists()  # nothing written


def test_missing_model_path(capsys, tmp_path):
    code, _, err = run(capsys, tmp_path / "no-such-model")
    assert code == 2 and "does not exist" in err and str(tmp_path / "no-such-model") in err


def test_out_is_a_file(capsys, tmp_path, dt_dir):
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, dt_dir, "--out", tmp_path / "file", "--embeddings", "return_in", "--no-figures")
    assert code == 2 and "is not a directory" in err


def test_bad_option_values_exit_2(capsys, dt_dir):
    with pytest.raises(SystemExit) as e:
        run(capsys, dt_dir, "--top", "0")
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        run(capsys, dt_dir, "--weights", "Q")


def test_failure_while_rendering_writes_nothing(capsys, tmp_path, dt_dir, monkeypatch):
    from surgery.analysis.report import figures

    def broken(*a, **k):
        raise RuntimeError("matplotlib exploded")

    monkeypatch.setattr(figures, "spectra", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        run(capsys, dt_dir, "--out", tmp_path / "r", "--embeddings", "return_in")
    assert not (tmp_path / "r").exists()


def test_zoo_model(capsys, tmp_path):
    from surgery import zoo

    if "hopper" not in zoo.names():
        pytest.skip("the zoo's hopper checkpoint is not shipped yet")
    code, stdout, err = run(capsys, "hopper", "--out", tmp_path / "r", "--no-figures", "--top", 3)
    assert code == 0, err
    assert "action_out" in stdout and "thigh" in (tmp_path / "r" / "vectors.csv").read_text()
    summary = {r["embedding"]: r for r in csv.DictReader(io.StringIO((tmp_path / "r" / "summary.csv").read_text()))}
    # A DT trained to predict actions reads and writes its action directions beyond chance somewhere.
    assert int(summary["action_out"]["n_significant"]) > 0, summary["action_out"]
