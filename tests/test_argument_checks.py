"""Bad arguments fail where they enter, with one SurgeryError naming what was wrong and what is valid.

A class of defect, not one example: every public entry point that takes a level, a count or an index
checks it through `surgery.checks` before any episode, SVD or file write; numpy integers read out of
analysis tables count as integers; nothing is written when a check fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import surgery
from surgery import checks, cli, stats
from surgery.analysis.settings import AlignmentSettings
from surgery.errors import SurgeryError
from tests.conftest import assert_bitwise_equal, build, snapshot


@pytest.mark.parametrize("call, message", [
    (lambda: checks.integer(True, "n"), "must be an integer"),
    (lambda: checks.integer(2.0, "n"), "must be an integer"),
    (lambda: checks.integer(-1, "n", low=0), r"out of range \(valid: 0 or more\)"),
    (lambda: checks.integer(9, "n", 0, 3), r"valid: 0\.\.3"),
    (lambda: checks.level(float("nan")), "got nan"),
    (lambda: checks.level(1.0), "strictly between 0 and 1"),
    (lambda: checks.level("0.05"), "got str"),
    (lambda: checks.positive_number(float("inf"), "x"), "finite number above 0"),
])
def test_checks_refuse_saying_what_is_valid(call, message):
    with pytest.raises(SurgeryError, match=message):
        call()


def test_checks_take_numpy_and_torch_integers():
    assert checks.integer(np.int64(3), "n") == 3 and type(checks.integer(torch.tensor(3), "n")) is int
    assert checks.level(np.float32(0.25)) == 0.25


@pytest.mark.parametrize("call, message", [
    (lambda: stats.mean_ci([1.0, 2.0, 4.0], confidence=2), "confidence=2"),
    (lambda: stats.mean_ci([1.0, 2.0, 4.0], n_resamples=0), "n_resamples=0"),
    (lambda: stats.mean_ci([1.0, 2.0, 4.0], method="foo"), "valid: 'BCa'"),
    (lambda: stats.failure_rate([True, False], confidence=1.5), "confidence=1.5"),
    (lambda: stats.sign_flip_p([1.0, 2.0], resolution=0), "resolution=0"),
    (lambda: stats.pairs_needed(0.0), "alpha=0.0"),  # searched forever before
    (lambda: stats.too_few_pairs(10, 0.0), "alpha=0.0"),
])
def test_statistics_refuse_bad_parameters(call, message):
    with pytest.raises(SurgeryError, match=message):
        call()


@pytest.mark.parametrize("alpha", [0.0, 2.0, float("nan")])
def test_edit_eval_refuses_a_level_outside_0_1_before_playing(balancer, alpha, tmp_path):
    from surgery.experiments.edit_eval import edit_eval

    with pytest.raises(SurgeryError, match="alpha"):
        edit_eval(balancer, dict(block=0, weight="V", idx=1, op="scale", value=1.0), episodes=6, alpha=alpha,
                  out=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_numpy_indices_from_an_analysis_table_patch_the_same_weights():
    model = build("dt")
    al = surgery.alignment(model, weights="K", embeddings="action_out", progress=False)
    block, idx = al.vectors["block"][0], al.vectors["idx"][0]
    assert isinstance(block, np.integer)
    before = snapshot(model)
    with surgery.patch(model, block=int(block), weight="K", idx=int(idx)):
        expected = snapshot(model)
    with surgery.patch(model, block=block, weight="K", idx=idx):
        assert_bitwise_equal(model, expected)
    with surgery.patch(model, block=torch.tensor(0), weight="K", op="keep_top", value=np.int64(3)):
        pass
    assert_bitwise_equal(model, before)
    assert surgery.decompose(model, np.int64(0), "K").S.shape == surgery.decompose(model, 0, "K").S.shape


@pytest.mark.parametrize("kwargs, message", [
    (dict(max_steps=2.5), "max_steps"), (dict(seed=1.5), "seed"), (dict(batch_size="4"), "batch_size"),
    (dict(dtype="float8"), "dtype"),
])
def test_evaluate_refuses_bad_settings(balancer, kwargs, message):
    with pytest.raises(SurgeryError, match=message):
        surgery.evaluate(balancer, episodes=2, progress=False, **kwargs)


def test_evaluate_takes_the_dtype_names_the_settings_records_use(balancer):
    named = surgery.evaluate(balancer, episodes=2, max_steps=20, dtype="bfloat16", progress=False)
    typed = surgery.evaluate(balancer, episodes=2, max_steps=20, dtype=torch.bfloat16, progress=False)
    assert list(named.returns) == list(typed.returns)


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha="0.05"), "alpha"), (dict(vectors=2.5), "vectors"), (dict(seed=-1), "seed"), (dict(draws=0), "draws"),
])
def test_alignment_refuses_bad_settings(balancer, kwargs, message):
    with pytest.raises(SurgeryError, match=message):
        surgery.alignment(balancer, progress=False, **kwargs)


@pytest.mark.parametrize("kwargs, message", [
    (dict(embedding="action_outt"), "valid: 'state_in'"),
    (dict(futility="x"), "futility"),
    (dict(spend=0), "spend"),
    (dict(looks=(0.5, 0.2)), "looks"),
    (dict(alignment=AlignmentSettings(embeddings=("state_in",))), "not among"),
])
def test_atlas_refuses_before_any_episode_or_file(balancer, kwargs, message, tmp_path):
    with pytest.raises(SurgeryError, match=message):
        surgery.atlas(balancer, out=tmp_path / "out", workers=0, progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_model_copy_cut_short_is_written_again(balancer, tmp_path):
    from surgery.behaviour.checkpoint import save_checkpoint
    from surgery.behaviour.evaluation import weights_sha256
    from surgery.experiments.atlas import _a_model_copy, _saved_sha

    copy = tmp_path / "model"
    save_checkpoint(balancer.model, balancer.metadata, copy)
    assert _saved_sha(copy) == weights_sha256(balancer.model) and _a_model_copy(copy) is None
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # an interrupted save
    assert _saved_sha(copy) is None  # so the next run rewrites it instead of failing to resume
    (copy / "notes.txt").write_text("mine")
    assert "notes.txt" in _a_model_copy(copy)  # and never replaces a folder holding anything else


def _cli(argv, capsys) -> tuple[int, str]:
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's own refusals (a flag's type) exit from inside
        code = e.code
    return code, capsys.readouterr().err


def test_cli_refusals_are_one_line_before_loading(tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    table = tmp_path / "atlas.csv"
    table.write_text("block,weight,head,idx,damage\n0,K,,1,3.5\n0,K,,,2.0\n")
    cases = [
        (["atlas", "hopper", "--out", str(a_file / "sub")], "is a file"),
        (["atlas", "hopper", "--embedding", "action_outt", "--out", str(tmp_path / "x")], "valid: 'state_in'"),
        (["compare", "hopper", "hopper", "--atlas-a", str(table)], "both --atlas-a and --atlas-b"),
        (["compare", "hopper", "hopper", "--out", str(a_file)], "not a directory"),
        (["compare", "hopper", "hopper", "--atlas-a", str(table), "--atlas-b", str(table)], "row 3: column 'idx'"),
        (["edit-eval", "hopper", "--block", "0", "--weight", "K", "--op", "keep_top", "--value", "nan"],
         "must be a finite number"),
        (["edit-eval", "hopper", "--block", "0", "--weight", "K", "--op", "keep_top", "--value", "2.5"],
         "whole number"),
    ]
    for argv, message in cases:
        code, err = _cli(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "x").exists()


def test_lm_scan_refuses_more_tokens_than_the_vocabulary():
    from surgery.lm.scan import ScanConfig, scan

    model = build("gpt2")
    vocab = surgery.wrap(model).embedding_sets()["token_out"].vectors.shape[0]
    for tokens in (1, vocab + 1):
        with pytest.raises(SurgeryError, match=f"tokens={tokens} is out of range"):
            scan(model, ScanConfig(k=1, tokens=tokens, weights=("K",)), blocks=[0])


def test_a_weight_named_twice_is_scanned_once_and_build_budgets_are_checked(tmp_path):
    import math

    from surgery.lm.scan import ScanConfig
    from surgery.zoo.build import BuildOptions

    assert ScanConfig(weights=("K", "K", "V")).weights == ("K", "V")
    with pytest.raises(ValueError, match="expert_minutes"):
        BuildOptions(tmp_path, expert_minutes=math.nan)  # nan would have removed the cap on ARS silently
    with pytest.raises(ValueError, match="stop_after='trian' is not known"):
        BuildOptions(tmp_path, stop_after="trian")
    with pytest.raises(ValueError, match="episodes=0 is out of range"):
        BuildOptions(tmp_path, episodes=0)
