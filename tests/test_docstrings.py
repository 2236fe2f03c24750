"""The examples in the public functions' docstrings run and print what they show (doctest, on the shipped Hopper)."""
from __future__ import annotations

import doctest

import pytest
import torch

import surgery
from surgery.analysis import alignment as alignment_module
from surgery.analysis import localisation
from surgery.core import decomposition, patching

DOCUMENTED = [patching.patch, patching.Patch, patching.Edit, decomposition.decompose, alignment_module.alignment,
              localisation.locate]


@pytest.fixture(scope="module")
def hopper():
    return surgery.load("hopper")


@pytest.mark.parametrize("fn", DOCUMENTED, ids=lambda f: f.__name__)
def test_docstring_documents_every_argument_and_its_example_runs(fn, hopper):
    import inspect

    doc = inspect.getdoc(fn)
    params = [p for p in inspect.signature(fn).parameters if p not in ("self",)]
    if isinstance(fn, type) and fn is not patching.Patch:  # a dataclass: its fields
        params = [f for f in fn.__dataclass_fields__]
    missing = [p for p in params if f"{p.lstrip('*')}:" not in doc and f"{p}," not in doc]
    assert not missing, f"{fn.__name__} does not document {missing}"
    assert ">>>" in doc, f"{fn.__name__} has no example"
    globs = {**vars(inspect.getmodule(fn)), "model": hopper, "torch": torch, "surgery": surgery}
    finder = doctest.DocTestFinder(recurse=False)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(fn, fn.__name__, globs=globs):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
