"""The atlas report: a terminal summary, Markdown, self-contained HTML (figures inlined), CSV and JSON.

Everything is rendered in memory first; `write` then puts each file in place atomically, so an
error leaves the old report or the new one, never half of either.
"""
from __future__ import annotations

import base64
import html as H
from pathlib import Path

import numpy as np

from surgery.experiments.output import fmt_p
from surgery.files import markdown_table

HOW_TO_READ = (
    "Each row is one singular triple edited on its own (op applied), played on paired episodes against the unedited "
    "model on the same environment seeds. damage = mean return drop (baseline - edited) over the pairs the edit "
    "used, with a Student's t interval that holds at whichever look the edit stopped (weighted Bonferroni: "
    "level 1 - alpha w_k at look k) but is not corrected across edits; p_adj is. p is "
    "the edit's sequential p-value, min(1, min_k p_k / w_k) over the looks it reached (w_k: look k's share of the "
    "level), each p_k an exact paired "
    "permutation (sign-flip) p; p_adj corrects it across all edits. An edit stops early for efficacy when its "
    "damage is established (p_k / w_k <= alpha/m) and for futility when its conditional power to get there falls "
    "below the futility setting: neither can add a false rejection (docs/atlas.md). With a pool (--pool N) each "
    "edit is compared instead with N unedited episodes on seeds no edit plays: damage = pool mean - edited mean "
    "with Welch's interval, p_k the two-sample permutation p, failures by Fisher's exact test. |cos| is the "
    "triple's best "
    "cosine with the embedding set (both residual-facing sides for OV and QK: the side with the smaller p_adj), "
    "'aligned' means beyond chance after the alignment's own correction, as in `surgery analyze`."
)


def _unit(settings) -> str:
    """What a look counts: pairs (edited, baseline) on the same seeds, or an edit's episodes against a pool."""
    return "episodes" if settings.pool else "pairs"


# ---- what goes in ---------------------------------------------------------------------------------
def where(r: dict) -> str:
    """'b1 K #4'; a triple in a tied group is marked '~' (its own vector is rotation-unstable), a near-null one '°'."""
    head = "" if r["head"] is None else f" h{r['head']}"
    marks = ("" if r.get("identifiable", True) else "~") + ("°" if r.get("near_null", False) else "")
    return f"b{r['block']} {r['weight']}{head} #{r['idx']}{marks}"


def _lines_head(a) -> list[str]:
    s, m, d = a.settings, a.model, a.design
    value = "" if s.value is None or s.op == "zero" else f" {s.value:g}"
    blocks = "all blocks" if s.blocks is None else f"blocks {', '.join(map(str, s.blocks))}"
    vectors = "every triple" if s.vectors is None else f"the first {s.vectors} triples"
    b = a.baseline.summary()
    ret, fail = b["return"]["mean"], b["failure_rate"]
    c = a.cost
    share = c["episodes"] / c["episodes_fixed_design"] if c["episodes_fixed_design"] else float("nan")
    wall = c.get("wall_seconds")
    if wall is not None:  # a resumed run's clock covers only the steps it played itself
        resumed = c.get("env_steps_this_run", c["env_steps"]) < c["env_steps"]
        this = f"{100 * c.get('env_steps_this_run', 0) / max(c['env_steps'], 1):.0f}% of the steps"
        earlier = c.get("seconds_all_runs") or 0.0  # 0: a store from before it kept its runs' time
        timing = f", {wall / 60:.1f} min" + (
            f" for this run ({this}; the rest was stored earlier" +
            (f"; {earlier / 60:.1f} min of play over every run that filled the store)" if earlier else ")")
            if resumed else "")
    else:
        timing = ""
    return [
        f"{m['model']} ({m['env_id']}, weights {m['weights_sha256'][:12]}): {len(a.rows)} edits of {vectors} of "
        f"{', '.join(s.weights)} in {blocks}, op {s.op}{value}",
        (f"up to {s.episodes} episodes per edit, judged against a pool of {s.pool} unedited episodes on seeds no "
         "edit plays (unpaired: two-sample permutation test of the mean)" if s.pool else
         f"up to {s.episodes} paired episodes per edit")
        + f", seed {s.seed}, target return {s.target_return:g}, {s.dtype}"
        + (f", max {s.max_steps} steps" if s.max_steps else ""),
        f"design: {d.describe(_unit(s))}",
        f"{'pool' if s.pool else 'baseline'}: return {ret.value:.1f} [{ret.low:.1f}, {ret.high:.1f}] over "
        f"{len(a.baseline.records)} episodes, failed {fail.failures}/{fail.episodes}",
        f"cost: {c['episodes']} episodes of the {c['episodes_fixed_design']} a fixed design plays "
        f"({100 * share:.0f}%), "
        f"{c['env_steps']:,} environment steps"
        + timing + f", {c['where']}; stopped: "
        + ", ".join(f"{n} {why}" for why, n in c["stopped"].items()),
    ]


def _placebo_line(a) -> list[str]:
    p = a.placebo
    if p is None:
        return []
    against = "against the pool " if a.settings.pool else ""
    return [f"placebo: the {p['edits']} edits that change the weights least (energy share <= {p['energy_max']:.2g}) "
            f"move the return by {p['damage']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}] {against}over the first "
            f"look's {p['pairs']} " + ("episodes (near 0 where the pool is typical and tiny edits do nothing)"
                                       if a.settings.pool else "pairs (near 0 where a paired episode repeats under a "
                                                               "tiny change)")]


def _findings(a) -> list[str]:
    r, s = a.rows, a.settings
    sig = np.asarray(r["significant"], bool)
    dmg = np.asarray(r["damage"], float)
    fail = np.asarray(r["p_adj_failures"], float) <= s.alpha
    more = fail & (np.asarray(r["failure_change"], float) > 0)
    return [f"{int(sig.sum())} of {len(r)} edits change the return significantly ({s.correction}, alpha {s.alpha:g}): "
            f"{int((sig & (dmg > 0)).sum())} lower it, {int((sig & (dmg < 0)).sum())} raise it; "
            f"{int(more.sum())} fail significantly more often"] + _placebo_line(a)


def _claim_lines(c) -> list[str]:
    out = [f"claim ({c.embedding}): {c.sentence}"]
    out += [f"  [{'x' if v['holds'] else ' '}] {k}: {v['detail']}" for k, v in c.criteria.items()]
    for w, sub in c.per_weight.items():
        out.append(f"  {w}: {sub.sentence}")
    return out


def strongest(a, n: int = 10):
    """The n edits with the largest damage shown: ranked by the low end of the damage interval, not the mean,
    which over an early look's few pairs is as often large by chance (one bad episode) as by effect."""
    return a.rows.sort("damage_low", descending=True).head(n)


def surprising(a, n: int = 5):
    """Significantly damaging but not aligned beyond chance with the claim's embedding, largest damage first."""
    r = a.rows
    e = a.settings.embedding
    mask = np.asarray(r["significant"], bool) & (np.asarray(r["damage"], float) > 0) & ~(
        np.asarray(r[f"{e}_p_adj"], float) < a.alignment_alpha)
    return r.take(mask).sort("damage", descending=True).head(n)


def aligned_harmless(a, n: int = 5):
    """Aligned beyond chance with the claim's embedding but with no significant effect, most aligned first."""
    r = a.rows
    e = a.settings.embedding
    mask = (np.asarray(r[f"{e}_p_adj"], float) < a.alignment_alpha) & ~np.asarray(r["significant"], bool)
    return r.take(mask).sort(f"{e}_abs_cos", descending=True).head(n)


def table_head(a) -> list[str]:
    """The edit tables' columns; 'b' in 'failed b → e' is the baseline (paired) or the pool."""
    return ["edit", "σ", "energy", "|cos|", "label", _unit(a.settings), "stop", "damage [CI]", "p_adj",
            "failed b → e"]


def table_rows(a, t) -> list[list[str]]:
    e = a.settings.embedding
    out = []
    for r in t.rows():
        aligned = r[f"{e}_p_adj"] is not None and r[f"{e}_p_adj"] < a.alignment_alpha
        cos = r[f"{e}_abs_cos"]
        out.append([where(r), f"{r['singular_value']:.3g}", f"{r['energy']:.3f}",
                    "-" if cos is None else f"{cos:.3f}" + (" *" if aligned else ""), str(r[f"{e}_label"] or "-"),
                    str(r["episodes"]), r["stopped"],
                    f"{r['damage']:.1f} [{r['damage_low']:.1f}, {r['damage_high']:.1f}]", fmt_p(r["p_adj"]),
                    f"{100 * r['failures_baseline']:.0f}% → {100 * r['failures_edited']:.0f}%"])
    return out


def _sections(a):
    """(title, note, table) for the three lists."""
    e = a.settings.embedding
    return [("Strongest damage", "Ranked by the low end of the damage interval: the damage each edit is shown to do "
             "at least (a mean over an early look's few pairs is large by chance as often as by effect).",
             strongest(a)),
            ("Surprising: damaging but not aligned",
             f"Significantly damaging edits whose vector is not aligned with {e} beyond chance.", surprising(a)),
            ("Aligned but harmless", f"Vectors aligned with {e} beyond chance whose edit changes nothing significant.",
             aligned_harmless(a))]


MARKS = ("* aligned beyond chance; ~ in a tied group (its own vector, and so its |cos|, is rotation-unstable: "
         "only the group's span is determined); ° near-null (singular value below the noise floor)")


# ---- renderings ----------------------------------------------------------------------------------
def text(a, claim=None) -> str:
    claim = claim or a.claim()
    lines = _lines_head(a) + _findings(a) + _claim_lines(claim)
    lines += [f"warning: {w}" for w in a.warnings]
    for title, note, t in _sections(a):
        if not len(t):
            continue
        lines.append(f"{title.lower()}:")
        rows = table_rows(a, t)
        widths = [max(len(x) for x in col) for col in zip(table_head(a), *rows)]
        lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [table_head(a), *rows]]
    if any(len(t) for _, _, t in _sections(a)):
        lines.append(f"marks: {MARKS}")
    if a.files:
        lines.append(f"report: {a.files.get('html', '')}")
    return "\n".join(lines)


def _figures(a, claim) -> dict:
    """name -> (PNG bytes, caption)."""
    from surgery.analysis.report.figures import png
    from surgery.experiments import atlas_figures as F

    e = a.settings.embedding
    level = None if a.placebo is None else a.placebo["damage"]
    reference = "pool mean" if a.settings.pool else "baseline"
    dotted = "" if level is None else "; dotted: the placebo, what the edits that change the weights least do"
    return {
        "damage_heatmap": (png(F.damage_heatmap(a.rows, reference)),
                           "Mean return drop of every edited triple (red: lower return, blue: higher); one panel per "
                           "weight, blocks (and heads) down, triple index across (0 = largest singular value); dots: "
                           "significant after the correction across edits."),
        "damage_vs_alignment": (png(F.damage_vs_alignment(a.rows, e, a.thresholds.get(e), claim.rho, level, reference)),
                                f"Damage against the best |cos| with {e}, by weight type; filled: significant; "
                                f"dashed: the |cos| that beats chance; bars: the damage interval{dotted}."),
        "damage_vs_size": (png(F.damage_vs_size(a.rows, claim.size, level, reference)),
                           f"Damage against the singular value: size is the confound alignment has to beat{dotted}."),
    }


def markdown(a, claim=None, figures: dict | None = None) -> str:
    claim = claim or a.claim()
    parts = [f"# Causal atlas: {a.model['model']}", "\n".join(f"- {x}" for x in _lines_head(a) + _findings(a)),
             "## The claim", f"**{claim.sentence}**",
             "\n".join(f"- [{'x' if v['holds'] else ' '}] **{k}**: {v['detail']}" for k, v in claim.criteria.items())]
    if claim.per_weight:
        parts.append("Per weight type:\n\n" + "\n".join(f"- {sub.sentence}" for sub in claim.per_weight.values()))
    if a.warnings:
        parts.append("\n".join(f"> warning: {w}" for w in a.warnings))
    for name in ("damage_heatmap", "damage_vs_alignment", "damage_vs_size"):
        if figures and name in figures:
            parts.append(f"![{name}](figures/{name}.png)\n\n_{figures[name][1]}_")
    for title, note, t in _sections(a):
        parts += [f"## {title}", note + (f" Marks: {MARKS}." if len(t) else ""),
                  markdown_table(table_head(a), table_rows(a, t)) if len(t) else "_none_"]
    parts += ["## How to read it", HOW_TO_READ, "Files: atlas.csv (every row), atlas.json, atlas.html, plan.json, "
              "episodes.sqlite (every episode)."]
    return "\n\n".join(p for p in parts if p) + "\n"


def html(a, claim=None, figures: dict | None = None) -> str:
    from surgery.analysis.report.build import CSS

    claim = claim or a.claim()
    figures = _figures(a, claim) if figures is None else figures
    esc = H.escape

    def fig(name):
        if name not in figures:
            return ""
        data, caption = figures[name]
        return (f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def table(t):
        if not len(t):
            return "<p class='muted'>none</p>"
        out = ["<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in table_head(a)) + "</tr>"]
        for row in table_rows(a, t):
            out.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        return "\n".join(out) + f"</table><p class='muted'>{esc(MARKS)}</p>"

    title = f"Causal atlas: {a.model['model']}"
    crit = "".join(f"<li>{'✔' if v['holds'] else '✘'} <b>{esc(k)}</b>: {esc(v['detail'])}</li>"
                   for k, v in claim.criteria.items())
    per = "".join(f"<li>{esc(sub.sentence)}</li>" for sub in claim.per_weight.values())
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
             f"<style>{CSS}</style></head><body>", f"<h1>{esc(title)}</h1>",
             "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in _lines_head(a) + _findings(a)) + "</ul>",
             "<h2>The claim</h2>", f"<div class='answer'>{esc(claim.sentence)}</div>", f"<ul>{crit}</ul>",
             f"<p>Per weight type:</p><ul>{per}</ul>" if per else "",
             "".join(f"<p class='sig'>warning: {esc(w)}</p>" for w in a.warnings),
             fig("damage_heatmap"), fig("damage_vs_alignment"), fig("damage_vs_size")]
    for t_title, note, t in _sections(a):
        parts += [f"<h2>{esc(t_title)}</h2>", f"<p>{esc(note)}</p>" if note else "", table(t)]
    parts += ["<h2>How to read it</h2>", f"<p class='muted'>{esc(HOW_TO_READ)}</p>",
              "<p class='muted'>Files: atlas.csv (every row), atlas.json, atlas.md, plan.json, episodes.sqlite "
              "(every episode).</p></body></html>"]
    return "\n".join(p for p in parts if p)


def to_dict(a, claim) -> dict:
    return {"experiment": "atlas", "model": a.model, "settings": a.settings,
            "alignment_settings": a.alignment_settings, "design": a.design,
            "design_text": a.design.describe(_unit(a.settings)),
            "baseline": a.baseline.summary(), "cost": a.cost, "claim": claim, "warnings": a.warnings,
            "thresholds": a.thresholds, "placebo": a.placebo}


def write(a, out) -> list[Path]:
    """Render everything, then write atlas.csv, .md, .html, .json and figures/*.png atomically."""
    from surgery.files import to_json, write_atomic

    out = Path(out)
    claim = a.claim()
    figures = _figures(a, claim)
    files = {"atlas.csv": a.rows.to_csv(), "atlas.md": markdown(a, claim, figures),
             "atlas.html": html(a, claim, figures), "atlas.json": to_json(to_dict(a, claim)),
             **{f"figures/{name}.png": data for name, (data, _) in figures.items()}}
    written = [write_atomic(out / rel, content) for rel, content in files.items()]
    a.files.update({"csv": out / "atlas.csv", "markdown": out / "atlas.md", "html": out / "atlas.html",
                    "json": out / "atlas.json"})
    return written
