"""`validate`: the study's claim as an experiment.

Claim: editing the singular vectors most aligned with the action output embedding makes the
agent fail, while similar edits elsewhere do not. Test: edit each of the `top` vectors that
`surgery.locate` ranks most aligned, and matched controls (`selection.choose_targets`), each alone;
evaluate every edit on the same seeds as one shared baseline (all of them lanes of one batched
rollout, surgery/behaviour/rollout.py); measure each edit's damage
with a paired test, correct across edits, and correlate alignment with damage.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch

from surgery import stats
from surgery.behaviour.episodes import check_memory
from surgery.behaviour.evaluation import EvalResult, Run, evaluate_runs, weights_sha256
from surgery.behaviour.rollout import prepare
from surgery.core.patching import validate_edit
from surgery.errors import SurgeryError
from surgery.experiments import edits as edit_specs
from surgery.experiments import verdict as verdicts
from surgery.experiments.correlation import Correlation, partial_spearman, spearman
from surgery.experiments.output import adapter_with_metadata, model_identity, saved_edits_applied
from surgery.experiments.selection import GROUPS, Target, choose_targets
from surgery.experiments.settings import ValidateSettings
from surgery.files import jsonable, save_figure, to_json, write_atomic

PLAN_FILE, REPORT_JSON, REPORT_MD = "plan.json", "validate.json", "validate.md"
PREFIX = {"aligned": "A", "control_same": "S", "control_other": "O"}
PLAN_KEYS = ("embedding", "top", "controls", "weights", "alpha", "op", "value")
"""The settings that choose the edited vectors: stored in plan.json, and a resumed run must match them."""


@dataclass
class EditOutcome:
    """One edited vector: what was edited, its run, and its comparison with the shared baseline."""

    name: str
    """A1, A2 ... (aligned), S1 ... (same-weight controls), O1 ... (other-weight controls)."""
    target: Target
    edit: object
    result: EvalResult
    comparison: dict
    p_adj: float = float("nan")
    """Paired permutation p of the mean return difference (what `damage` measures), corrected across all edits.

    Not Wilcoxon's: on a deterministic simulator an edit can shift most episodes' returns by a
    point or two in the same direction, which Wilcoxon's signed ranks call highly significant
    while the mean drop's interval straddles 0; the claim is about damage, so the test is of the mean.
    """
    p_adj_failures: float = float("nan")
    """McNemar p of the failures, corrected across all edits."""

    @property
    def damage(self) -> stats.Estimate:
        """Mean return drop, baseline - edited on the same seeds, with its bootstrap CI (positive = harm)."""
        d = self.comparison.difference.mean_difference
        return stats.Estimate(0.0 - d.value, 0.0 - d.high, 0.0 - d.low, d.confidence)  # 0.0 - x: no "-0.0"

    @property
    def failure_increase(self) -> float:
        c = self.comparison
        return c.edited_failure_rate.rate.value - c.baseline_failure_rate.rate.value

    def to_dict(self) -> dict:
        c = self.comparison
        return {
            "name": self.name, "group": self.target.group, "target": self.target.to_dict(),
            "edit": edit_specs.tag(self.edit), "label": edit_specs.label(self.edit),
            "damage": self.damage, "failure_increase": self.failure_increase,
            "p_permutation": c.difference.p_permutation, "p_wilcoxon": c.difference.p_wilcoxon,
            "p_adj": self.p_adj,
            "p_mcnemar": c.failures.p_mcnemar, "p_adj_failures": self.p_adj_failures,
            "rank_biserial": c.difference.rank_biserial, "cohens_dz": c.difference.cohens_dz,
            "edited": c.edited, "edited_failure_rate": c.edited_failure_rate,
            "median_steps_to_failure": self.result.survival().median,
        }


@dataclass
class Validation:
    """Everything `validate` measured and concluded."""

    model: dict
    settings: ValidateSettings
    """Resolved: `value` and `target_return` are what was used."""
    baseline: EvalResult
    outcomes: list[EditOutcome]
    correlation: Correlation
    """Spearman rho of |cos| against the mean return drop, over every edited vector."""
    correlation_failures: Correlation
    """The same against the increase in failure rate."""
    verdict: verdicts.Verdict
    correlation_energy: Correlation | None = None
    """Energy share S_i^2 / sum S^2 against the return drop: how much size alone explains (a confound check)."""
    partial_correlation: Correlation | None = None
    """|cos| against the return drop with the energy share held fixed (partial Spearman)."""
    files: dict = field(default_factory=dict)

    def group(self, name: str) -> list[EditOutcome]:
        return [o for o in self.outcomes if o.target.group == name]

    def to_dict(self) -> dict:
        return {
            "experiment": "validate", "model": self.model,
            # The baseline's time limit (max_steps, else the environment's) is reported with the settings, as before.
            "settings": {**asdict(self.settings), "time_limit": self.baseline.time_limit},
            "verdict": self.verdict, "baseline": self.baseline.summary(),
            "baseline_median_steps_to_failure": self.baseline.survival().median,
            "correlation": self.correlation, "correlation_failures": self.correlation_failures,
            "correlation_energy": self.correlation_energy, "partial_correlation": self.partial_correlation,
            "edits": [o.to_dict() for o in self.outcomes], "files": self.files,
        }

    def text(self) -> str:
        from surgery.experiments.validate_report import text

        return text(self)

    def markdown(self) -> str:
        from surgery.experiments.validate_report import markdown

        return markdown(self)


def validate(model, settings: ValidateSettings | str | None = None, *, out: str | Path | None = None,
             progress: bool = True, source=None, edits=None, **overrides) -> Validation:
    """Edit the vectors most aligned with the embedding and matched controls; test alignment against damage.

    settings: a ValidateSettings (the defaults when None), or the embedding's name as in
    validate(model, "action_out", top=5); keyword overrides replace its fields (a torch dtype is
    accepted for dtype). Of its fields: top: at most this many aligned vectors, those beyond chance
    (see `selection.choose_targets`). controls: controls of each kind (same weight, other weight);
    default one per aligned vector. weights: aligned vectors from these weight types only, e.g.
    ("K",) for the study's claim about K vectors (default: any weight). op: "constant" (the study's
    edit) or "zero". correction: "holm" or "bh", across edits.
    out: a directory; every finished episode of every run is stored there as it ends (one SQLite
    store per edit, one baseline), so rerunning the same call resumes where it stopped.
    edits: a saved patch (a folder `Patch.save` wrote, or `surgery.load_patch`'s result) applied to the
        model for the run and reverted after it: the claim tested on the edited model (its vectors, its
        baseline); the report names the patch.
    """
    s = _resolve(settings, dict(overrides))
    adapter = adapter_with_metadata(model, "validate")
    with saved_edits_applied(adapter, edits) as applied:
        return _validate(adapter, s, out, progress, source, applied)


def _validate(adapter, s: ValidateSettings, out, progress: bool, source, applied) -> Validation:
    out = None if out is None else Path(out)
    if s.op == "constant":
        s = replace(s, value=1.0 / adapter.d_model if s.value is None else float(s.value))
    # What the rollout would refuse is refused before the plan is written.
    prepare(adapter, target_return=s.target_return, max_steps=s.max_steps)
    most = s.top + 2 * (s.top if s.controls is None else s.controls)
    check_memory(s.episodes * (1 + most), f"this validation (up to {most} edits and a baseline)")
    targets = _plan(adapter, s, out)
    names, edits, runs = [], [], [Run(out=None if out is None else out / "baseline")]
    counters = dict.fromkeys(GROUPS, 0)
    for i, t in enumerate(targets):
        counters[t.group] += 1
        names.append(f"{PREFIX[t.group]}{counters[t.group]}")
        edits.append(validate_edit(adapter, t.edit(s.op, s.value)))
        where = None if out is None else out / "edits" / f"{i:02d}-{names[-1]}-{edit_specs.slug(edits[-1])}"
        runs.append(Run([edits[-1]], where, edit_specs.tag(edits[-1])))
    # One shared baseline and every edit as lanes of one batched rollout: no patching, one pass.
    baseline, *results = evaluate_runs(adapter, runs, s.episodes, s.seed, s.target_return,
                                       dtype=getattr(torch, s.dtype), progress=progress, max_steps=s.max_steps,
                                       desc=f"validate: baseline + {len(edits)} edits")
    outcomes = [EditOutcome(name, t, edit, result, stats.compare(baseline, result))
                for name, t, edit, result in zip(names, targets, edits, results)]
    returns = [o.comparison.difference.p_permutation for o in outcomes]
    failures = [o.comparison.failures.p_mcnemar for o in outcomes]
    for raw, attr in ((returns, "p_adj"), (failures, "p_adj_failures")):
        for o, p in zip(outcomes, stats.adjust_pvalues(raw, s.correction)):
            setattr(o, attr, float(p))
    x = [o.target.abs_cos for o in outcomes]
    drops = [o.damage.value for o in outcomes]
    energy = [o.target.energy for o in outcomes]
    validation = Validation(
        model=model_identity(adapter, source, applied), settings=replace(s, target_return=baseline.target_return),
        baseline=baseline, outcomes=outcomes,
        correlation=spearman(x, drops),
        correlation_failures=spearman(x, [o.failure_increase for o in outcomes]),
        verdict=None,
        correlation_energy=spearman(energy, drops),
        partial_correlation=partial_spearman(x, drops, energy),
    )
    validation.verdict = verdicts.judge(validation)
    if out is not None:
        write_outputs(validation, out)
    return validation


def _resolve(settings: ValidateSettings | str | None, overrides: dict) -> ValidateSettings:
    """The settings a call asks for: a ValidateSettings or the embedding's name, with keyword overrides."""
    if isinstance(settings, str):  # validate(model, "action_out", top=5): the embedding, as before the record
        if "embedding" in overrides:
            raise SurgeryError(f"the embedding is given twice ({settings!r} and embedding={overrides['embedding']!r})")
        settings, overrides = None, {**overrides, "embedding": settings}
    if settings is not None and not isinstance(settings, ValidateSettings):
        raise SurgeryError(f"settings must be a ValidateSettings or an embedding set's name, got "
                           f"{type(settings).__name__} {settings!r}")
    names = [f.name for f in fields(ValidateSettings)]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise SurgeryError(f"unknown validate setting(s) {unknown}; valid: {', '.join(sorted(names))}")
    if isinstance(overrides.get("dtype"), torch.dtype):  # dtype=torch.bfloat16, as before the record
        overrides["dtype"] = str(overrides["dtype"]).removeprefix("torch.")
    return replace(settings or ValidateSettings(), **overrides)


def _plan(adapter, settings: ValidateSettings, out: Path | None) -> list[Target]:
    """The vectors to edit: read back from out/plan.json when resuming (after checking it fits), else chosen now."""
    keys = jsonable({k: getattr(settings, k) for k in PLAN_KEYS})  # as JSON stores them (weights a list)
    weights = weights_sha256(adapter.model)
    path = None if out is None else out / PLAN_FILE
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            same_model = saved["weights_sha256"] == weights
            differ = sorted(k for k in set(keys) | set(saved["settings"]) if keys.get(k) != saved["settings"].get(k))
            targets = [Target(**t) for t in saved["targets"]]
        except (ValueError, KeyError, TypeError) as e:
            raise SurgeryError(f"{path} is not a validate plan ({e}); choose another output directory") from None
        if not same_model:
            raise SurgeryError(f"{path} was made for a model with other weights; choose another output directory")
        if differ:
            was = ", ".join(f"{k}={saved['settings'].get(k)!r} (now {keys.get(k)!r})" for k in differ)
            raise SurgeryError(f"{path} was made with other settings: {was}; choose another output directory")
        return targets
    from surgery.analysis.localisation import locate

    location = locate(adapter, embedding=settings.embedding, alpha=settings.alpha)
    targets = choose_targets(location, adapter, settings.top, settings.controls, settings.embedding,
                             settings.weights)
    if path is not None:
        write_atomic(path, to_json({"weights_sha256": weights, "settings": keys,
                                    "targets": [t.to_dict() for t in targets]}))
    return targets


def write_outputs(v: Validation, out: Path) -> None:
    """Figures, then validate.json and validate.md (each written atomically)."""
    from surgery.experiments import figures as figs

    points = [{"abs_cos": o.target.abs_cos, "damage": o.damage.value, "low": o.damage.low, "high": o.damage.high,
               "group": o.target.group, "name": o.name} for o in v.outcomes]
    v.files["damage_vs_alignment"] = save_figure(figs.damage_vs_alignment(points, v.correlation), out /
                                                 "damage_vs_alignment.png")
    runs = {"baseline": v.baseline, **{f"{o.name} {edit_specs.short_label(o.edit)}": o.result for o in v.outcomes}}
    colors = {"baseline": figs.GROUP_COLORS["baseline"],
              **{f"{o.name} {edit_specs.short_label(o.edit)}": figs.GROUP_COLORS[o.target.group] for o in v.outcomes}}
    v.files["returns"] = save_figure(figs.return_distributions(runs, colors=list(colors.values())), out / "returns.png")
    v.files["survival"] = save_figure(figs.survival_curves(runs, colors=colors), out / "survival.png")
    write_atomic(out / REPORT_JSON, to_json(v.to_dict()))
    v.files["report"] = write_atomic(out / REPORT_MD, v.markdown())
