"""`surgery analyze MODEL`: where each embedding lives, beyond chance; a terminal summary and an HTML/MD/CSV report."""
from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from surgery.cli.args import check_out_dir, non_negative_int, positive_int

DEFAULT_OUT = Path("results") / "analysis"


def register(subparsers) -> None:
    from surgery.names import CORRECTIONS, METHODS, WEIGHTS

    p = subparsers.add_parser(
        "analyze", help="align every singular vector with every embedding set, against chance; write a report",
        description="Compare the residual-facing singular vectors of every weight with every embedding set, "
                    "say which alignments are more than chance and where, and write a self-contained report.")
    p.add_argument("model", metavar="MODEL",
                   help="a zoo name (e.g. hopper), a checkpoint directory, or a Hugging Face name already in the "
                        "local cache (nothing is downloaded)")
    p.add_argument("--embeddings", nargs="+", metavar="SET", help="embedding sets (default: every set the model has)")
    p.add_argument("--weights", nargs="+", choices=WEIGHTS, default=list(WEIGHTS), metavar="W",
                   help=f"weights to search, of {', '.join(WEIGHTS)} (default: all)")
    p.add_argument("--blocks", nargs="+", type=non_negative_int, metavar="B", help="blocks (default: all)")
    p.add_argument("--heads", nargs="+", type=non_negative_int, metavar="H", help="heads of OV and QK (default: all)")
    p.add_argument("--vectors", type=positive_int, metavar="N", help="only each weight's first N singular vectors")
    p.add_argument("--top", type=positive_int, default=10, metavar="K", help="labels kept at each end (default 10)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after correction (default 0.05)")
    p.add_argument("--correction", choices=CORRECTIONS, default="holm", help="multiple-comparison correction")
    p.add_argument("--family", choices=("set", "all"), default="set",
                   help="correct within each embedding set (default) or over all sets together")
    p.add_argument("--draws", type=positive_int, metavar="N", help="Monte Carlo directions per set (default: by size)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the random directions (default 0)")
    p.add_argument("--fold-ln", action="store_true", help="fold the preceding LayerNorm gain into the read side")
    p.add_argument("--dtype", choices=("auto", "float32", "float64"), default="auto",
                   help="precision of SVDs and cosines (auto: float64 for DT-sized models, else float32)")
    p.add_argument("--method", choices=METHODS, help="route for the SVDs, passed to surgery.decompose (gram: "
                                                     "faster for wide models; default exact)")
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
    import torch

    import surgery
    from surgery.analysis.localisation import locate
    from surgery.analysis.report import build_report, summary_text

    progress = not args.quiet and sys.stderr.isatty()
    out = None if args.no_report else check_out_dir(args.out or DEFAULT_OUT / _safe_name(args.model))
    _quiet_transformers()
    model = surgery.load(args.model, metadata=args.metadata)
    start = time.perf_counter()  # the analysis itself, not loading the model
    dtype = {"auto": None, "float32": torch.float32, "float64": torch.float64}[args.dtype]
    loc = locate(model, embedding=args.embeddings, weights=args.weights, blocks=args.blocks, heads=args.heads,
                 vectors=args.vectors, top=args.top, alpha=args.alpha, correction=args.correction,
                 family=args.family, draws=args.draws, seed=args.seed, fold_ln=args.fold_ln, dtype=dtype,
                 method=args.method, progress=progress)
    elapsed = time.perf_counter() - start
    files = []
    if out is not None:  # checked writable before the analysis, not after it
        report = build_report(loc, args.model, model, elapsed, figures=not args.no_figures, progress=progress)
        report.write(out)  # everything was rendered before the first file is written
        files = [str(out / "report.html"), "report.md", "summary.csv", "weights.csv", "vectors.csv", "alignment.csv"]
    print(summary_text(loc, args.model, elapsed, files))
    return 0
