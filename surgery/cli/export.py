"""`surgery export MODEL --edits DIR --out CKPT`: a model with a saved patch applied, as a checkpoint."""
from __future__ import annotations

import shlex
from pathlib import Path

from surgery.names import DTYPE_NAMES


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a model with a saved patch applied as a checkpoint that surgery.load and transformers read",
        description="Apply the patch saved in --edits (Patch.save, surgery edit-eval --save-edit) to MODEL and write "
                    "the edited model to --out: config.json and model.safetensors (no pickle), metadata.json for a "
                    "decision transformer, the tokenizer if the model has one, a README.md card saying what was "
                    "edited (the edits, the source model's and the edited weights' hashes, this command), and the "
                    "saved patch in edits/. The patch is refused if MODEL's weights are not the ones it was saved "
                    "for. Written atomically: a crash leaves the old folder or the complete new one.")
    p.add_argument("model", metavar="MODEL", help="zoo name (e.g. hopper) or Hugging Face checkpoint directory")
    p.add_argument("--edits", type=Path, required=True, metavar="DIR", help="the saved patch to apply")
    p.add_argument("--out", type=Path, required=True, metavar="CKPT", help="the checkpoint folder to write")
    p.add_argument("--metadata", help="metadata JSON for a decision-transformer checkpoint without metadata.json")
    p.add_argument("--dtype", choices=DTYPE_NAMES,
                   help="load the model in this dtype, the one the patch was saved for (default: the checkpoint's)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds an earlier export")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from surgery.core.saved import load_patch
    from surgery.export import export
    from surgery.loading import load

    command = ["surgery", "export", args.model, "--edits", str(args.edits), "--out", str(args.out)]
    for flag, value in (("--metadata", args.metadata), ("--dtype", args.dtype)):
        command += [flag, value] if value else []
    command += ["--overwrite"] if args.overwrite else []
    if args.out.exists() and not args.overwrite:  # before loading anything
        from surgery.errors import SurgeryError

        raise SurgeryError(f"{args.out} already exists; choose another --out, or pass --overwrite to replace it")
    model = load(args.model, metadata=args.metadata, dtype=args.dtype)
    patch = load_patch(args.edits, model)
    out = export(model, patch, args.out, source=args.model, command=shlex.join(command), overwrite=args.overwrite)
    print(f"wrote {out}: {len(patch.edits)} edit{'s' if len(patch.edits) != 1 else ''} applied to {args.model}; "
          f"see {out / 'README.md'}")
    return 0
