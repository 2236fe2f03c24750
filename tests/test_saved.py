"""Saved patches: a loaded patch gives bitwise the original's weights; damaged, foreign or newer folders are refused."""
from __future__ import annotations

import json
import os

import pytest
import torch

import surgery
import surgery.core.patching as patching
import surgery.core.saved as saved
from surgery import Patch
from surgery.errors import SurgeryError
from surgery.files import file_sha256
from tests.conftest import assert_bitwise_equal, build, snapshot

EDITS = [
    dict(block=0, weight="K", idx=1),                                  # the study's edit, read side
    dict(block=1, weight="K", idx=0, op="scale", value=0.25, side="out"),
    dict(block=1, weight="V", idx=2, op="zero"),
    dict(block=0, weight="V", op="keep_top", value=5),                 # a rank-19 update
    dict(block=0, weight="OV", head=1, idx=0),                         # write side: W_O
    dict(block=1, weight="OV", head=2, idx=3, op="zero", side="in"),   # read side: W_V
    dict(block=0, weight="QK", head=0, idx=1, op="scale", value=-2.0),  # read side: W_Q
    dict(block=1, weight="QK", head=1, idx=0, side="out"),             # key side: W_K
    dict(block=0, weight="K", idx=4, op="replace", value=torch.linspace(-1, 1, 24, dtype=torch.float64)),
]


def _model(kind="gpt2", dtype=torch.float32, seed=0):
    return build(kind, seed=seed).to(dtype)


def _edited(model, edits) -> dict:
    with Patch(model, edits):
        return snapshot(model)


@pytest.mark.parametrize("kind", ["dt", "gpt2", "gptj"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("route", ["addmm", "addr"])
def test_a_loaded_patch_gives_bitwise_the_original_weights(kind, dtype, route, tmp_path, monkeypatch):
    # Rank-1 updates of large matrices go through `addr_`; force each route on these small ones.
    monkeypatch.setattr(patching, "_OUTER_PRODUCT_MIN", 0 if route == "addr" else 1 << 62)
    model = _model(kind, dtype)
    before = snapshot(model)
    original = Patch(model, EDITS)
    original.save(tmp_path / "edit")
    want = _edited(model, EDITS)
    assert any(not torch.equal(want[k], before[k]) for k in before)  # the edits do something

    loaded = surgery.load_patch(tmp_path / "edit", model)
    assert not loaded.active
    assert_bitwise_equal(model, before)  # loading changes nothing
    with loaded:
        assert_bitwise_equal(model, want)
    assert_bitwise_equal(model, before)  # and restores exactly, like any patch
    loaded.apply()
    loaded.revert()
    assert_bitwise_equal(model, before)


def test_a_loaded_patch_on_a_fresh_copy_of_the_model(tmp_path):
    a, b = _model(), _model()  # the same weights, another model object (another session)
    Patch(a, EDITS).save(tmp_path / "edit")
    want = _edited(a, EDITS)
    with surgery.load_patch(tmp_path / "edit", b):
        assert_bitwise_equal(b, want)


def test_a_loaded_patch_adds_the_saved_factors_without_decomposing(tmp_path, monkeypatch):
    model = _model()
    Patch(model, EDITS).save(tmp_path / "edit")
    want = _edited(model, EDITS)
    loaded = surgery.load_patch(tmp_path / "edit", model)

    def no_svd(*args, **kwargs):
        raise AssertionError("a loaded patch recomputed an update")

    monkeypatch.setattr(patching, "updates", no_svd)
    with loaded:
        assert_bitwise_equal(model, want)


def test_saved_factors_are_the_update_in_float64(tmp_path):
    # Independent of apply: edited - before == left @ right (to float32 rounding) for each saved update.
    model = _model("gpt2", torch.float64)
    edit = dict(block=1, weight="K", idx=2, op="zero")
    Patch(model, [edit]).save(tmp_path / "edit")
    W = model.transformer.h[1].mlp.c_fc.weight.detach().clone()
    U, S, V = surgery.decompose(model, block=1, weight="K")
    from safetensors.torch import load_file

    f = load_file(tmp_path / "edit" / saved.UPDATES)
    delta = f["updates.0.left"] @ f["updates.0.right"]
    torch.testing.assert_close(delta, -S[2] * torch.outer(U[:, 2], V[:, 2]), rtol=0, atol=1e-12)
    with surgery.load_patch(tmp_path / "edit", model):
        torch.testing.assert_close(model.transformer.h[1].mlp.c_fc.weight - W, delta, rtol=0, atol=1e-12)


def test_the_folder_records_edits_hashes_versions_and_method(tmp_path):
    model = _model()
    Patch(model, EDITS).save(tmp_path / "edit")
    spec = json.loads((tmp_path / "edit" / saved.SPEC).read_text())
    assert spec["format_version"] == saved.FORMAT_VERSION
    assert spec["library"]["torch"] == torch.__version__ and spec["library"]["svd-surgery"]
    assert spec["decomposition"]["method"] == "exact" and "largest magnitude" in spec["decomposition"]["sign_rule"]
    assert spec["model"]["class"] == "GPT2LMHeadModel" and spec["model"]["d_model"] == 24
    assert [e["weight"] for e in spec["edits"]] == [e["weight"] for e in EDITS]
    assert spec["edits"][0]["value"] == 1 / 24  # defaults resolved: the constant is 1/d_model
    assert spec["edits"][-1]["value"] == {"tensor": "edits.8.value"}
    params = dict(model.named_parameters())
    touched = {u["tensor"] for u in spec["updates"]}
    assert touched == set(spec["tensors"]) == {
        "transformer.h.0.mlp.c_fc.weight", "transformer.h.1.mlp.c_fc.weight", "transformer.h.0.mlp.c_proj.weight",
        "transformer.h.1.mlp.c_proj.weight", "transformer.h.0.attn.c_proj.weight", "transformer.h.0.attn.c_attn.weight",
        "transformer.h.1.attn.c_attn.weight"}
    import hashlib

    for name, t in spec["tensors"].items():  # hashes of the weights before the edit, computed another way
        p = params[name].detach()
        assert t["sha256"] == hashlib.sha256(p.numpy().tobytes()).hexdigest()
    manifest = json.loads((tmp_path / "edit" / saved.MANIFEST).read_text())
    for name, f in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "edit" / name).read_bytes()).hexdigest() == f["sha256"]


def test_the_same_patch_saves_to_the_same_bytes(tmp_path):
    model = _model()
    Patch(model, EDITS).save(tmp_path / "a")
    for i in range(6):  # safetensors' own header key order varied between calls
        Patch(model, EDITS).save(tmp_path / f"again{i}")
        assert (tmp_path / f"again{i}" / saved.UPDATES).read_bytes() == (tmp_path / "a" / saved.UPDATES).read_bytes()
    surgery.load_patch(tmp_path / "a", model).save(tmp_path / "b")  # a loaded patch saves its own factors
    Patch(model, EDITS).save(tmp_path / "c")
    for name in (saved.SPEC, saved.UPDATES, saved.MANIFEST):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes() == \
            (tmp_path / "c" / name).read_bytes()
    assert surgery.load_patch(tmp_path / "a", model).digest == surgery.load_patch(tmp_path / "c", model).digest


# ---- refusals -----------------------------------------------------------------------------------------
def test_a_model_with_other_weights_is_refused_naming_the_tensor_and_both_hashes(tmp_path):
    model = _model()
    Patch(model, [dict(block=1, weight="V", idx=0)]).save(tmp_path / "edit")
    spec = json.loads((tmp_path / "edit" / saved.SPEC).read_text())
    other = _model(seed=1)
    before = snapshot(other)
    with pytest.raises(SurgeryError) as e:
        surgery.load_patch(tmp_path / "edit", other)
    msg = str(e.value)
    assert "transformer.h.1.mlp.c_proj.weight" in msg
    assert spec["tensors"]["transformer.h.1.mlp.c_proj.weight"]["sha256"] in msg
    assert saved.tensor_sha256(other.transformer.h[1].mlp.c_proj.weight) in msg
    assert_bitwise_equal(other, before)


def test_only_the_touched_tensors_must_match(tmp_path):
    model = _model()
    Patch(model, [dict(block=1, weight="V", idx=0)]).save(tmp_path / "edit")
    with torch.no_grad():
        model.transformer.ln_f.weight.add_(1.0)  # not touched by the patch
    surgery.load_patch(tmp_path / "edit", model)


def test_a_weight_changed_after_loading_is_refused_at_apply(tmp_path):
    model = _model()
    Patch(model, [dict(block=1, weight="K", idx=0)]).save(tmp_path / "edit")
    loaded = surgery.load_patch(tmp_path / "edit", model)
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] += 1.0
    before = snapshot(model)
    with pytest.raises(SurgeryError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight differs"):
        loaded.apply()
    assert not loaded.active
    assert_bitwise_equal(model, before)
    with surgery.patch(model, block=0, weight="K"):  # the lock was released
        pass


def test_a_model_converted_after_loading_is_refused_at_apply(tmp_path):
    # module.to(dtype) swaps a parameter's data but keeps its id and version counter.
    model = _model()
    Patch(model, [dict(block=1, weight="K", idx=0)]).save(tmp_path / "edit")
    loaded = surgery.load_patch(tmp_path / "edit", model)
    model.to(torch.bfloat16)
    before = snapshot(model)
    with pytest.raises(SurgeryError, match=r"c_fc\.weight is bfloat16 .* saved for float32"):
        loaded.apply()
    assert_bitwise_equal(model, before)


def test_another_dtype_is_refused_saying_so(tmp_path):
    model = _model()
    Patch(model, [dict(block=1, weight="K", idx=0)]).save(tmp_path / "edit")
    with pytest.raises(SurgeryError, match=r"bfloat16 .* saved for float32"):
        surgery.load_patch(tmp_path / "edit", _model(dtype=torch.bfloat16))


def test_another_shape_of_model_is_refused_listing_the_differences(tmp_path):
    Patch(_model(), [dict(block=1, weight="K", idx=0)]).save(tmp_path / "edit")
    with pytest.raises(SurgeryError, match=r"d_mlp 48 \(saved\) vs 24 \(this model\)"):
        surgery.load_patch(tmp_path / "edit", build("gpt2", square=True))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("name", [saved.SPEC, saved.UPDATES])
def test_a_damaged_file_is_refused_naming_it(tmp_path, name, damage):
    model = _model()
    Patch(model, EDITS).save(tmp_path / "edit")
    path = tmp_path / "edit" / name
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
    else:
        data = data[: len(data) - 7]
    path.write_bytes(bytes(data))
    with pytest.raises(SurgeryError, match=rf"{name}.* (damaged|truncated)"):
        surgery.load_patch(tmp_path / "edit", model)


def test_missing_files_and_foreign_folders_are_refused(tmp_path):
    model = _model()
    Patch(model, [dict(block=1, weight="K")]).save(tmp_path / "edit")
    (tmp_path / "edit" / saved.UPDATES).unlink()
    with pytest.raises(SurgeryError, match=r"updates\.safetensors is missing"):
        surgery.load_patch(tmp_path / "edit", model)
    (tmp_path / "other").mkdir()
    with pytest.raises(SurgeryError, match="not a saved patch"):
        surgery.load_patch(tmp_path / "other", model)
    with pytest.raises(FileNotFoundError):
        surgery.load_patch(tmp_path / "nothing", model)
    with pytest.raises(SurgeryError, match="load it first"):
        surgery.load_patch(tmp_path / "edit", "hopper")
    with pytest.raises(SurgeryError, match=r"takes the folder first, got GPT2LMHeadModel"):
        surgery.load_patch(model, tmp_path / "edit")


@pytest.mark.parametrize("where", [saved.MANIFEST, saved.SPEC])
def test_a_newer_format_is_refused_saying_which(tmp_path, where):
    model = _model()
    Patch(model, [dict(block=1, weight="K")]).save(tmp_path / "edit")
    folder = tmp_path / "edit"
    d = json.loads((folder / where).read_text())
    d["format_version"] = saved.FORMAT_VERSION + 1
    (folder / where).write_text(json.dumps(d))
    if where == saved.SPEC:  # re-sign it, so only the version is wrong
        m = json.loads((folder / saved.MANIFEST).read_text())
        m["files"][saved.SPEC] = {"bytes": (folder / where).stat().st_size,
                                  "sha256": file_sha256(folder / where)}
        (folder / saved.MANIFEST).write_text(json.dumps(m))
    with pytest.raises(SurgeryError, match=rf"format version {saved.FORMAT_VERSION + 1}; this svd-surgery reads "
                                           rf"versions up to {saved.FORMAT_VERSION}"):
        surgery.load_patch(folder, model)


def test_an_applied_patch_is_not_saved(tmp_path):
    model = _model()
    with Patch(model, [dict(block=1, weight="K")]) as p:
        with pytest.raises(SurgeryError, match="applied"):
            p.save(tmp_path / "edit")
    assert not (tmp_path / "edit").exists()


# ---- atomic writes --------------------------------------------------------------------------------------
def test_an_existing_folder_is_kept_unless_overwrite(tmp_path):
    model = _model()
    Patch(model, [dict(block=1, weight="K")]).save(tmp_path / "edit")
    first = (tmp_path / "edit" / saved.MANIFEST).read_bytes()
    with pytest.raises(SurgeryError, match="already exists"):
        Patch(model, [dict(block=0, weight="V")]).save(tmp_path / "edit")
    assert (tmp_path / "edit" / saved.MANIFEST).read_bytes() == first
    Patch(model, [dict(block=0, weight="V")]).save(tmp_path / "edit", overwrite=True)
    assert surgery.load_patch(tmp_path / "edit", model).edits[0].weight == "V"
    assert sorted(os.listdir(tmp_path)) == ["edit"]  # no temporary folders left behind


def test_overwrite_replaces_only_a_saved_patch(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SurgeryError, match="does not hold a saved patch"):
        Patch(_model(), [dict(block=1, weight="K")]).save(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_write_leaves_no_half_folder(tmp_path, monkeypatch, existing):
    model = _model()
    if existing:
        Patch(model, [dict(block=1, weight="K")]).save(tmp_path / "edit")
    old = sorted(p.read_bytes() for p in (tmp_path / "edit").iterdir()) if existing else None
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(saved, "_safetensors_bytes", disk_full)
    with pytest.raises(OSError, match="No space"):
        Patch(model, [dict(block=0, weight="V")]).save(tmp_path / "edit", overwrite=True)
    assert os.listdir(tmp_path) == (["edit"] if existing else [])
    if existing:
        assert sorted(p.read_bytes() for p in (tmp_path / "edit").iterdir()) == old


def test_replacing_without_an_atomic_exchange_still_works(tmp_path, monkeypatch):
    import surgery.files as files

    monkeypatch.setattr(files, "_rename_exchange", lambda a, b: False)  # e.g. not Linux
    model = _model()
    Patch(model, [dict(block=1, weight="K")]).save(tmp_path / "edit")
    Patch(model, [dict(block=0, weight="V")]).save(tmp_path / "edit", overwrite=True)
    assert surgery.load_patch(tmp_path / "edit", model).edits[0].weight == "V"
    assert sorted(os.listdir(tmp_path)) == ["edit"]


def test_lanes_of_a_loaded_patch_add_its_saved_factors(tmp_path, monkeypatch):
    """The rollout engine takes a loaded patch as one edit and never recomputes its update."""
    from surgery.behaviour.lanes import LaneEdits

    model = _model()
    original = Patch(model, EDITS)
    original.save(tmp_path / "edit")
    want = [u for per_edit in original.plan() for u in per_edit]
    loaded = surgery.load_patch(tmp_path / "edit", model)

    def no_svd(*args, **kwargs):
        raise AssertionError("lanes recomputed a loaded patch's update")

    monkeypatch.setattr(patching, "updates", no_svd)
    lanes = LaneEdits(model, [loaded])
    assert lanes.edits[0] == loaded.edits and len(lanes.deltas[0]) == len(want)


def test_atomic_folders_get_ordinary_permissions(tmp_path):
    """A file written 0600 inside (transformers 5's model.safetensors) comes out as any other: 0666 minus umask."""
    import os
    import stat

    from surgery.files import atomic_folder

    umask = os.umask(0)
    os.umask(umask)
    with atomic_folder(tmp_path / "ckpt") as new:
        (new / "model.safetensors").write_bytes(b"x")
        os.chmod(new / "model.safetensors", 0o600)
        (new / "config.json").write_text("{}")
    for name in ("model.safetensors", "config.json"):
        assert stat.S_IMODE((tmp_path / "ckpt" / name).stat().st_mode) == 0o666 & ~umask
