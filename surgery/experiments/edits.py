"""Edits as experiment specs: human labels, directory names, JSON tags."""
from __future__ import annotations

from surgery.core.patching import Edit
from surgery.names import SIDE_WORDS


def tag(edit: Edit) -> dict:
    """A JSON-able description of the edit, stored in the results fingerprint."""
    return edit.to_dict()


def label(edit: Edit) -> str:
    """'block 1 K #0 (read side): constant 0.0078'."""
    head = "" if edit.head is None else f" head {edit.head}"
    where = f"block {edit.block} {edit.weight}{head}"
    if edit.op == "keep_top":
        return f"{where}: keep top {edit.value} triples"
    value = "" if edit.value is None or edit.op == "zero" else f" {_short(edit.value)}"
    return f"{where} #{edit.idx} ({SIDE_WORDS.get(edit.side, edit.side)}): {edit.op}{value}"


def short_label(edit: Edit) -> str:
    """'b1 K#0 in' for plot axes."""
    head = "" if edit.head is None else f"h{edit.head}"
    if edit.op == "keep_top":
        return f"b{edit.block} {edit.weight}{head} top{edit.value}"
    return f"b{edit.block} {edit.weight}{head}#{edit.idx} {edit.side}"


def slug(edit: Edit) -> str:
    """A directory name: 'b1-K-in-0-constant'."""
    head = "" if edit.head is None else f"-h{edit.head}"
    idx = f"top{edit.value}" if edit.op == "keep_top" else str(edit.idx)
    return f"b{edit.block}-{edit.weight}{head}-{edit.side}-{idx}-{edit.op}"


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if hasattr(value, "shape"):
        return f"vector{tuple(value.shape)}"
    return str(value)
