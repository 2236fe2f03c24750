"""`surgery analyze MODEL`: where each embedding lives, beyond chance; a terminal summary and an HTML/MD/CSV report."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from surgery.cli.args import add_settings_arguments, check_out_dir, settings_from_args

DEFAULT_OUT = Path("results") / "analysis"


def register(subparsers) -> None:
    from surgery.analysis.settings import AlignmentSettings

    p = subparsers.add_parser(
        "analyze", help="align every singular vector with every embedding set, against chance; write a report",
        description="Compare the residual-facing singular vectors of every weight with every embedding set, "
                    "say which alignments are more than chance and where, and write a self-contained report.")
    p.add_argument("model", metavar="MODEL",
                   help="a zoo name (e.g. hopper), a checkpoint directory, or a Hugging Face name already in the "
                        "local cache (nothing is downloaded)")
    add_settings_arguments(p, AlignmentSettings)
    p.add_argument("--metadata", help="metadata JSON for a decision-transformer checkpoint without metadata.json")
    p.add_argument("--out", type=Path, help=f"report directory (default {DEFAULT_OUT}/<model>)")
    p.add_argument("--no-report", action="store_true", help="print the summary only; write no files")
    p.add_argument("--no-figures", action="store_true", help="write the report without figures (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_analyze)


def _quiet_transformers() -> None:
    """Config-validation chatter from transformers drowns the summary; real errors still raise."""
    try:
        import transformers

        transformers.logging.set_verbosity_error()
    except ImportError:
        pass


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", Path(name).name if Path(name).exists() else name).strip("_") or "model"


def cmd_analyze(args) -> int:
    import surgery
    from surgery.analysis.localisation import locate
    from surgery.analysis.report import build_report, summary_text
    from surgery.analysis.settings import AlignmentSettings

    progress = not args.quiet and sys.stderr.isatty()
    out = None if args.no_report else check_out_dir(args.out or DEFAULT_OUT / _safe_name(args.model))
    _quiet_transformers()
    model = surgery.load(args.model, metadata=args.metadata)
    start = time.perf_counter()  # the analysis itself, not loading the model
    settings = settings_from_args(AlignmentSettings, args)
    loc = locate(model, settings.embeddings, settings, progress=progress)
    elapsed = time.perf_counter() - start
    files = []
    if out is not None:  # checked writable before the analysis, not after it
        report = build_report(loc, args.model, model, elapsed, figures=not args.no_figures, progress=progress)
        report.write(out)  # everything was rendered before the first file is written
        files = [str(out / "report.html"), "report.md", "summary.csv", "weights.csv", "vectors.csv", "groups.csv",
                 "alignment.csv"]
    print(summary_text(loc, args.model, elapsed, files))
    return 0
