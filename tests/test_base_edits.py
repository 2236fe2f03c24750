"""`edits=` / `--edits DIR` on atlas and validate: the experiment runs on the model with a saved patch applied.

The reference is the same experiment run inside `with load_patch(DIR, model):` by hand: the records must be
the same, the report must name the patch, and the model must come back bitwise as it was, on success and on error.
"""
from __future__ import annotations

import json

import pytest

import surgery
from surgery import cli
from surgery.core.patching import Edit, Patch
from surgery.errors import SurgeryError
from surgery.experiments.atlas import atlas
from surgery.experiments.validate import validate
from tests.conftest import assert_bitwise_equal, snapshot
from tests.test_atlas import SMALL, _stored

# Removing block 0 V #0 makes the balancer's pole fall (tests/test_atlas.py): a base edit with a visible effect.
BASE = Edit(block=0, weight="V", idx=0, op="zero")
TINY = {**SMALL, "vectors": 2, "episodes": 6, "looks": (1.0,)}


@pytest.fixture(scope="module")
def saved_edit(balancer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("edits") / "b0-V-0-zero"
    Patch(balancer, [BASE]).save(folder)
    return folder


def test_the_atlas_of_an_edited_model_is_the_atlas_run_under_the_patch(balancer, saved_edit, tmp_path):
    before = snapshot(balancer.model)
    edited = atlas(balancer, out=tmp_path / "a", workers=0, progress=False, edits=saved_edit, **TINY)
    assert_bitwise_equal(balancer.model, before)  # reverted after the run
    with surgery.load_patch(saved_edit, balancer):
        by_hand = atlas(balancer, out=tmp_path / "b", workers=0, progress=False, **TINY)
    plain = atlas(balancer, workers=0, progress=False, **TINY)
    assert _stored(tmp_path / "a") == _stored(tmp_path / "b")
    assert list(edited.rows["damage"]) == list(by_hand.rows["damage"])
    assert edited.model["weights_sha256"] == by_hand.model["weights_sha256"] != plain.model["weights_sha256"]
    # The base edit is the one that drops the pole: the edited model's baseline is the worse one.
    assert edited.baseline.returns.mean() < plain.baseline.returns.mean()
    digest = surgery.load_patch(saved_edit, balancer).digest
    assert edited.model["edits"]["manifest_sha256"] == digest
    assert "edits b0-V-0-zero" in edited.model["model"] and "edits b0-V-0-zero" in edited.markdown()
    assert json.loads((tmp_path / "a" / "atlas.json").read_text())["model"]["edits"]["manifest_sha256"] == digest


def test_validate_on_an_edited_model_is_validate_under_the_patch(balancer, saved_edit, tmp_path):
    before = snapshot(balancer.model)
    settings = dict(top=1, controls=1, episodes=4, max_steps=40, progress=False)
    edited = validate(balancer, out=tmp_path / "a", edits=saved_edit, **settings)
    assert_bitwise_equal(balancer.model, before)
    with surgery.load_patch(saved_edit, balancer):
        by_hand = validate(balancer, out=tmp_path / "b", **settings)
    assert [o.target.to_dict() for o in edited.outcomes] == [o.target.to_dict() for o in by_hand.outcomes]
    assert list(edited.baseline.returns) == list(by_hand.baseline.returns)
    assert [o.damage.value for o in edited.outcomes] == [o.damage.value for o in by_hand.outcomes]
    assert edited.model["edits"]["edits"] == ["block 0 V #0 (write side): zero"]
    assert "edits b0-V-0-zero" in (tmp_path / "a" / "validate.md").read_text()


def test_a_patch_for_other_weights_is_refused_before_anything_is_written(balancer, tmp_path):
    from tests.experiments_models import cartpole_dt

    other, md = cartpole_dt()
    with __import__("torch").no_grad():
        other.encoder.h[0].mlp.c_proj.weight.mul_(2.0)  # the tensor the patch edits, changed
    other = surgery.load(other, metadata=md)
    folder = tmp_path / "edit"
    Patch(other, [BASE]).save(folder)
    before = snapshot(balancer.model)
    for run in (lambda: atlas(balancer, out=tmp_path / "atlas", workers=0, progress=False, edits=folder, **TINY),
                lambda: validate(balancer, out=tmp_path / "validate", edits=folder, top=1, episodes=2, max_steps=10,
                                 progress=False)):
        with pytest.raises(SurgeryError, match="c_proj"):
            run()
        assert_bitwise_equal(balancer.model, before)
    assert not (tmp_path / "atlas").exists() and not (tmp_path / "validate").exists()


def test_an_error_inside_the_run_reverts_the_base_edit(balancer, saved_edit):
    before = snapshot(balancer.model)
    with pytest.raises(SurgeryError, match="triple"):  # block 0 V #0 twice in the plan: refused inside the `with`
        atlas(balancer, workers=0, progress=False, edits=saved_edit, triples=[(0, "V", 0), (0, "V", 0)],
              episodes=4, max_steps=10)
    assert_bitwise_equal(balancer.model, before)


def test_cli_edits_flag_runs_the_edited_model_into_its_own_folder(balancer_checkpoint, saved_edit, tmp_path,
                                                                   monkeypatch, capsys):
    # The patch was saved on the in-memory balancer; the checkpoint holds the same weights, so it loads there too.
    monkeypatch.chdir(tmp_path)
    flags = ["--weights", "V", "--vectors", "1", "--episodes", "4", "--looks", "1", "--max-steps", "30",
             "--workers", "0", "--quiet", "--json"]
    assert cli.main(["atlas", str(balancer_checkpoint), *flags, "--edits", str(saved_edit)]) == 0
    report = json.loads(capsys.readouterr().out)
    out = tmp_path / "runs" / "atlas" / f"{balancer_checkpoint.name}-V-zero-edited-b0-V-0-zero"
    assert report["model"]["edits"]["folder"] == str(saved_edit)
    assert (out / "atlas.json").is_file()
    assert cli.main(["atlas", str(balancer_checkpoint), *flags]) == 0  # unedited: another folder
    assert (tmp_path / "runs" / "atlas" / f"{balancer_checkpoint.name}-V-zero" / "atlas.json").is_file()
    assert cli.main(["atlas", str(balancer_checkpoint), *flags, "--edits", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
