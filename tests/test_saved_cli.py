"""Edits as files from the command line: edit-eval --save-edit / --edits, and `surgery export` read by both loaders."""
from __future__ import annotations

import json

import pytest
import torch

import surgery
from surgery import cli
from surgery.core import saved
from surgery.errors import SurgeryError
from surgery.export import export
from surgery.files import file_sha256
from tests.conftest import assert_bitwise_equal, build, snapshot

RUN = ["--episodes", "4", "--max-steps", "30", "--quiet", "--json"]


def _run(folder) -> tuple[dict, list]:
    """The experiment spec (minus the store's creation time) and every episode (minus when it finished) of a run."""
    import sqlite3

    with sqlite3.connect(folder / "episodes.sqlite") as conn:
        spec = json.loads(dict(conn.execute("SELECT name, value FROM experiment"))["spec"])
        conn.row_factory = sqlite3.Row
        episodes = [{k: r[k] for k in r.keys() if k != "finished_at"}
                    for r in conn.execute("SELECT * FROM episodes ORDER BY episode")]
    return spec, episodes


def _report(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_edit_eval_saves_its_edit_and_runs_a_saved_one_the_same(balancer_checkpoint, tmp_path, capsys):
    edit = tmp_path / "edit"
    flags = ["--block", "0", "--weight", "K", "--idx", "0", "--op", "scale", "--value", "-1"]
    assert cli.main(["edit-eval", str(balancer_checkpoint), *flags, "--save-edit", str(edit), "--out", str(tmp_path / "a"),
                     *RUN]) == 0
    a = _report(capsys)
    assert saved._not_replaceable(edit) is None  # a saved patch is there
    assert cli.main(["edit-eval", str(balancer_checkpoint), "--edits", str(edit), "--out", str(tmp_path / "b"), *RUN]) == 0
    b = _report(capsys)
    assert b["edits"] == a["edits"] and a["edits"][0]["op"] == "scale"
    # The same saved patch (named by its digest in both stores), so the same episodes.
    (spec_a, episodes_a), (spec_b, episodes_b) = _run(tmp_path / "a" / "edited"), _run(tmp_path / "b" / "edited")
    assert episodes_a == episodes_b and spec_a == spec_b and len(spec_b["patch_digest"]) == 64
    assert b["edited"] == a["edited"] and b["baseline"] == a["baseline"]
    assert a["edited"]["return"]["mean"] != a["baseline"]["return"]["mean"]  # the edit does something here

    # A rerun finds its edit already saved and reuses it; another edit is not written over it.
    assert cli.main(["edit-eval", str(balancer_checkpoint), *flags, "--save-edit", str(edit), "--out", str(tmp_path / "a"),
                     *RUN]) == 0
    assert "already saved" in capsys.readouterr().err
    assert cli.main(["edit-eval", str(balancer_checkpoint), "--block", "0", "--weight", "V", "--save-edit", str(edit),
                     "--out", str(tmp_path / "c"), *RUN]) == 2
    assert "already holds other edits (block 0 K #0" in capsys.readouterr().err


def test_edit_eval_refuses_a_patch_saved_for_another_model(balancer_checkpoint, tmp_path, capsys):
    Patch_for_gpt2 = surgery.Patch(build("gpt2"), [dict(block=0, weight="K")])
    Patch_for_gpt2.save(tmp_path / "edit")
    assert cli.main(["edit-eval", str(balancer_checkpoint), "--edits", str(tmp_path / "edit"), "--out", str(tmp_path / "o"),
                     *RUN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved for another model shape" in err[0] and "d_model 24 (saved) vs 64" in err[0]


def test_export_a_decision_transformer_that_both_loaders_read(balancer_checkpoint, tmp_path, capsys):
    from transformers import DecisionTransformerModel

    source = surgery.load(balancer_checkpoint)
    edits = [dict(block=0, weight="V", idx=0, op="zero"), dict(block=1, weight="OV", head=0, idx=2)]
    surgery.Patch(source, edits).save(tmp_path / "edit")
    with surgery.Patch(source, edits):
        want = snapshot(source.model)
    out = tmp_path / "ckpt"
    assert cli.main(["export", str(balancer_checkpoint), "--edits", str(tmp_path / "edit"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    ours = surgery.load(out)
    assert_bitwise_equal(ours.model, want)
    assert ours.metadata.env_id == "CartPole-v1" and ours.metadata.evaluation == {}
    assert "Edited with svd-surgery" in ours.metadata.notes
    theirs = DecisionTransformerModel.from_pretrained(out, local_files_only=True)
    assert_bitwise_equal(theirs, want)

    card = (out / "README.md").read_text()
    assert "block 0 V #0 (write side): zero" in card and "block 1 OV head 0 #2 (write side): constant" in card
    source_sha = surgery.behaviour.evaluation.weights_sha256(source.model)
    assert f"weights SHA-256 `{source_sha}`" in card
    assert f"Edited weights: SHA-256 `{surgery.behaviour.evaluation.weights_sha256(theirs)}`" in card
    assert f"`surgery export {balancer_checkpoint} --edits {tmp_path / 'edit'} --out {out}`" in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert "model.safetensors" in manifest["files"] and "edits/updates.safetensors" in manifest["files"]
    for name, f in manifest["files"].items():
        assert file_sha256(out / name) == f["sha256"], name
    assert not any(p.suffix in (".bin", ".pt", ".pkl") for p in out.rglob("*"))  # no pickle
    # The patch inside re-applies to the source, bitwise.
    with surgery.load_patch(out / "edits", source):
        assert_bitwise_equal(source.model, want)


@pytest.mark.parametrize("kind", ["gpt2", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
def test_export_a_language_model_that_both_loaders_read(kind, dtype, tmp_path):
    import transformers

    model = build(kind).to(dtype)
    before = snapshot(model)
    patch = surgery.Patch(model, [dict(block=1, weight="K", idx=0), dict(block=0, weight="QK", head=2, idx=1,
                                                                        op="scale", value=3.0)])
    with patch:
        want = snapshot(model)
    export(model, patch, tmp_path / "ckpt")
    assert_bitwise_equal(model, before)  # the source is left as it was
    assert_bitwise_equal(surgery.load(tmp_path / "ckpt").model, want)
    cls = getattr(transformers, type(model).__name__)
    assert_bitwise_equal(cls.from_pretrained(tmp_path / "ckpt", local_files_only=True), want)
    assert "block 0 QK head 2 #1 (read side): scale 3" in (tmp_path / "ckpt" / "README.md").read_text()


def test_export_refuses_to_replace_what_is_not_an_export(tmp_path):
    model = build("gpt2")
    patch = surgery.Patch(model, [dict(block=1, weight="K")])
    export(model, patch, tmp_path / "ckpt")
    with pytest.raises(SurgeryError, match="already exists"):
        export(model, patch, tmp_path / "ckpt")
    export(model, patch, tmp_path / "ckpt", overwrite=True)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.json").write_text("{}")
    with pytest.raises(SurgeryError, match="does not hold an export"):
        export(model, patch, tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "config.json").read_text() == "{}"
    with pytest.raises(SurgeryError, match="load it first"):
        export("hopper", patch, tmp_path / "x")
    with patch, pytest.raises(SurgeryError, match="revert it first"):
        export(model, patch, tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "mine"]
