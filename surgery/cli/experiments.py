"""`surgery edit-eval`, `surgery validate` and `surgery laser`: an edit's effect on behaviour, the study's claim
tested, and whether cutting a weight's rank ever helps."""
from __future__ import annotations

import json
import math
import re
import sys
from contextlib import contextmanager
from pathlib import Path

from surgery.cli.args import (
    add_base_edits_argument,
    add_rollout_arguments,
    add_settings_arguments,
    check_out_dir,
    edited_suffix,
    finite_float,
    load_dt,
    non_negative_int,
    output_lock,
    settings_from_args,
)
from surgery.errors import SurgeryError
from surgery.names import CORRECTIONS, SCALAR_OPS, SIDES, WEIGHTS

ROLLOUT_SETTINGS = ("episodes", "seed", "target_return", "max_steps", "dtype")
"""ValidateSettings fields whose flags the shared rollout options add (dtype as --bf16)."""


def register(subparsers) -> None:
    _register_edit_eval(subparsers)
    _register_validate(subparsers)
    _register_laser(subparsers)


def _common(p) -> None:
    """Options every behaviour experiment shares."""
    add_rollout_arguments(p, episodes=200)
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _register_edit_eval(subparsers) -> None:
    p = subparsers.add_parser(
        "edit-eval", help="evaluate a model with and without one edit on the same seeds; statistics, figures, video",
        description="Apply an edit with surgery.patch (or a saved one: --edits DIR), evaluate the same model with "
                    "and without it on the same seeds, and compare: paired Wilcoxon and permutation tests, effect "
                    "sizes, failure rates with Wilson intervals, McNemar, Kaplan-Meier survival. Writes "
                    "report.md/.json and figures to --out; rerunning the same command resumes.")
    _common(p)
    p.add_argument("--block", type=non_negative_int, help="transformer block (required unless --edits)")
    p.add_argument("--weight", choices=WEIGHTS,
                   help="K (MLP in), V (MLP out), OV or QK (per head); required unless --edits")
    p.add_argument("--idx", type=non_negative_int, help="singular triple, 0 = largest (default 0)")
    p.add_argument("--head", type=non_negative_int, help="attention head (OV and QK)")
    p.add_argument("--op", choices=SCALAR_OPS,
                   help="constant (the study's: the vector set to VALUE * ones, default 1/d_model), zero, "
                        "scale (the singular value times VALUE), keep_top (keep only the first VALUE triples); "
                        "default constant")
    p.add_argument("--value", type=finite_float, help="the op's value (see --op)")
    p.add_argument("--side", choices=SIDES,
                   help="edit the read (in) or write (out) vector (default: the side facing the residual stream)")
    p.add_argument("--edits", type=Path, metavar="DIR",
                   help="evaluate the patch saved in DIR (Patch.save, --save-edit) instead of --block/--weight/...: "
                        "its saved update factors, refused if this model's edited weights are not the ones it was "
                        "saved for")
    p.add_argument("--save-edit", type=Path, metavar="DIR",
                   help="also save the edit as a folder that --edits, surgery.load_patch and surgery export read "
                        "(a rerun finding the same edit there uses it)")
    p.add_argument("--out", type=Path, help="output directory (default runs/edit-eval/MODEL-EDIT)")
    p.add_argument("--video", action="store_true", help="also render episode 0 with and without the edit side by "
                   "side (video.gif, video.mp4; MuJoCo renders headless through EGL or OSMesa)")
    p.set_defaults(func=run_edit_eval)


def _register_validate(subparsers) -> None:
    from surgery.experiments.settings import ValidateSettings

    p = subparsers.add_parser(
        "validate", help="test the study's claim: edits of embedding-aligned singular vectors damage behaviour, "
                         "matched controls do not",
        description="Edit the singular vectors surgery.locate ranks most aligned with an embedding, and matched "
                    "controls (same weight but unaligned; another weight), one at a time; measure each edit's "
                    "damage against one shared baseline on the same seeds; correct across edits; report the "
                    "Spearman correlation of alignment with damage and whether the claim holds. Every episode is "
                    "stored as it finishes; rerunning the same command resumes.")
    _common(p)
    add_settings_arguments(p, ValidateSettings, skip=ROLLOUT_SETTINGS)
    add_base_edits_argument(p, "the validation (its vectors, controls and baseline are the edited model's)")
    p.add_argument("--out", type=Path,
                   help="output directory (default runs/validate/MODEL-EMBEDDING[-WEIGHTS]-OP[-edited-DIR])")
    p.set_defaults(func=run_validate)


def _register_laser(subparsers) -> None:
    from surgery.experiments.settings import LASER_FRACTIONS as FRACTIONS
    from surgery.experiments.settings import LASER_WEIGHTS

    p = subparsers.add_parser(
        "laser", help="LASER: cut each weight to a fraction of its rank and test whether any cut raises the return",
        description="Replace each (block, weight) by its best rank-k approximation (keep_top, k = fraction x "
                    "rank; OV and QK in every head), for each kept fraction, and play paired episodes against one "
                    "shared baseline on the same seeds, all as lanes of one batched rollout. Each cut gets a "
                    "one-sided paired test for an increase of the mean return, corrected across the cuts. Every "
                    "episode is stored as it finishes; rerunning the same command resumes. Writes "
                    "laser.csv/.md/.json.")
    add_rollout_arguments(p, episodes=30)
    p.add_argument("--weights", nargs="+", choices=WEIGHTS, metavar="W", default=list(LASER_WEIGHTS),
                   help=f"weights to cut (default {' '.join(LASER_WEIGHTS)})")
    p.add_argument("--blocks", nargs="+", type=non_negative_int, metavar="B", help="blocks (default: all)")
    p.add_argument("--fractions", nargs="+", type=finite_float, metavar="F", default=list(FRACTIONS),
                   help=f"kept fractions of the rank (default {' '.join(map(str, FRACTIONS))})")
    p.add_argument("--alpha", type=finite_float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--correction", choices=CORRECTIONS, default="holm",
                   help="correction across the cuts (default holm: family-wise)")
    p.add_argument("--out", type=Path, help="output directory (default runs/laser/MODEL)")
    p.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_laser)


def _name(model: str) -> str:
    """A directory-safe short name for a model given as a zoo name or a path."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or "model")


EDIT_FLAGS = ("block", "weight", "idx", "head", "op", "value", "side")


def run_edit_eval(args) -> int:
    with output_lock(args.out):  # refused before the model is loaded when --out is given (else in _one_run)
        return _edit_eval(args)


def _edit_eval(args) -> int:
    import torch

    from surgery.core.patching import Edit, Patch, validate_edit
    from surgery.core.saved import load_patch
    from surgery.experiments import edits as edit_specs
    from surgery.experiments.edit_eval import edit_eval

    given = [f"--{k}" for k in EDIT_FLAGS if getattr(args, k) is not None]
    if args.edits is not None and given:
        raise SurgeryError(f"give either --edits DIR (a saved patch) or the edit's flags, not both "
                           f"(got --edits and {' '.join(given)})")
    if args.edits is None:
        if args.block is None or args.weight is None:
            raise SurgeryError("say which edit: --block B --weight W [--idx I --head H --op OP --value X --side S], "
                               "or --edits DIR (a saved patch)")
        op = args.op or "constant"
        value = _edit_value(op, args.value)
    check_out_dir(args.out or Path("runs") / "edit-eval")  # the full default name needs the model; its parent does not
    model = load_dt(args)
    if args.edits is not None:
        patch = load_patch(args.edits, model)
    else:
        patch = Patch(model, [validate_edit(model, Edit(block=args.block, weight=args.weight, idx=args.idx or 0,
                                                        head=args.head, op=op, value=value, side=args.side))])
    if args.save_edit is not None:
        patch = _save_edit(patch, args.save_edit, model)
    edits = patch.edits
    name = edit_specs.slug(edits[0]) if len(edits) == 1 else f"{len(edits)}-edits-{patch.digest[:12]}"
    out = args.out or Path("runs") / "edit-eval" / f"{_name(args.model)}-{name}"
    with _one_run(out, args.episodes) as reused:
        result = edit_eval(model, patch, episodes=args.episodes, seed=args.seed, target_return=args.target_return,
                           out=out, dtype=torch.bfloat16 if args.bf16 else torch.float32, max_steps=args.max_steps,
                           progress=not args.quiet, video=args.video, source=args.model)
    print(_json(result.to_dict()) if args.json else result.text())
    _note(reused)
    if args.edits is not None:
        print(f"edits: {args.edits} (manifest sha256 {patch.digest})", file=sys.stderr)
    return 0


def _edit_value(op: str, value):
    """The op's value from --value, checked against the op."""
    if op == "zero" and value is not None:
        raise SurgeryError("--op zero takes no --value")
    if op in ("scale", "keep_top") and value is None:
        raise SurgeryError(f"--op {op} needs --value ({'a factor' if op == 'scale' else 'k, triples to keep'})")
    if op == "keep_top":
        if not math.isfinite(value) or value != int(value):
            raise SurgeryError(f"--op keep_top needs a whole number of triples to keep as --value, got {value:g}")
        value = int(value)
    return value


def _save_edit(patch, folder: Path, model):
    """Save the patch to `folder` (unless it already holds the same edits of these weights: a rerun) and
    return it loaded from there, so every run applies exactly the factors the folder holds."""
    from surgery.core.saved import load_patch
    from surgery.experiments.edits import label, tag

    if not folder.exists():
        patch.save(folder)
        print(f"edit saved to {folder}", file=sys.stderr)
        return load_patch(folder, model)  # run exactly what was saved, as a rerun will
    try:
        there = load_patch(folder, model)
    except SurgeryError as e:
        raise SurgeryError(f"--save-edit {folder} exists and cannot be reused: {e}") from None
    if [tag(e) for e in there.edits] != [tag(e) for e in patch.edits]:
        raise SurgeryError(f"--save-edit {folder} already holds other edits ({'; '.join(map(label, there.edits))}); "
                           "choose another folder")
    print(f"edit already saved in {folder}; applying its saved factors", file=sys.stderr)
    return there


def run_validate(args) -> int:
    with output_lock(args.out):
        return _validate(args)


def _validate(args) -> int:
    from surgery.experiments.settings import ValidateSettings
    from surgery.experiments.validate import validate

    if args.op == "zero" and args.value is not None:
        raise SurgeryError("--op zero takes no --value")
    settings = settings_from_args(ValidateSettings, args, dtype="bfloat16" if args.bf16 else "float32")
    only = f"-{'-'.join(args.weights)}" if args.weights else ""
    out = check_out_dir(args.out or Path("runs") / "validate" /
                        f"{_name(args.model)}-{args.embedding}{only}-{args.op}{edited_suffix(args)}")
    model = load_dt(args)
    with _one_run(out, args.episodes) as reused:
        result = validate(model, settings, out=out, progress=not args.quiet, source=args.model, edits=args.edits)
    print(_json(result.to_dict()) if args.json else result.text())
    _note(reused)
    return 0


@contextmanager
def _one_run(out: Path, episodes: int):
    """Hold `out` for this run (a second run on it is refused at once, naming this one); yield the
    note on episodes reused from an earlier run; on Ctrl-C, say what was saved and where."""
    from surgery import runlock
    from surgery.behaviour.results_store import saved
    from surgery.cli.args import reused_note, saved_note

    with runlock.hold(out):
        note = reused_note(saved(out, below=episodes), out)
        try:
            yield note
        except KeyboardInterrupt:
            raise KeyboardInterrupt(saved_note(out)) from None


def _note(text: str) -> None:
    if text:
        print(text, file=sys.stderr)


def _json(d: dict) -> str:
    from surgery.files import jsonable

    return json.dumps(jsonable(d), indent=2, allow_nan=False)


def run_laser(args) -> int:
    with output_lock(args.out):
        return _laser(args)


def _laser(args) -> int:
    from surgery.experiments.laser import laser

    if args.bf16:
        raise SurgeryError("--bf16 is not offered for laser: an improvement smaller than bfloat16's rounding "
                           "of the actions would be an artefact of it")
    out = check_out_dir(args.out or Path("runs") / "laser" / _name(args.model))
    model = load_dt(args)
    with _one_run(out, args.episodes) as reused:
        result = laser(model, weights=tuple(args.weights), blocks=args.blocks, fractions=tuple(args.fractions),
                       episodes=args.episodes, seed=args.seed, target_return=args.target_return,
                       max_steps=args.max_steps, alpha=args.alpha, correction=args.correction, out=out,
                       progress=not args.quiet, source=args.model)
    if args.json:
        print(_json({"settings": result.settings, "sentence": result.sentence, "rows": result.rows.rows()}))
    else:
        print(result.markdown())
        print(f"saved: {', '.join(str(p) for p in result.files.values())}")
    _note(reused)
    return 0
