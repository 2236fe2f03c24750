"""`edit_eval`: one edit's effect on behaviour, baseline and edited on the same seeds, with statistics."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from surgery import stats
from surgery.behaviour.evaluation import EvalResult, Run, evaluate_runs
from surgery.checks import level
from surgery.core.patching import Patch, as_edit, validate_edit
from surgery.errors import SurgeryError
from surgery.experiments import edits as edit_specs
from surgery.experiments.output import adapter_with_metadata, fmt, fmt_p, model_identity
from surgery.files import save_figure, to_json, write_atomic

REPORT_JSON, REPORT_MD = "report.json", "report.md"
RETURNS_PNG, SURVIVAL_PNG = "returns.png", "survival.png"


@dataclass
class EditEvaluation:
    """What `edit_eval` measured: both runs, their paired comparison, and where the outputs went."""

    edits: list
    """The Edit(s) applied together, defaults resolved."""
    baseline: EvalResult
    edited: EvalResult
    comparison: dict
    """`surgery.stats.compare(baseline, edited)`: paired test, effect sizes, failure rates, McNemar."""
    model: dict
    """Which model: name, environment, weights hash, notes."""
    settings: dict
    files: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        return "; ".join(edit_specs.label(e) for e in self.edits)

    def survival(self) -> dict:
        return {"baseline": self.baseline.survival(), "edited": self.edited.survival()}

    def to_dict(self) -> dict:
        km = self.survival()
        return {
            "experiment": "edit-eval",
            "model": self.model,
            "edits": [edit_specs.tag(e) for e in self.edits],
            "edit_label": self.label,
            "settings": self.settings,
            "baseline": self.baseline.summary(),
            "edited": self.edited.summary(),
            "comparison": self.comparison,
            "median_steps_to_failure": {k: s.median for k, s in km.items()},
            "files": self.files,
        }

    def text(self) -> str:
        """A terminal summary: the two runs side by side, then the paired statistics."""
        s, c = self.settings, self.comparison
        d, f = c.difference, c.failures
        b_rate, e_rate = c.baseline_failure_rate, c.edited_failure_rate
        km = self.survival()
        rows = [
            ("return", _mean(c.baseline), _mean(c.edited)),
            ("failed", _rate(b_rate), _rate(e_rate)),
            ("median steps to failure", fmt(km["baseline"].median, 0), fmt(km["edited"].median, 0)),
        ]
        width = max(len(r[1]) for r in rows) + 2
        lines = [
            f"{self.model['model']} ({self.model['env_id']}), {c.pairs} paired episodes, seed {s['seed']}, "
            f"target return {s['target_return']:g}, {s['dtype']}"
            + (f", max {s['max_steps']} steps" if s["max_steps"] else ""),
            f"edit: {self.label}",
            f"  {'':<24}{'baseline':<{width}}edited",
        ]
        lines += [f"  {name:<24}{b:<{width}}{e}" for name, b, e in rows]
        diff = d.mean_difference
        lines += [
            f"edited - baseline: mean {diff.value:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}], "
            f"median {d.median_difference:+.1f}",
            f"  permutation p (of the mean) = {fmt_p(d.p_permutation)}, "
            f"Wilcoxon signed-rank p = {fmt_p(d.p_wilcoxon)}; "
            f"rank-biserial {d.rank_biserial:+.2f}, Cohen's d_z {d.cohens_dz:+.2f}",
            f"  failures: McNemar p = {fmt_p(f.p_mcnemar)} ({f.only_edited_failed} failed only when edited, "
            f"{f.only_baseline_failed} only in the baseline)",
            f"  {_verdict(d, f, self.settings['alpha'])}",
        ]
        if self.model.get("untrained"):
            lines.append("  note: this model is untrained (random weights): the numbers test the tool, not a policy")
        if self.files:
            lines.append("outputs: " + ", ".join(str(p) for p in self.files.values()))
        return "\n".join(lines)

    def markdown(self) -> str:
        """The report as Markdown."""
        s, c = self.settings, self.comparison
        d, f = c.difference, c.failures
        km = self.survival()
        diff = d.mean_difference
        figures = [f"![{name}]({Path(p).name})" for name, p in self.files.items() if str(p).endswith(".png")]
        videos = [f"[{Path(p).name}]({Path(p).name})" for p in self.files.values() if str(p).endswith((".gif", ".mp4"))]
        lines = [
            f"# Edit evaluation: {self.label}",
            "",
            f"Model `{self.model['model']}` ({self.model['env_id']}, "
            f"weights sha256 `{self.model['weights_sha256'][:16]}…`)"
            + (" — **untrained (random weights)**" if self.model.get("untrained") else "") + "."
            + (f" Notes: {self.model['notes']}" if self.model.get("notes") else ""),
            f"{c.pairs} episodes, run seed {s['seed']} (the same initial states with and without the edit), "
            f"target return {s['target_return']:g}, {s['dtype']}"
            + (f", episodes cut at {s['max_steps']} steps" if s["max_steps"] else "") + ".",
            "",
            "| | baseline | edited |",
            "|---|---|---|",
            f"| mean return [95% CI] | {_mean(c.baseline)} | {_mean(c.edited)} |",
            f"| median return | {c.baseline['median']:.1f} | {c.edited['median']:.1f} |",
            f"| failed [Wilson 95% CI] | {_rate(c.baseline_failure_rate)} | {_rate(c.edited_failure_rate)} |",
            f"| median steps to failure (Kaplan-Meier) | {fmt(km['baseline'].median, 0)} "
            f"| {fmt(km['edited'].median, 0)} |",
            "",
            "Paired on seeds, edited − baseline:",
            "",
            f"- mean difference {diff.value:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}] (BCa bootstrap), "
            f"median {d.median_difference:+.1f}",
            f"- paired permutation p (of the mean; the verdict's test) = {fmt_p(d.p_permutation)}; Wilcoxon "
            f"signed-rank p = {fmt_p(d.p_wilcoxon)}",
            f"- effect sizes: matched-pairs rank-biserial {d.rank_biserial:+.2f}, Cohen's d_z {d.cohens_dz:+.2f}",
            f"- failures: exact McNemar p = {fmt_p(f.p_mcnemar)} ({f.only_edited_failed} episodes failed only "
            f"when edited, {f.only_baseline_failed} only in the baseline)",
            f"- **{_verdict(d, f, s['alpha'])}**",
            "",
            *figures,
            *(["", "Video (left: baseline, right: edited): " + ", ".join(videos)] if videos else []),
            "",
            "Every episode is in `baseline/episodes.sqlite` and `edited/episodes.sqlite`; rerunning the same "
            "command resumes and recomputes this report.",
            "",
        ]
        return "\n".join(lines)


def edit_eval(model, edit, *, episodes: int = 200, seed: int = 0, target_return: float | None = None,
              out: str | Path | None = None, dtype: torch.dtype = torch.float32, max_steps: int | None = None,
              alpha: float = 0.05, progress: bool = True, video: bool = False, video_kwargs: dict | None = None,
              source=None) -> EditEvaluation:
    """Evaluate `model` without and with `edit` (an Edit, a dict, a list applied together, or a Patch of this
    model, such as `surgery.load_patch(DIR, model)`) on the same seeds.

    model: a loaded decision transformer with metadata (`surgery.load("hopper")`); a name is refused.
    out: a directory for the two results stores (resumable), the report, the figures and the video.
    video: also render episode 0 with and without the edit side by side (out/video.gif, video.mp4).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 2:
        raise SurgeryError(f"episodes must be an integer of at least 2 (pairs for the paired tests; 6 are the fewest "
                           f"that can reach p < 0.05), got {episodes!r}")
    alpha = level(alpha)
    adapter = adapter_with_metadata(model, "edit_eval")
    if isinstance(edit, Patch):  # e.g. a saved patch: its lanes add its saved factors
        if edit.adapter.model is not adapter.model:
            raise SurgeryError("the patch was made for another model object than the one evaluated")
        patch, edit_list = edit, list(edit.edits)
    else:
        specs = list(edit) if isinstance(edit, (list, tuple)) else [edit]
        edit_list = [validate_edit(adapter, as_edit(e)) for e in specs]
        patch = Patch(adapter.model, edit_list)  # validates the edits together (no triple edited twice)
    where = (None, None) if out is None else (Path(out) / "baseline", Path(out) / "edited")
    # Baseline and edited episodes as lanes of one batched rollout (the edit is never patched in).
    baseline, edited = evaluate_runs(adapter, [Run(out=where[0]), Run(patch, where[1])],
                                     episodes, seed, target_return, dtype=dtype, progress=progress,
                                     max_steps=max_steps, desc="edit-eval: baseline + edited")
    result = EditEvaluation(
        edits=edit_list, baseline=baseline, edited=edited, comparison=stats.compare(baseline, edited),
        model=model_identity(adapter, source),
        settings={"episodes": episodes, "seed": seed, "target_return": baseline.target_return,
                  "dtype": str(dtype).replace("torch.", ""), "max_steps": max_steps, "alpha": alpha,
                  "time_limit": baseline.time_limit},
    )
    if out is not None:
        write_outputs(result, Path(out), adapter if video else None, {"progress": progress, **(video_kwargs or {})})
    return result


def write_outputs(result: EditEvaluation, out: Path, video_adapter=None, video_kwargs: dict | None = None) -> None:
    """Figures, optional video, then report.json and report.md (each written atomically)."""
    from surgery.experiments import figures as figs

    runs = {"baseline": result.baseline, "edited": result.edited}
    result.files["returns"] = save_figure(figs.return_distributions(runs, paired=True, title=result.label),
                                          out / RETURNS_PNG)
    result.files["survival"] = save_figure(figs.survival_curves(runs, title=result.label), out / SURVIVAL_PNG)
    if video_adapter is not None:
        from surgery.experiments import video

        s = result.settings
        result.files.update(video.edit_video(
            video_adapter, result.edits, out, seed=s["seed"], target_return=s["target_return"],
            max_steps=s["max_steps"], title=result.label, **(video_kwargs or {})))
    write_atomic(out / REPORT_JSON, to_json(result.to_dict()))
    result.files["report"] = write_atomic(out / REPORT_MD, result.markdown())


def _mean(summary: dict) -> str:
    m = summary["mean"]
    return f"{m.value:.1f} [{m.low:.1f}, {m.high:.1f}]"


def _rate(f) -> str:
    r = f.rate
    return f"{f.failures}/{f.episodes} ({100 * r.value:.0f}% [{100 * r.low:.0f}, {100 * r.high:.0f}])"


def _verdict(d, failures, alpha: float) -> str:
    """One sentence: did the edit change the return / the failures, at level alpha.

    The return's test is the paired permutation test of the mean, whose sign names the direction (as in
    `validate`). Not Wilcoxon: it tests where most pairs lie, so 20 episodes 1 lower and 2 episodes 100
    higher are "significant" for it while the mean went up.
    """
    ret = d.p_permutation < alpha
    fail = failures.p_mcnemar < alpha
    if not ret and not fail:
        return stats.too_few_pairs(d.n, alpha) or f"no significant change in return or failures at alpha {alpha:g}"
    parts = []
    if ret:
        parts.append("return " + ("lowered" if d.mean_difference.value < 0 else "raised"))
    if fail:
        more = failures.only_edited_failed > failures.only_baseline_failed
        parts.append("failures " + ("increased" if more else "decreased"))
    return " and ".join(parts) + f" significantly (alpha {alpha:g}, not corrected for other edits)"
