"""The report of an analysis: self-contained HTML (figures inlined as base64 PNG), Markdown, CSV and JSON.

Everything is rendered in memory first; `Report.write` then puts each file in place by writing a
temporary file and renaming it, so a failure leaves either the old report or the new one, never
a half-written file.
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from surgery.analysis.localisation import Location, describe, where
from surgery.analysis.report import figures as F
from surgery.analysis.report.terminal import group_cell, searched, settings_line, ties_line
from surgery.analysis.tables import Table
from surgery.errors import SurgeryError
from surgery.files import jsonable, write_atomic

HOW_TO_READ = (
    "Each singular vector of a residual-facing side (K read, V write, OV read and write, QK query and key) is "
    "compared with every "
    "unit-normalised embedding of a set by cosine. Its score is its best |cos| over the set (a triple's sign is a "
    "convention, so both signs count). Chance is what uniformly random unit directions in the same dimension reach "
    "against the same set: exact for a one-vector set, Monte Carlo with a fixed seed otherwise (with the exact union "
    "bound in the far tail). p is that chance; p_adj corrects it for the number of singular vectors searched; z is "
    "(|cos| - mean) / sd of the chance law. Selectivity is how strongly a whole weight reads (writes) the set's "
    "directions compared with an average direction, using every singular value (1 = no preference), with a z-score "
    "against random rotations. "
    "Rotation-unstable: the vector's singular value is so close to a neighbour's that a perturbation of the "
    "calibrated size (||E||/S_0, Wedin's sin-theta bound) could turn it anywhere within their shared span, so its "
    "own cosines are not a property of the model; the span (the group, #first-#last) is. A group is scored by the "
    "norm of the embedding's projection on its span (the best |cos| of any unit vector in it), against the exact "
    "law of a random subspace of that dimension (Beta(k/2, (d-k)/2) per label, Monte Carlo over the set), "
    "corrected over the groups searched."
)


REPORT_FILES = ("report.html", "report.md", "summary.csv", "weights.csv", "vectors.csv", "groups.csv",
                "alignment.csv", "summary.json")
"""The fixed names a report writes (besides figures/*.png)."""


@dataclass
class Report:
    """Rendered files, by relative path."""

    files: dict = field(default_factory=dict)  # path -> str or bytes

    def write(self, out: str | Path) -> list[Path]:
        """Write every file atomically (temporary file in the same directory, then rename), then remove what an
        earlier report left there and this one does not write (its figures), so the folder describes one run.

        Not one atomic folder: `--out` may be a folder that holds other things (`--out .`); only the report's
        own files (figures/*.png and the fixed names it writes) are ever removed.
        """
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise SurgeryError(f"--out {out} exists and is not a directory")
        written = [write_atomic(out / rel, content) for rel, content in self.files.items()]
        stale = [p for p in (out / "figures").glob("*.png") if f"figures/{p.name}" not in self.files]
        stale += [out / n for n in REPORT_FILES if n not in self.files and (out / n).is_file()]
        for p in stale:
            p.unlink()
        return written


# ---- what goes in ---------------------------------------------------------------------------------
def findings(loc: Location, embedding: str, n: int = 10, k: int = 3) -> list[dict]:
    """The n most significant singular vectors for a set, each with its k top and bottom labels
    (or, for a set of fewer than 2k labels, every label once: key "all")."""
    rec = loc.alignment.records.where(embedding=embedding)
    out = []
    for r in loc.ranking.where(embedding=embedding).head(n).rows():
        mine = rec.where(block=r["block"], weight=r["weight"], head=-1 if r["head"] is None else r["head"],
                         side=r["side"], idx=r["idx"])
        r = dict(r)
        r["where"] = where(r["block"], r["weight"], r["head"], r["side"])
        r.update(F.tails(mine, k))  # top and bottom, or "all" when the set has fewer than 2k labels
        out.append(r)
    return out


def records_subset(loc: Location, leading: int) -> Table:
    """Records of each weight's first `leading` singular vectors and of every vector beyond chance."""
    rec = loc.alignment.records
    v = loc.alignment.vectors
    sig = v.take(v["p_adj"] < loc.alpha)
    keep = rec["idx"] < leading
    key = lambda t: (t["block"].astype(np.int64) * 100_003 + t["head"] + 1) * 1_000_003 + t["idx"]  # noqa: E731
    for e, w, s in {(e, w, s) for e, w, s in zip(sig["embedding"], sig["weight"], sig["side"])}:
        here = (rec["embedding"] == e) & (rec["weight"] == w) & (rec["side"] == s)
        mine = sig.where(embedding=e, weight=w, side=s)
        keep |= here & np.isin(key(rec), key(mine))
    return rec.take(keep)


def _figures(loc: Location, model, progress: bool) -> dict:
    """name -> (PNG bytes, caption)."""
    a = loc.alignment
    s = a.settings
    small = [n for n in s.embeddings if len(a.adapter.embedding_sets()[n].labels) <= 64] or s.embeddings[:3]
    jobs = [("overview", lambda: F.overview(a),
             "Every weight against every embedding set: the colour is -log10 of the best corrected p-value, numbers "
             "count singular vectors beyond chance, the outline marks cells beyond chance."),
            ("spectra", lambda: F.spectra(model, s.weights, s.blocks, s.fold_ln),
             "Singular values of every weight (per head for OV and QK).")]
    best = loc.ranking.row(0)
    jobs.append(("several_sets", lambda: F.multi_heatmap(model, best["block"], best["weight"], small, best["head"],
                                                         best["side"], fold_ln=s.fold_ln),
                 f"The strongest finding's weight, {where(best['block'], best['weight'], best['head'], best['side'])}, "
                 f"against several embedding sets in one view."))
    for name in s.embeddings:
        r = loc.ranking.where(embedding=name).row(0)
        at = where(r["block"], r["weight"], r["head"], r["side"])
        jobs += [
            (f"{name}_scatter", lambda name=name: F.scatter(a, name),
             f"{name}: singular value against best |cos|; the red line is the bar for beating chance."),
            (f"{name}_heatmap", lambda name=name, r=r: F.heatmap(model, r["block"], r["weight"], name, r["head"],
                                                                 r["side"], fold_ln=s.fold_ln),
             f"{name} against the first singular vectors of {at}, the weight of its strongest vector."),
            (f"{name}_topk", lambda name=name, r=r: F.topk_table(a, name, r["block"], r["weight"], r["head"],
                                                                 r["side"], k=min(5, s.top)),
             f"Top and bottom labels of {at}'s first singular vectors for {name}."),
        ]
    out = {}
    for name, make, caption in tqdm(jobs, desc="figures", unit="fig", disable=not progress, leave=False):
        try:
            out[name] = (F.png(make()), caption)
        except ValueError as e:  # e.g. the leading vectors were not in a restricted alignment
            out[name] = (None, f"{caption} (not drawn: {e})")
    return out


# ---- rendering ---------------------------------------------------------------------------------------
def build_report(loc: Location, model_name: str, model=None, elapsed: float | None = None, figures: bool = True,
                 leading: int = 8, progress: bool = False) -> Report:
    """Render HTML, Markdown, CSV and JSON for a located alignment (model: for heatmaps and spectra)."""
    model = model if model is not None else loc.alignment.adapter
    figs = _figures(loc, model, progress) if figures else {}
    report = Report()
    report.files["report.html"] = _html(loc, model_name, figs, elapsed)
    report.files["report.md"] = _markdown(loc, model_name, figs, elapsed)
    for name, (data, _) in figs.items():
        if data is not None:
            report.files[f"figures/{name}.png"] = data
    report.files["summary.csv"] = loc.summary.to_csv()
    report.files["weights.csv"] = loc.weights.to_csv()
    report.files["vectors.csv"] = loc.ranking.to_csv()
    report.files["groups.csv"] = loc.alignment.groups.to_csv()
    report.files["alignment.csv"] = records_subset(loc, leading).to_csv()
    report.files["summary.json"] = json.dumps({"model": model_name, "adapter": repr(loc.alignment.adapter),
                                               "settings": jsonable(loc.alignment.settings),
                                               "summary": loc.summary.rows()}, indent=2, allow_nan=False)
    return report


def _fmt_p(p) -> str:
    return "-" if p is None else f"{p:.2g}"


def _summary_rows(loc: Location) -> tuple[list[str], list[list[str]]]:
    head = ["embedding", "labels", "vectors searched", "beyond chance", "needs |cos| ≥", "strongest singular vector",
            "σ (energy share)", "label", "cos", "p_adj", "z", "its group (span)", "most selective weight"]
    rows = []
    for r in loc.summary.rows():
        rows.append([r["embedding"], str(r["n_labels"]), str(r["n_searched"]), str(r["n_significant"]),
                     f"{r['threshold']:.3f}", f"{where(r['block'], r['weight'], r['head'], r['side'])} #{r['idx']}",
                     _fmt_size(r), F.visible(r["label"]), f"{r['cos']:+.3f}", _fmt_p(r["p_adj"]), f"{r['z']:.1f}", group_cell(r),
                     _fmt_selective(r)])
    return head, rows


def _fmt_selective(r) -> str:
    if r["selectivity"] is None or r["selectivity"] != r["selectivity"]:  # a fast route: needs every triple
        return "not computed (fast route)"
    return (f"{where(r['selective_block'], r['selective_weight'], r['selective_head'], r['selective_side'])}"
            f" ×{r['selectivity']:.2f} (z {r['selectivity_z']:.1f})")


def _finding_rows(loc: Location, name: str) -> tuple[list[str], list[list]]:
    found = findings(loc, name)
    few = any("all" in f for f in found)  # a set of fewer than 2k labels: one column, each label once
    for f in found:  # every row in the same layout (a row's tails are "all" only where its set is that small)
        if few and "all" not in f:
            f["all"] = f["top"] + f["bottom"]
    head = ["where", "idx", "σ (energy share)", "best label", "cos", "p", "p_adj", "z", "gap", "identifiable",
            "span |proj|",
            "span label", "span p_adj"]
    head += ["cos with every label"] if few else ["most positive", "most negative"]
    rows = []
    for f in found:
        ident = "yes" if f["identifiable"] else group_cell(f).split(":")[0]
        span = f["subspace_cos"]
        rows.append([f["where"], str(f["idx"]), _fmt_size(f), F.visible(f["label"]), f["cos"],
                     _fmt_p(f["p"]), f["p_adj"], f"{f['z']:.1f}", _fmt_gap(f["rel_gap"]), ident,
                     "-" if span is None else f"{span:.3f}", F.visible(f["subspace_label"] or "-"),
                     _fmt_p(f["subspace_p_adj"]), *([f["all"]] if few else [f["top"], f["bottom"]])])
    return head, rows


def _fmt_size(row) -> str:
    """'1.61 (4.7%)'; a near-null vector (below its weight's noise floor) is flagged."""
    cell = f"{row['singular_value']:.3g} ({100 * row['energy']:.2g}%)"
    return cell + " near-null" if row["near_null"] else cell


def _fmt_gap(g) -> str:
    return "-" if g is None else "∞" if g == float("inf") else f"{g:.3g}"


# ---- HTML --------------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1300px;color:#222;
padding:0 1em}
h1{font-size:1.6em}h2{margin-top:2em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:13px;margin:.8em 0}th,td{border:1px solid #ddd;padding:3px 7px;text-align:left}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sig{font-weight:600}.muted{color:#777}
.answer{white-space:pre-wrap;background:#f8f8fb;border-left:3px solid #7a7ad0;padding:.6em 1em;font-size:14px}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:13px;color:#555}
.lab{display:inline-block;margin:1px 3px 1px 0;padding:0 4px;border-radius:3px;font-size:12px}
"""


def _cos_style(c: float) -> str:
    """Background colour for a cosine: red positive, blue negative, stronger with |cos|."""
    a = min(abs(c), 1.0) * 0.85
    rgb = "214,39,40" if c >= 0 else "31,119,180"
    return f"background:rgba({rgb},{a:.2f});color:{'#fff' if a > 0.5 else '#000'}"


def _labels_html(pairs) -> str:
    return "".join(f'<span class="lab" style="{_cos_style(c)}">{html.escape(F.visible(str(label)))} {c:+.2f}</span>'
                   for label, c in pairs)


def _table_html(head, rows, alpha: float | None = None) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for row in rows:
        cells = []
        for h, v in zip(head, row):
            if isinstance(v, list):
                cells.append(f"<td>{_labels_html(v)}</td>")
            elif h == "cos" and isinstance(v, float):
                cells.append(f'<td class="num" style="{_cos_style(v)}">{v:+.3f}</td>')
            elif h == "p_adj" and isinstance(v, float):
                cls = "num sig" if alpha is not None and v < alpha else "num"
                cells.append(f'<td class="{cls}">{v:.2g}</td>')
            else:
                num = isinstance(v, str) and v.replace(".", "", 1).replace("-", "", 1).replace("+", "", 1).isdigit()
                cells.append(f'<td class="{"num" if num else ""}">{html.escape(str(v))}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _anchor(name: str) -> str:
    """An HTML id for a section (embedding set names are identifiers, but a plug-in's may not be)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


FIGURE_TITLES = {"overview": "every weight x every set", "several_sets": "the strongest weight x several sets",
                 "spectra": "singular values", "scatter": "singular value vs best |cos|",
                 "heatmap": "heatmap of the strongest weight", "topk": "labels of the strongest weight"}


def _toc_html(loc: Location, figs: dict) -> str:
    """The table of contents: the summary and its figures, then each embedding set and its parts."""
    def link(anchor: str, text: str) -> str:
        return f"<a href='#{anchor}'>{html.escape(text)}</a>"

    top = [link("summary", "Summary")]
    top += [link(f"fig-{n}", FIGURE_TITLES[n]) for n in ("overview", "several_sets", "spectra") if n in figs]
    items = [f"<li>{top[0]}" + (f" ({', '.join(top[1:])})" if top[1:] else "") + "</li>"]
    for name in loc.alignment.settings.embeddings:
        a = _anchor(name)
        parts = [link(f"{a}-vectors", "most significant vectors")]
        parts += [link(f"fig-{_anchor(f'{name}_{n}')}", FIGURE_TITLES[n]) for n in ("scatter", "heatmap", "topk")
                  if f"{name}_{n}" in figs]
        items.append(f"<li>{link(a, name)} ({', '.join(parts)})</li>")
    return "<nav id='contents'><h2>Contents</h2><ul>" + "".join(items) + "</ul></nav>"


def _figure_html(figs: dict, name: str) -> str:
    if name not in figs:
        return ""
    data, caption = figs[name]
    anchor = f"fig-{_anchor(name)}"
    if data is None:
        return f'<p class="muted" id="{anchor}">{html.escape(caption)}</p>'
    b64 = base64.b64encode(data).decode()
    return (f'<figure id="{anchor}"><img alt="{html.escape(name)}" src="data:image/png;base64,{b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _html(loc: Location, model_name: str, figs: dict, elapsed) -> str:
    a = loc.alignment
    title = f"SVD alignment report: {model_name}"
    timing = f" Analysis took {elapsed:.2f} s." if elapsed is not None else ""
    head, rows = _summary_rows(loc)
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{html.escape(repr(a.adapter))}</p>",
             f"<p>Searched {html.escape(searched(loc))}. {html.escape(settings_line(loc))}{timing}</p>",
             f"<p>{html.escape(ties_line(loc))}</p>",
             _toc_html(loc, figs),
             "<h2 id='summary'>Summary</h2>", _table_html(head, rows),
             "<div class='answer'>" + html.escape(str(loc)) + "</div>",
             f"<p class='muted'>{html.escape(HOW_TO_READ)}</p>",
             _figure_html(figs, "overview"), _figure_html(figs, "several_sets"), _figure_html(figs, "spectra")]
    for name in a.settings.embeddings:
        fh, fr = _finding_rows(loc, name)
        parts += [f"<h2 id='{_anchor(name)}'>{html.escape(name)}</h2>",
                  "<div class='answer'>" + html.escape(describe(loc, name)) + "</div>",
                  f"<h3 id='{_anchor(name)}-vectors'>Most significant singular vectors</h3>",
                  _table_html(fh, fr, loc.alpha),
                  _figure_html(figs, f"{name}_scatter"), _figure_html(figs, f"{name}_heatmap"),
                  _figure_html(figs, f"{name}_topk")]
    parts.append("<p class='muted'>Files: summary.csv, weights.csv, vectors.csv, groups.csv, alignment.csv, "
                 "summary.json, report.md.</p></body></html>")
    return "\n".join(p for p in parts if p)


# ---- Markdown ----------------------------------------------------------------------------------------
def _md_cell(v) -> str:
    if isinstance(v, list):
        return " ".join(f"{_md_escape(str(label))} ({c:+.2f})" for label, c in v)
    if isinstance(v, float):
        return f"{v:.2g}" if abs(v) < 1e-3 else f"{v:+.3f}"
    return _md_escape(str(v))


def _md_escape(s: str) -> str:
    return F.visible(s).replace("|", "\\|").replace("`", "\\`")


def _md_table(head, rows) -> str:
    lines = ["| " + " | ".join(_md_escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_md_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_figure(figs: dict, name: str) -> str:
    if name not in figs:
        return ""
    data, caption = figs[name]
    return f"_{caption}_" if data is None else f"![{name}](figures/{name}.png)\n\n_{caption}_"


def _markdown(loc: Location, model_name: str, figs: dict, elapsed) -> str:
    a = loc.alignment
    timing = f" Analysis took {elapsed:.2f} s." if elapsed is not None else ""
    head, rows = _summary_rows(loc)
    toc = "\n".join(["Contents:", "- [Summary](#summary)"] +
                     [f"- [{_md_escape(n)}](#{_anchor(n).lower()})" for n in a.settings.embeddings])
    parts = [f"# SVD alignment report: {model_name}", f"`{a.adapter!r}`",
             f"Searched {searched(loc)}. {settings_line(loc)}{timing}", ties_line(loc), toc, "## Summary",
             _md_table(head, rows),
             "```\n" + str(loc) + "\n```", HOW_TO_READ,
             _md_figure(figs, "overview"), _md_figure(figs, "several_sets"), _md_figure(figs, "spectra")]
    for name in a.settings.embeddings:
        fh, fr = _finding_rows(loc, name)
        parts += [f"## {name}", "```\n" + describe(loc, name) + "\n```", "### Most significant singular vectors",
                  _md_table(fh, fr), _md_figure(figs, f"{name}_scatter"), _md_figure(figs, f"{name}_heatmap"),
                  _md_figure(figs, f"{name}_topk")]
    return "\n\n".join(p for p in parts if p) + "\n"
