"""`export`: a model with a patch applied, written as an ordinary checkpoint that transformers and surgery.load read.

The folder holds what `from_pretrained` needs (config.json, model.safetensors; no pickle), metadata.json
for a decision transformer that has metadata, the tokenizer if one is attached, plus:

    README.md      a card saying what was edited: the edits, the source model and its weights hash, the
                   hash of the edited weights, the command
    edits/         the saved patch itself (surgery.core.saved), so the edit can be re-applied to the source
    manifest.json  size and SHA-256 of every other file

It is written atomically like a saved patch (surgery.files.atomic_folder).
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from adapters import wrap
from surgery.core.patching import Patch
from surgery.errors import SurgeryError, load_first

__all__ = ["CARD", "EDITS", "FORMAT", "MANIFEST", "export"]

FORMAT = "svd-surgery-export"
FORMAT_VERSION = 1
CARD, EDITS, MANIFEST = "README.md", "edits", "manifest.json"


def export(model, patch: Patch, out, *, source=None, command: str | None = None, overwrite: bool = False) -> Path:
    """Write `model` with `patch` applied to the folder `out`; the model itself is left as it was.

    source: how the model was given (a zoo name or path), for the card. command: the command line that
    made the export, for the card. overwrite: replace `out` if it holds an earlier export.
    """
    from surgery.behaviour.evaluation import weights_sha256
    from surgery.files import atomic_folder, file_sha256

    if isinstance(model, (str, os.PathLike)):
        raise load_first("export", model)
    adapter = wrap(model)
    if not isinstance(patch, Patch):
        raise SurgeryError(f"export takes a surgery.Patch (e.g. surgery.load_patch(DIR, model)), "
                           f"got {type(patch).__name__}")
    if patch.adapter.model is not adapter.model:
        raise SurgeryError("the patch was made for another model object than the one exported")
    if patch.active:
        raise SurgeryError("the patch is applied: export applies it itself; revert it first")
    out = Path(out)
    if out.exists() and not overwrite:
        raise SurgeryError(f"{out} already exists; choose another folder, or overwrite it "
                           "(overwrite=True, --overwrite)")
    source_sha = weights_sha256(adapter.model)
    with atomic_folder(out, overwrite=overwrite, replaceable=_not_replaceable) as tmp:
        patch.save(tmp / EDITS)
        with patch:
            edited_sha = weights_sha256(adapter.model)
            _save_model(adapter, tmp, patch, source)
        (tmp / CARD).write_text(_card(adapter, patch, out, source, source_sha, edited_sha, command))
        files = {p.relative_to(tmp).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                 for p in sorted(tmp.rglob("*")) if p.is_file()}
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "source_weights_sha256": source_sha,
                    "edited_weights_sha256": edited_sha, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


def _save_model(adapter, folder: Path, patch: Patch, source) -> None:
    """The (patched) weights as a Hugging Face checkpoint; a decision transformer's metadata beside them."""
    meta = getattr(adapter, "metadata", None)
    if meta is not None:
        from surgery.behaviour.checkpoint import save_checkpoint
        from surgery.experiments.edits import label

        # The source's recorded evaluation measured the unedited model: it does not describe this one.
        note = f"Edited with svd-surgery from {source or type(adapter.model).__name__}: " + \
            "; ".join(map(label, patch.edits)) + ". See README.md."
        save_checkpoint(adapter.model, replace(meta, evaluation={}, notes=f"{note} {meta.notes}".strip()), folder)
    else:
        adapter.model.save_pretrained(folder, safe_serialization=True)
    tokenizer = getattr(adapter, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _card(adapter, patch: Patch, out: Path, source, source_sha: str, edited_sha: str, command: str | None) -> str:
    from surgery.experiments.edits import label, tag

    model = adapter.model
    name = str(source) if source is not None else type(model).__name__
    meta = getattr(adapter, "metadata", None)
    loaded_from = getattr(patch, "path", None)  # a saved patch (surgery.load_patch) knows its folder
    lines = [
        f"# {name}, edited",
        "",
        f"`{type(model).__name__}` {('for ' + meta.env_id + ' ') if meta is not None else ''}with "
        f"{len(patch.edits)} singular-vector edit{'s' if len(patch.edits) != 1 else ''} applied, written by "
        "svd-surgery's `surgery export`. An ordinary checkpoint (config.json + model.safetensors, no pickle): "
        f"load it with `surgery.load(\"{out}\")` or `{type(model).__name__}.from_pretrained(\"{out}\")`.",
        "",
        "## What was edited",
        "",
        *[f"- {label(e)}" for e in patch.edits],
        "",
        "Each edit is a low-rank update of one weight computed from its exact SVD (docs/core.md, Patches); "
        "`edits/` holds the saved patch with the update factors that were added (`surgery.load_patch` re-applies "
        "it to the source model, bitwise).",
        "",
        "```json",
        json.dumps([tag(e) for e in patch.edits], indent=2),
        "```",
        "",
        "## Provenance",
        "",
        f"- Source model: `{name}`, weights SHA-256 `{source_sha}`",
        f"- Edited weights: SHA-256 `{edited_sha}`",
        "  (both: svd-surgery's hash of every parameter and buffer by name, dtype, shape and bytes, the one "
        "edit-eval reports print)",
        f"- Saved patch: `edits/`{'' if loaded_from is None else f' (a copy of `{loaded_from}`)'}",
        f"- Command: `{command}`" if command else "- Made from Python: `surgery.export.export(model, patch, out)`",
        f"- svd-surgery {_version()}",
        "",
    ]
    if meta is not None:
        lines += ["The source's recorded evaluation measured the unedited model, so `metadata.json` carries none: "
                  f"measure this one with `surgery evaluate {out}`.", ""]
    return "\n".join(lines)


def _not_replaceable(folder: Path) -> str | None:
    """Why overwrite must not replace `folder`; None when it holds an earlier export."""
    try:
        if json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT:
            return None
    except (OSError, ValueError, AttributeError):
        pass
    return f"it does not hold an export (no {MANIFEST} with format {FORMAT!r})"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("svd-surgery")
    except PackageNotFoundError:
        return "(not installed)"
