"""`validate`: which vectors it edits, what it concludes on a model built to know the answer, and resume."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from surgery.analysis.localisation import locate
from surgery.experiments import choose_targets
from surgery.experiments.validate import validate
from surgery.loading import load
from tests.experiments_models import cartpole_dt

# The balancer's policy flows through block 0's K (reads the state) and V (writes the action
# direction): V's two write-side vectors are the ones aligned with action_out (cos 0.707), and
# editing either one makes the pole fall; K #0 and #1 are just as vital but not action-aligned.


def test_targets_are_the_most_aligned_and_unaligned_matched_controls(balancer):
    loc = locate(balancer, embedding="action_out")
    plan = choose_targets(loc, balancer, top=3, controls=3)
    aligned = [t for t in plan if t.group == "aligned"]  # only two vectors are aligned beyond chance
    assert [(t.weight, t.side, t.idx) for t in aligned] == [("V", "out", 0), ("V", "out", 1)]
    assert all(t.significant for t in aligned) and aligned[0].abs_cos == pytest.approx(2 ** -0.5, abs=1e-3)
    assert len({t.key() for t in plan}) == len(plan) == 8 and [t.matched_to for t in plan[2:5]] == [0, 1, 0]
    median = sorted(loc.ranking["abs_cos"])[len(loc.ranking) // 2]
    for t in plan:
        if t.group == "aligned":
            continue
        a = aligned[t.matched_to]
        assert not t.significant and t.abs_cos <= median
        if t.group == "control_same":
            assert t.key()[:4] == a.key()[:4]
        else:
            assert t.weight != a.weight
    with pytest.raises(ValueError, match="fewer controls"):
        choose_targets(loc, balancer, top=1, controls=400)


def test_aligned_vectors_can_be_taken_from_one_weight_type(balancer):
    """The study's claim is about K: --weights K takes the aligned vectors from K only."""
    loc = locate(balancer, embedding="action_out")
    plan = choose_targets(loc, balancer, top=2, controls=1, weights=("K",))
    aligned = [t for t in plan if t.group == "aligned"]
    # K reads the state signal but is not action-aligned beyond chance here: the top K vectors anyway.
    assert [t.weight for t in aligned] == ["K", "K"] and not any(t.significant for t in aligned)
    best_k = [r for r in loc.ranking.rows() if r["weight"] == "K"][:2]
    assert [(t.block, t.idx) for t in aligned] == [(r["block"], r["idx"]) for r in best_k]
    others = [t for t in plan if t.group == "control_other"]
    assert others and all(t.weight != "K" for t in others)
    assert [t.weight for t in choose_targets(loc, balancer, top=1, controls=0, weights="V")] == ["V"]
    with pytest.raises(ValueError, match="not ranked; valid: "):
        choose_targets(loc, balancer, top=1, weights=("MLP",))


def test_validate_restricted_to_k_says_so_and_is_not_testable_here(balancer, tmp_path):
    v = validate(balancer, top=1, controls=1, weights=["K"], episodes=2, max_steps=10, out=tmp_path, progress=False)
    assert v.verdict.outcome == "not testable"
    assert "editing the K singular vectors most aligned" in v.text()
    assert "the K vectors `surgery.locate` ranks" in (tmp_path / "validate.md").read_text()
    with pytest.raises(ValueError, match="weights=.'K'. .now None."):
        validate(balancer, top=1, controls=1, episodes=2, max_steps=10, out=tmp_path, progress=False)


def test_validate_detects_the_aligned_edits_and_writes_its_report(balancer, tmp_path):
    v = validate(balancer, top=5, episodes=8, max_steps=100, out=tmp_path, progress=False)  # 2 are aligned
    by_name = {o.name: o for o in v.outcomes}
    assert list(by_name) == ["A1", "A2", "S1", "S2", "O1", "O2"]
    for name in ("A1", "A2"):  # the two action-aligned V vectors: the pole falls every time
        o = by_name[name]
        assert o.p_adj < 0.05 and o.damage.low > 0 and o.result.failed.all()
    for name in ("S1", "S2"):  # unaligned vectors of the same V: nothing happens
        assert by_name[name].result.records == v.baseline.records
    assert v.verdict.criteria["aligned edits hurt"]["holds"]
    assert v.verdict.outcome in ("supported", "partly supported", "not supported")
    assert v.verdict.sentence.startswith("aligned edits: mean damage") and "Spearman rho" in v.verdict.sentence
    report = json.loads((tmp_path / "validate.json").read_text())
    assert report["verdict"]["outcome"] == v.verdict.outcome and len(report["edits"]) == 6
    assert report["settings"]["value"] == pytest.approx(1 / 64)
    assert v.verdict.outcome.upper() in (tmp_path / "validate.md").read_text()
    for name in ("damage_vs_alignment.png", "returns.png", "survival.png", "plan.json"):
        assert (tmp_path / name).stat().st_size > 0
    assert len(list((tmp_path / "edits").iterdir())) == 6
    assert "A1" in v.text() and v.verdict.sentence in v.text()


def test_an_untrained_model_is_not_testable():
    from surgery.behaviour.hf_loop import untrained_dt

    model, md = untrained_dt("CartPole-v1")
    v = validate(load(model, metadata=md), top=2, controls=1, episodes=4, max_steps=20, progress=False)
    assert v.verdict.outcome == "not testable" and "beyond chance" in v.verdict.sentence


def test_a_plan_made_with_other_settings_is_refused(balancer, tmp_path):
    validate(balancer, top=1, controls=1, episodes=2, max_steps=10, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="top=1 .now 2."):
        validate(balancer, top=2, controls=1, episodes=2, max_steps=10, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="another experiment"):  # the results store refuses another max_steps
        validate(balancer, top=1, controls=1, episodes=2, max_steps=11, out=tmp_path, progress=False)


# What validate wrote before its settings became a ValidateSettings: a stored plan or report keeps these keys,
# in this order, so a run made before resumes and readers of validate.json see the same record.
PLAN_KEYS = ["settings", "targets", "weights_sha256"]
PLAN_SETTINGS = ["embedding", "top", "controls", "weights", "alpha", "op", "value"]
REPORT_KEYS = ["baseline", "baseline_median_steps_to_failure", "correlation", "correlation_energy",
               "correlation_failures", "edits", "experiment", "files", "model", "partial_correlation", "settings",
               "verdict"]
REPORT_SETTINGS = ["embedding", "top", "controls", "weights", "op", "value", "seed", "target_return", "dtype",
                   "max_steps", "alpha", "correction", "episodes", "time_limit"]


def test_the_settings_record_round_trips_through_a_dict_and_json():
    from dataclasses import asdict

    from surgery.experiments.settings import ValidateSettings

    s = ValidateSettings("state_in", top=3, controls=2, weights=("K", "V"), op="zero", seed=4, target_return=900.0,
                         dtype="bfloat16", max_steps=300, alpha=0.01, correction="bh", episodes=50)
    assert ValidateSettings(**asdict(s)) == s
    assert ValidateSettings(**json.loads(json.dumps(asdict(s)))) == s  # JSON's lists become tuples again
    assert ValidateSettings(weights="K").weights == ("K",)


@pytest.mark.parametrize("bad, message", [
    ({"top": 0}, "top=0 is out of range (valid: 1 or more)"),
    ({"controls": -1}, "controls=-1 is out of range (valid: 0 or more)"),
    ({"weights": ["MLP"]}, "['MLP'] not known; valid: K, V, OV, QK"),
    ({"weights": []}, "name at least one; valid: K, V, OV, QK"),
    ({"op": "scale"}, "op='scale' is not a validate edit; valid: 'constant', 'zero'"),
    ({"op": "zero", "value": 1.0}, "op='zero' takes no value"),
    ({"seed": -1}, "seed=-1 is out of range (valid: 0 or more)"),
    ({"dtype": "float16"}, "dtype='float16' is not known; valid: 'float32', 'bfloat16'"),
    ({"max_steps": 0}, "max_steps=0 is out of range (valid: 1 or more)"),
    ({"alpha": 2}, "alpha=2 must be strictly between 0 and 1"),
    ({"correction": "by"}, "correction='by' is not known; valid: 'holm', 'bh'"),
    ({"episodes": 1}, "episodes=1 is out of range (valid: 2 or more)"),
    ({"episodes": True}, "episodes must be an integer (valid: 2 or more), got bool True"),
    ({"top": 2.5}, "top must be an integer (valid: 1 or more), got float 2.5"),
])
def test_bad_settings_are_refused_saying_what_is_valid(balancer, bad, message):
    from surgery.errors import SurgeryError
    from surgery.experiments.settings import ValidateSettings

    with pytest.raises(SurgeryError) as record:
        ValidateSettings(**bad)
    assert message in str(record.value)
    with pytest.raises(SurgeryError) as call:  # the same words from validate, before anything runs
        validate(balancer, progress=False, **bad)
    assert str(call.value) == str(record.value)


def test_keywords_and_a_settings_record_resolve_alike(balancer, tmp_path):
    import torch

    from surgery.errors import SurgeryError
    from surgery.experiments.settings import ValidateSettings
    from surgery.experiments.validate import _resolve

    record = ValidateSettings("state_in", top=3, dtype="bfloat16", weights=("K",))
    assert _resolve("state_in", {"top": 3, "dtype": torch.bfloat16, "weights": ["K"]}) == record
    assert _resolve(None, {"embedding": "state_in", "top": 3, "dtype": "bfloat16", "weights": "K"}) == record
    overrides = {"embedding": "state_in", "dtype": "bfloat16", "weights": ("K",)}
    assert _resolve(ValidateSettings(top=3), overrides) == record
    with pytest.raises(SurgeryError, match=r"unknown validate setting\(s\) \['topp'\]; valid: alpha, controls, "):
        validate(balancer, topp=3)
    with pytest.raises(SurgeryError, match="the embedding is given twice"):
        validate(balancer, "action_out", embedding="state_in")
    old = validate(balancer, "action_out", top=1, episodes=2, max_steps=10, dtype=torch.float32, out=tmp_path,
                   progress=False)
    new = validate(balancer, ValidateSettings(top=1, episodes=2, max_steps=10), out=tmp_path, progress=False)
    assert old.settings == new.settings == ValidateSettings(top=1, episodes=2, max_steps=10, value=1 / 64,
                                                            target_return=500.0)  # the defaults as used
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert sorted(plan) == PLAN_KEYS and list(plan["settings"]) == PLAN_SETTINGS
    assert plan["settings"] == {"embedding": "action_out", "top": 1, "controls": None, "weights": None,
                                "alpha": 0.05, "op": "constant", "value": 1 / 64}
    report = json.loads((tmp_path / "validate.json").read_text())
    assert sorted(report) == REPORT_KEYS and list(report["settings"]) == REPORT_SETTINGS
    assert report["settings"] == {"embedding": "action_out", "top": 1, "controls": None, "weights": None,
                                  "op": "constant", "value": 1 / 64, "seed": 0, "target_return": 500.0,
                                  "dtype": "float32", "max_steps": 10, "alpha": 0.05, "correction": "holm",
                                  "episodes": 2, "time_limit": 10}


def test_the_command_line_defaults_are_the_records():
    from surgery.cli.args import settings_from_args
    from surgery.cli.main import build_parser
    from surgery.experiments.settings import ValidateSettings

    args = build_parser().parse_args(["validate", "M"])
    assert settings_from_args(ValidateSettings, args, dtype="float32") == ValidateSettings()
    args = build_parser().parse_args(["validate", "M", "--weights", "K", "V", "--controls", "0", "--op", "zero"])
    assert settings_from_args(ValidateSettings, args, dtype="float32").weights == ("K", "V")


CLI = "import sys; from surgery import cli; sys.exit(cli.main(sys.argv[1:]))"


def main(argv) -> int:
    """`surgery ARGV` in this process, with the experiments commands registered."""
    from surgery import cli

    return cli.main(argv)


def _counts(out):
    """Episode indices stored per results store under out (each store must hold each episode once)."""
    counts = {}
    for db in sorted(out.rglob("episodes.sqlite")):
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            rows = [r[0] for r in con.execute("SELECT episode FROM episodes")]
        except sqlite3.OperationalError:  # created a moment ago, its tables not committed yet
            rows = []
        finally:
            con.close()
        assert len(rows) == len(set(rows))
        counts[str(db.parent.relative_to(out))] = sorted(rows)
    return counts


def test_a_killed_validate_resumes_and_the_counts_add_up(tmp_path, capsys):
    model, md = cartpole_dt()
    ckpt = tmp_path / "balancer"
    model.save_pretrained(ckpt)
    md.save(ckpt)
    out = tmp_path / "run"
    args = ["validate", str(ckpt), "--top", "2", "--controls", "1", "--episodes", "6", "--max-steps", "200",
            "--out", str(out), "--quiet"]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Baseline and edits run as lanes of one batch: the aligned edits' episodes end first (the pole falls).
    while time.time() < deadline and proc.poll() is None:  # wait until one of the four edits is done
        counts = _counts(out) if out.exists() else {}
        if any(k.startswith("edits") and len(v) == 6 for k, v in counts.items()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.communicate()[1][-2000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _counts(out)
    finished = sum(len(v) for v in before.values())
    assert 6 <= finished < 5 * 6  # an edit's episodes and not all of the baseline's and four edits' episodes
    assert main(args) == 0  # the same command again, here: it resumes
    after = _counts(out)
    assert len(after) == 5 and all(rows == list(range(6)) for rows in after.values())
    report = json.loads((out / "validate.json").read_text())
    assert [e["edited"]["n"] for e in report["edits"]] == [6] * 4 and report["baseline"]["episodes"] == 6
    assert "aligned edits: mean damage" in capsys.readouterr().out
