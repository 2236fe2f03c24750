"""`surgery atlas MODEL`: every singular triple's effect on behaviour and whether alignment predicts it; a report."""
from __future__ import annotations

import json
import re
from pathlib import Path

from surgery.cli.args import (
    add_base_edits_argument,
    add_settings_arguments,
    check_out_dir,
    edited_suffix,
    non_negative_int,
    settings_from_args,
)


def register(subparsers) -> None:
    from surgery.experiments.settings import AtlasSettings

    p = subparsers.add_parser(
        "atlas", help="edit every singular triple on its own, measure each one's effect on behaviour, test whether "
                      "alignment predicts it; write a report",
        description="Edit every singular triple of the chosen weights, one at a time, and play paired episodes "
                    "against one shared baseline on the same seeds (or, with --pool N, judge each edit against N "
                    "unedited episodes on other seeds, unpaired). Each edit is tested at a few looks and stops "
                    "early once its damage is established or out of reach (the error guarantees hold regardless: "
                    "docs/atlas.md). Tasks run on a Dask LocalCluster started here (one worker per core), on an "
                    "existing cluster (--scheduler), or in this process (--workers 0). Every episode is stored as "
                    "its task finishes: rerunning the same command resumes. Writes atlas.csv/.md/.html/.json.")
    p.add_argument("model", metavar="MODEL", help="zoo name (e.g. hopper) or decision-transformer checkpoint directory")
    add_settings_arguments(p, AtlasSettings)
    p.add_argument("--metadata", help="metadata JSON for a checkpoint directory without metadata.json")
    add_base_edits_argument(p, "the atlas (its triples and baseline are the edited model's)")
    p.add_argument("--out", type=Path,
                   help="output directory (default runs/atlas/MODEL-WEIGHTS-OP[-poolN][-edited-DIR])")
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this existing Dask cluster (the workers need this package and the model: a zoo "
                        "name, or a checkpoint directory they can read at the same path)")
    p.add_argument("--workers", type=non_negative_int,
                   help="worker processes of the LocalCluster started here (default: one per core); 0 runs "
                        "everything in this process without Dask")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of the summary")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_atlas)


def _name(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(model).name or "model")


def run_atlas(args) -> int:
    from surgery.errors import SurgeryError
    from surgery.experiments.atlas import _resolve, atlas
    from surgery.experiments.distribute import Runner
    from surgery.experiments.settings import AtlasSettings

    settings = _resolve(settings_from_args(AtlasSettings, args), {})
    if args.scheduler is not None and args.workers is not None:
        raise SurgeryError("give --scheduler or --workers, not both")
    out = args.out or (Path("runs") / "atlas" /
                       f"{_name(args.model)}-{'-'.join(settings.weights)}-{settings.op}"
                       f"{f'-pool{settings.pool}' if settings.pool else ''}{edited_suffix(args)}")
    check_out_dir(out)  # a bad --out is one line before the model loads and a cluster starts
    # Connect before loading anything: an unreachable scheduler is one line and exit 2, with nothing written.
    with Runner(scheduler=args.scheduler, workers=args.workers) as runner:
        from surgery.cli.args import load_dt

        _quiet_transformers()
        model = load_dt(args)
        result = atlas(model, settings, out=out, client=runner.client, workers=0 if runner.serial else None,
                       progress=not args.quiet, source=args.model, metadata_file=args.metadata,
                       edits=args.edits)
    if args.json:
        from surgery.experiments.atlas_report import to_dict
        from surgery.files import jsonable

        print(json.dumps(jsonable(to_dict(result, result.claim())), indent=2, allow_nan=False))
    else:
        print(result.text())
    return 0


def _quiet_transformers() -> None:
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except (ImportError, AttributeError):
        pass
