"""Reports: self-contained HTML, Markdown, CSV, figures that say where they look, atomic writes."""
from __future__ import annotations

import base64
import csv
import io
import json
import os
import re

import pytest
import torch

from surgery.analysis.localisation import locate
from surgery.analysis.report import build_report, summary_text
from surgery.analysis.report import figures as F
from tests.conftest import build

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loc():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield locate(build("dt"), ["action_out", "state_in", "return_in"], top=3)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def report(loc):
    return build_report(loc, "tiny-dt", elapsed=0.5)


def test_html_is_self_contained(report, loc):
    html = report.files["report.html"]
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    pngs = [k for k in report.files if k.endswith(".png")]
    assert len(images) == len(pngs) >= 3 + 3 * 3  # overview, several sets, spectra + 3 per set
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert not re.search(r'(src|href)="(https?:|//|file:)', html) and "<script" not in html and "<link" not in html
    for name in ("action_out", "state_in", "return_in"):
        assert f"<h2 id='{name}'>" in html
    assert "block" in html and "p_adj" in html and "tiny-dt" in html


def test_markdown_and_tables(report, loc):
    md = report.files["report.md"]
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert link in report.files
    assert md.count("| where | idx |") == 3
    table = [line for line in md.splitlines() if line.startswith("|")]
    cells = lambda line: len(re.findall(r"(?<!\\)\|", line)) - 1  # noqa: E731  (unescaped pipes)
    summary = table[:2 + 3]  # header, rule, one row per set
    assert [cells(line) for line in summary] == [13] * 5, summary
    # Every strongest vector's group cell says whether it is identifiable, as the summary table does.
    for line, r in zip(summary[2:], loc.summary.rows()):
        assert ("rotation-unstable #" in line) == (not r["identifiable"]) == ("| identifiable |" not in line)
    # The findings tables mark each vector inside a tied group, and show its span's score beside it.
    for name in ("action_out", "state_in", "return_in"):
        part = md.split(f"## {name}")[1]
        head = next(line for line in part.splitlines() if line.startswith("| where"))
        assert "| gap | identifiable | span \\|proj\\| | span label | span p_adj |" in head
        rows = [line for line in part.splitlines() if line.startswith("| block")][:10]
        ranking = loc.ranking.where(embedding=name).head(len(rows))
        for line, ident in zip(rows, ranking["identifiable"]):
            assert ("rotation-unstable" in line) == (not ident), line
    assert len(list(csv.DictReader(io.StringIO(report.files["groups.csv"])))) == len(loc.alignment.groups)
    rows = list(csv.DictReader(io.StringIO(report.files["summary.csv"])))
    assert [r["embedding"] for r in rows] == ["action_out", "state_in", "return_in"]
    assert len(list(csv.DictReader(io.StringIO(report.files["vectors.csv"])))) == len(loc.ranking)
    records = list(csv.DictReader(io.StringIO(report.files["alignment.csv"])))
    assert records and all(int(r["idx"]) < 8 or float(r["p_adj"]) < 0.05 for r in records)
    meta = json.loads(report.files["summary.json"])
    assert meta["settings"]["correction"] == "holm" and len(meta["summary"]) == 3


def test_terminal_summary(loc):
    text = summary_text(loc, "tiny-dt", 1.0, ["out/report.html"])
    assert text.startswith("Alignment of tiny-dt (analysed in 1.00 s)")
    assert "embedding" in text and "needs |cos|" in text and "action_out" in text and "Wrote out/report.html" in text
    assert max(len(line) for line in text.splitlines()) < 200


def test_atomic_write_leaves_no_partial_files(tmp_path, report, monkeypatch):
    out = tmp_path / "out"
    report.write(out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    calls = []
    real = os.replace

    def failing(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError("disk full")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="disk full"):
        report.write(out)
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after.keys() == before.keys()  # no temporary files left behind
    assert after == before  # every file is whole: the old version or (identical) new one


def test_a_rerun_into_the_same_folder_leaves_no_figures_of_the_earlier_run(tmp_path, report, loc):
    out = tmp_path / "out"
    (out / "notes.txt").parent.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")  # not the report's: never touched
    report.write(out)
    assert any((out / "figures").glob("*.png"))
    build_report(loc, "tiny-dt", figures=False).write(out)
    assert not any((out / "figures").glob("*.png")) and (out / "notes.txt").read_text() == "mine"
    assert (out / "report.md").is_file()


def test_figures_name_their_location(loc):
    a = loc.alignment
    fig = F.topk_table(a, "action_out", 1, "OV", head=2, side="out", k=3)
    assert "block 1 OV head 2 (write side)" in fig.axes[0].get_title()
    fig = F.heatmap(a.adapter, 0, "K", "state_in")
    assert "block 0 K (read side)" in fig._suptitle.get_text()
    fig = F.multi_heatmap(a.adapter, 1, "V", ["state_in", "action_out"], vectors=4)
    assert [ax.get_title() for ax in fig.axes[:2]] == ["state_in", "action_out"]
    for fig in (F.overview(a), F.scatter(a, "return_in"), F.spectra(a.adapter)):
        assert F.png(fig)[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="no records for action_out"):
        F.topk_table(a, "action_out", 5, "K")


def test_display_label():
    assert F.display_label("$x$") == r"\$x\$"
    assert F.display_label("a\nb") == r"a\nb"
    assert F.display_label("  ") == "␣␣" and F.display_label(" the") == "␣the" and F.visible("a b ") == "a b␣"
    assert len(F.display_label("x" * 50)) == 18


def test_html_has_a_table_of_contents_whose_links_all_land(report, loc):
    html = report.files["report.html"]
    nav = html.split("<nav id='contents'>")[1].split("</nav>")[0]
    links = re.findall(r"href='#([^']+)'", nav)
    ids = set(re.findall(r"""id=['"]([^'"]+)['"]""", html))
    assert links and not [link for link in links if link not in ids]
    for name in ("summary", "action_out", "state_in", "return_in", "fig-overview", "fig-action_out_topk"):
        assert name in links
    md = report.files["report.md"]
    assert "- [Summary](#summary)" in md and "- [action_out](#action_out)" in md


def _rows_of(html: str, name: str) -> list[str]:
    section = html.split(f"<h2 id='{name}'>")[1].split("<h2 ")[0]
    return re.findall(r"<tr>(.*?)</tr>", section.split("</table>")[0], re.S)


def test_a_small_set_shows_each_label_once(report, loc):
    """3 action labels with top=3: one column, each label once (not the same three as 'most positive'
    and again as 'most negative')."""
    html = report.files["report.html"]
    header, *rows = _rows_of(html, "action_out")
    assert "cos with every label" in header and "most negative" not in header
    for row in rows:
        labels = re.findall(r'<span class="lab"[^>]*>([^<]*) [+-]\d\.\d\d</span>', row)
        assert sorted(labels) == ["a0", "a1", "a2"], row
    cosines = [float(c) for c in re.findall(r'<span class="lab"[^>]*>[^<]* ([+-]\d\.\d\d)</span>', rows[0])]
    assert cosines == sorted(cosines, reverse=True)
    assert "highest cos first" in F.topk_table(loc.alignment, "action_out", 0, "K", k=3).axes[0].get_title()


def test_a_large_set_keeps_two_disjoint_columns():
    torch.manual_seed(0)
    loc = locate(build("dt"), ["time_in"], top=3)  # 40 timestep labels
    html = build_report(loc, "tiny-dt", figures=False).files["report.html"]
    header, *rows = _rows_of(html, "time_in")
    assert "most positive" in header and "most negative" in header
    for row in rows:
        cells = re.findall(r"<td>(.*?)</td>", row)
        top, bottom = (re.findall(r'<span class="lab"[^>]*>([^<]*) [+-]', c) for c in cells[-2:])
        assert len(top) == len(bottom) == 3 and not set(top) & set(bottom)


def test_markdown_tables_escape_every_cell():
    """Every report's tables go through files.markdown_table: a '|cos|' header or a piped label keeps its row whole."""
    import re

    from surgery.files import markdown_table

    table = markdown_table(["edit", "|cos|"], [["b0 K #1", "0.5 *"], ["a|b", "two\nlines"]]).splitlines()
    cells = [len(re.findall(r"(?<!\\)\|", line)) - 1 for line in table]
    assert cells == [2, 2, 2, 2] and table[3] == "| a\\|b | two lines |"


def test_tails_tell_labels_apart_by_index_not_by_text():
    """GPT-2's byte tokens all print '�': two of them must stay two labels, each with its own cos."""
    import numpy as np

    from surgery.analysis.tables import Table

    def records(labels, index, cos, tails_, ranks):
        return Table({"label": np.array(labels, dtype=object), "label_index": np.array(index), "cos": np.array(cos),
                      "tail": np.array(tails_, dtype=object), "rank": np.array(ranks)})

    r = records(["�", "?", "x", "�", "�", "/"], [200, 63, 120, 201, 202, 47],
                [0.67, 0.65, 0.63, -0.55, -0.54, -0.53], ["top"] * 3 + ["bottom"] * 3, [1, 2, 3, 1, 2, 3])
    t = F.tails(r, 3)
    assert t["top"][0] == ("�", 0.67) and [c for _, c in t["bottom"]] == [-0.55, -0.54, -0.53]
    # A set of 4 labels with 3 kept per end: the ends overlap, so every label once, highest first.
    small = records(["a", "b", "c", "d", "c", "b"], [0, 1, 2, 3, 2, 1], [0.9, 0.5, 0.1, -0.8, 0.1, 0.5],
                    ["top"] * 3 + ["bottom"] * 3, [1, 2, 3, 1, 2, 3])
    assert F.tails(small, 3) == {"all": [("a", 0.9), ("b", 0.5), ("c", 0.1), ("d", -0.8)]}
    # Two kept per end of a large set, asked for three: top and bottom with what there is, not "every label".
    few_kept = records(["a", "b", "y", "z"], [0, 1, 8, 9], [0.9, 0.5, -0.7, -0.8], ["top", "top", "bottom", "bottom"],
                       [1, 2, 1, 2])
    assert set(F.tails(few_kept, 3)) == {"top", "bottom"}


def test_a_fast_route_with_few_vectors_reports_without_selectivity():
    """method gram, vectors 4 (the docs' route for wide models): selectivity needs every triple; say so, not crash."""
    import surgery

    fast = locate(surgery.load("hopper"), ["action_out"], method="gram", vectors=4)  # something beyond chance
    assert "most selective weight: not computed" in str(fast)
    assert "not computed (fast route)" in build_report(fast, "hopper", figures=False).files["report.md"]
