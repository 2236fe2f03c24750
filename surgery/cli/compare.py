"""`surgery compare MODEL_A MODEL_B`: do two models' findings agree (cells beyond chance, subspaces, damage)?"""
from __future__ import annotations

from pathlib import Path

from surgery.cli.args import add_settings_arguments, check_out_dir, settings_from_args


def register(subparsers) -> None:
    from surgery.analysis.settings import AlignmentSettings

    p = subparsers.add_parser(
        "compare", help="two models of one architecture (e.g. two training seeds): which findings both share",
        description="Run the same alignment on both models and report which (embedding set, block, weight, head, "
                    "side) cells are beyond chance in both, in one, in neither (Jaccard); the principal angles "
                    "between matched aligned subspaces against random subspaces; and, given both atlases, the "
                    "rank correlation of their damage over singular indices.")
    p.add_argument("model_a", metavar="MODEL_A", help="zoo name or checkpoint directory")
    p.add_argument("model_b", metavar="MODEL_B", help="zoo name or checkpoint directory")
    p.add_argument("--atlas-a", type=Path, metavar="CSV", help="MODEL_A's atlas table (atlas.csv of surgery atlas)")
    p.add_argument("--atlas-b", type=Path, metavar="CSV", help="MODEL_B's atlas table")
    p.add_argument("--out", type=Path, help="write cells.csv, agreement.csv, damage.csv and summary.txt here")
    add_settings_arguments(p, AlignmentSettings, skip=("top", "sides"), defaults={"weights": ("K", "V", "OV")})
    p.set_defaults(func=run)


def read_csv(path: Path) -> dict:
    """A CSV file as columns of numpy arrays (numbers where every value parses, text otherwise)."""
    import csv

    import numpy as np

    from surgery.errors import SurgeryError

    if not path.is_file():
        raise FileNotFoundError(f"no atlas table at {path}")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SurgeryError(f"{path} has no rows")
    missing = [c for c in ("block", "weight", "head", "idx", "damage") if c not in rows[0]]
    if missing:
        raise SurgeryError(f"{path} lacks the columns {missing}; an atlas table has block, weight, head, idx, damage")
    out = {}
    for c in rows[0]:
        vals = [r[c] for r in rows]
        try:
            out[c] = np.array([float(v) if v not in ("", "None", "nan") else np.nan for v in vals])
        except ValueError:
            out[c] = np.array(vals, dtype=object)
    # What damage_profiles reads must be there in every row: a bad cell named here, not a numpy error later.
    for c, integral in (("block", True), ("idx", True), ("damage", False)):
        for i, v in enumerate(out[c]):
            ok = isinstance(v, float) and np.isfinite(v) and (not integral or v == int(v))
            if not ok:
                raise SurgeryError(f"{path}, row {i + 2}: column {c!r} must be a {'whole' if integral else 'finite'} "
                                   f"number, got {rows[i][c]!r}")
    return out


def check_atlas_model(path: Path, model, name: str) -> None:
    """Refuse the atlas table of another model (swapped --atlas-a and --atlas-b, a twin's atlas): the atlas.json
    beside it names the weights' SHA-256. A table alone carries no model identity: that is said, not refused."""
    import json
    import sys

    from surgery.behaviour.evaluation import weights_sha256
    from surgery.errors import SurgeryError

    meta = path.parent / "atlas.json"
    if not meta.is_file():
        print(f"note: {path}: no atlas.json beside it, so it is not checked to be {name}'s atlas", file=sys.stderr)
        return
    want, have = json.loads(meta.read_text())["model"]["weights_sha256"], weights_sha256(model.model)
    if want != have:
        raise SurgeryError(f"{path} is the atlas of weights {want[:12]}, not of {name} ({have[:12]}): give each "
                           "model's own atlas (--atlas-a for MODEL_A, --atlas-b for MODEL_B)")


OUT_FILES = ("cells.csv", "agreement.csv", "damage.csv", "summary.txt")


def _replaceable(folder: Path) -> str | None:
    """Why --out must not be replaced: None for an empty folder or an earlier comparison's."""
    names = {p.name for p in folder.iterdir()}
    return None if names <= set(OUT_FILES) else f"it holds other files ({', '.join(sorted(names - set(OUT_FILES)))})"


def run(args) -> int:
    import surgery
    from surgery.analysis.settings import AlignmentSettings
    from surgery.errors import SurgeryError
    from surgery.experiments.compare import compare_models
    from surgery.files import atomic_folder

    if (args.atlas_a is None) != (args.atlas_b is None):
        raise SurgeryError("give both --atlas-a and --atlas-b (the damage profiles compare the two), or neither")
    if args.out is not None:
        check_out_dir(args.out)
        if args.out.is_dir() and _replaceable(args.out):
            raise SurgeryError(f"--out {args.out}: {_replaceable(args.out)}; choose an empty or new folder")
    settings = settings_from_args(AlignmentSettings, args)
    a, b = surgery.load(args.model_a), surgery.load(args.model_b)
    atlases = [read_csv(p) if p else None for p in (args.atlas_a, args.atlas_b)]
    for path, model, name in ((args.atlas_a, a, args.model_a), (args.atlas_b, b, args.model_b)):
        if path is not None:
            check_atlas_model(path, model, name)
    c = compare_models(a, b, settings, atlas_a=atlases[0], atlas_b=atlases[1], names=(args.model_a, args.model_b))
    print(c)
    if args.out:  # all files or none: the folder is written beside and renamed into place
        with atomic_folder(args.out, overwrite=True, replaceable=_replaceable) as tmp:
            (tmp / "cells.csv").write_text(c.cells.to_csv())
            (tmp / "agreement.csv").write_text(c.agreement.to_csv())
            if c.damage is not None:
                (tmp / "damage.csv").write_text(c.damage.to_csv())
            (tmp / "summary.txt").write_text(str(c) + "\n")
        print(f"wrote {args.out}/cells.csv, agreement.csv{', damage.csv' if c.damage is not None else ''}, summary.txt")
    return 0
