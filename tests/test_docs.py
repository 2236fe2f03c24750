"""Every ```python block of README.md and docs/ runs, against the shipped Hopper.

A block preceded by `<!-- not run: REASON -->` is skipped (signatures; examples that need weights
or data not shipped here). The blocks of one file run in order in one namespace, which starts
with `model = surgery.load("hopper")` for the docs that use a `model` without loading it. To keep
the default run fast, `episodes=N` is run as `episodes=6, max_steps=20` (6: enough for an atlas's
three looks), `range(N)` as `range(2)` and `max_steps=N` as `max_steps=20`: the blocks' names,
arguments and flow are what is checked, not the numbers. docs/lm.md is left out: all of its
examples need real language-model weights.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "docs/core.md", "docs/analysis.md", "docs/evaluation.md", "docs/zoo.md"]
BLOCK = re.compile(r"(?:<!-- not run: (?P<reason>[^>]*) -->\n)?```python\n(?P<code>.*?)```", re.S)


def blocks(doc: str) -> list[tuple[str | None, str]]:
    """(reason it is not run or None, code) for every python block of a file."""
    return [(m["reason"], m["code"]) for m in BLOCK.finditer((ROOT / doc).read_text())]


def quick(code: str) -> str:
    code = re.sub(r"\bmax_steps=\d+", "max_steps=20", code)
    code = re.sub(r"\brange\(\d+\)", "range(2)", code)
    return re.sub(r"\bepisodes=\d+", "episodes=6, max_steps=20", code)


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_block_runs(doc, monkeypatch, tmp_path):
    import surgery

    monkeypatch.chdir(tmp_path)  # anything a block writes lands here
    found = blocks(doc)
    assert found, f"{doc} has no python blocks any more: drop it from DOCS"
    namespace = {"__name__": "__docs__", "surgery": surgery}
    if doc != "README.md":
        namespace["model"] = surgery.load("hopper")
    for i, (reason, code) in enumerate(found):
        if reason is not None:
            assert reason.strip(), f"{doc} block {i}: say why it is not run"
            continue
        exec(compile(quick(code), f"{doc} block {i}", "exec"), namespace)


def test_the_readme_tour_defines_what_it_uses():
    """The tour once used `inputs` without defining it: run unchanged, it must not raise NameError."""
    (_, tour), *_ = blocks("README.md")
    assert "inputs = " in tour.split("run_with_cache")[0]
