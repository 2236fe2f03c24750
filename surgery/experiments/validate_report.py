"""The terminal summary and the Markdown report of a `Validation`."""
from __future__ import annotations

from pathlib import Path

from surgery.experiments import edits as edit_specs
from surgery.experiments.output import fmt, fmt_p
from surgery.files import markdown_table

CLAIM = ("editing the {which}singular vectors most aligned with the {embedding} embedding makes the agent fail, "
         "while similar edits elsewhere do not")
GROUP_WORDS = {"aligned": "aligned", "control_same": "ctrl same weight", "control_other": "ctrl other weight"}


def _rows(v) -> list[list[str]]:
    header = ["#", "group", "vector", "label", "|cos|", "p_adj align", "S share", "return drop [95% CI]",
              "p_adj", "failed", "fail p_adj"]
    rows = [header]
    for o in v.outcomes:
        t, d, c = o.target, o.damage, o.comparison
        f = c.edited_failure_rate
        rows.append([
            o.name, GROUP_WORDS[t.group], edit_specs.short_label(o.edit), t.label, f"{t.abs_cos:.3f}",
            fmt_p(t.p_adj), f"{t.energy:.3f}", f"{d.value:.1f} [{d.low:.1f}, {d.high:.1f}]", fmt_p(o.p_adj),
            f"{f.failures}/{f.episodes}", fmt_p(o.p_adj_failures),
        ])
    return rows


def _header(v) -> list[str]:
    s, b = v.settings, v.baseline
    km = b.survival()
    value = "" if s.op != "constant" else f" (value {s.value:.4g})"
    return [
        f"{v.model['model']} ({v.model['env_id']}): {len(v.outcomes)} edits of one singular vector each, "
        f"op {s.op}{value}; {s.episodes} episodes per run, seed {s.seed}, target return "
        f"{s.target_return:g}, {s.dtype}" + (f", max {s.max_steps} steps" if s.max_steps else ""),
        f"baseline: {b}; median steps to failure {fmt(km.median, 0)}",
    ]


def size_check(v) -> str:
    """One line on the confound: are aligned vectors also the bigger ones, and does size explain the damage?"""
    import numpy as np

    aligned = [o.target.energy for o in v.outcomes if o.target.group == "aligned"]
    controls = [o.target.energy for o in v.outcomes if o.target.group != "aligned"]
    line = (f"size check: energy share S^2/sum S^2, median {np.median(aligned):.3f} aligned vs "
            f"{np.median(controls):.3f} controls" if controls else "size check: no controls")
    ce, pc = getattr(v, "correlation_energy", None), getattr(v, "partial_correlation", None)
    if ce is not None and np.isfinite(ce.rho):
        line += f"; damage against energy share: {ce.describe('rho')}"
    if pc is not None and np.isfinite(pc.rho):
        line += f"; |cos| against damage with energy share held fixed: {pc.describe('partial rho')}, p {pc.p:.2g}"
    return line


def _which(settings) -> str:
    """'K ' when the aligned vectors were restricted to K, '' when any weight could be chosen."""
    return "" if not settings.weights else " and ".join(settings.weights) + " "


def claim(settings) -> str:
    """The claim a validation with these settings (a ValidateSettings) tests, in words."""
    return CLAIM.format(which=_which(settings), embedding=settings.embedding)


def text(v) -> str:
    """Aligned vectors and controls in one table, then the criteria and the verdict."""
    rows = _rows(v)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = _header(v) + [""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines += ["", f"claim: {claim(v.settings)}"]
    for name, c in v.verdict.criteria.items():
        lines.append(f"  [{'x' if c['holds'] else ' '}] {name}: {c['detail']}")
    cf = v.correlation_failures
    lines.append(f"  (failure-rate increase against |cos|: {cf.describe()})")  # undefined where nothing fails
    lines.append(f"  ({size_check(v)})")
    lines += ["", v.verdict.sentence]
    if v.model.get("untrained"):
        lines.append("note: this model is untrained (random weights): the numbers test the tool, not the claim")
    if v.files:
        lines.append("outputs: " + ", ".join(str(p) for p in v.files.values()))
    return "\n".join(lines)


def markdown(v) -> str:
    """The report as Markdown: verdict first, then how it was measured."""
    rows = _rows(v)
    table = markdown_table(rows[0], rows[1:]).split("\n")
    s = v.settings
    figures = [f"![{k}]({Path(p).name})" for k, p in v.files.items() if str(p).endswith(".png")]
    correction = {"holm": "Holm", "bh": "Benjamini-Hochberg"}[s.correction]
    lines = [
        f"# Validation: do edits of {s.embedding}-aligned singular vectors damage behaviour?",
        "",
        f"**{v.verdict.outcome.upper()}** on `{v.model['model']}` ({v.model['env_id']}, weights sha256 "
        f"`{v.model['weights_sha256'][:16]}…`)"
        + (" — **untrained (random weights)**" if v.model.get("untrained") else "") + ".",
        "",
        v.verdict.sentence,
        "",
        *([f"Model notes: {v.model['notes']}", ""] if v.model.get("notes") else []),
        f"Claim tested: {claim(s)}.",
        "",
        *[f"- {'✔' if c['holds'] else '✘'} {name}: {c['detail']}" for name, c in v.verdict.criteria.items()],
        "",
        f"Not a criterion, but read it: {size_check(v)}.",
        "",
        "## Setup",
        "",
        *[f"- {line}" for line in _header(v)],
        f"- aligned: the {_which(s)}vectors `surgery.locate` ranks most aligned with `{s.embedding}` beyond chance "
        f"(|cos| with the best label, chance-corrected p_adj < {s.alpha:g}), at most {s.top}; controls: per aligned "
        "vector, an unaligned one (not significant, "
        "|cos| at most the median) of the same weight, and one of another weight type, each matched on the share "
        "of the weight's energy S_i^2 / sum S^2 it carries",
        "- damage: mean return drop, baseline − edited on the same seeds, BCa 95% CI; p_adj: paired permutation "
        f"test of the mean difference, {correction}-corrected across all {len(v.outcomes)} edits (the Wilcoxon "
        "p-values are in validate.json); fail p_adj: exact McNemar on the paired failures, corrected alike",
        "- group means are over edits (bootstrap CI over edits); Spearman CI by Fisher's z with variance "
        "1.06/(n−3), p by permutation",
        "",
        "## Edits",
        "",
        *table,
        "",
        *figures,
        "",
        "Every episode is stored in `baseline/episodes.sqlite` and `edits/*/episodes.sqlite`; rerunning the same "
        "command resumes and recomputes this report.",
        "",
    ]
    return "\n".join(lines)
