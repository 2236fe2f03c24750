"""`surgery analyze MODEL`: where each embedding lives, beyond chance; a terminal summary and an HTML/MD/CSV report."""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

DEFAULT_OUT = Path("results") / "analysis"

# Idle OpenMP threads sleep instead of spinning. On a shared 2-core machine a spinning pool made a
# 768x3072 SVD 4-30x slower with 2 threads than with 1. OpenMP reads this once, when torch starts,
# so it only helps if this module is imported before torch (the CLI imports feature modules first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def register(subparsers) -> None:
    from adapters import WEIGHTS
    from surgery.chance import CORRECTIONS

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
    p.add_argument("--blocks", nargs="+", type=int, metavar="B", help="blocks (default: all)")
    p.add_argument("--heads", nargs="+", type=int, metavar="H", help="heads of OV and QK (default: all)")
    p.add_argument("--vectors", type=_positive_int, metavar="N", help="only each weight's first N singular vectors")
    p.add_argument("--top", type=_positive_int, default=10, metavar="K", help="labels kept at each end (default 10)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level after correction (default 0.05)")
    p.add_argument("--correction", choices=CORRECTIONS, default="holm", help="multiple-comparison correction")
    p.add_argument("--family", choices=("set", "all"), default="set",
                   help="correct within each embedding set (default) or over all sets together")
    p.add_argument("--draws", type=_positive_int, metavar="N", help="Monte Carlo directions per set (default: by size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions (default 0)")
    p.add_argument("--fold-ln", action="store_true", help="fold the preceding LayerNorm gain into the read side")
    p.add_argument("--dtype", choices=("auto", "float32", "float64"), default="auto",
                   help="precision of SVDs and cosines (auto: float64 for DT-sized models, else float32)")
    p.add_argument("--method", help="route for the SVDs, passed to surgery.decompose (e.g. gram: faster for wide "
                                    "models; default exact)")
    p.add_argument("--metadata", help="metadata JSON for a decision-transformer checkpoint without metadata.json")
    p.add_argument("--out", type=Path, help=f"report directory (default {DEFAULT_OUT}/<model>)")
    p.add_argument("--no-report", action="store_true", help="print the summary only; write no files")
    p.add_argument("--no-figures", action="store_true", help="write the report without figures (faster)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_analyze)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def resolve_model(name: str, metadata=None):
    """A zoo name, a checkpoint directory, or an HF name in the local cache -> the wrapped model."""
    import surgery

    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        if not path.exists():
            raise FileNotFoundError(f"model path {name!r} does not exist")
        return surgery.load(path, metadata=metadata)
    zoo = _zoo_names()
    if name in zoo:
        return surgery.load(name, metadata=metadata)
    snapshot = _hf_cache_snapshot(name)
    if snapshot is None:
        where = f"zoo models: {', '.join(zoo)}" if zoo else "no zoo models are shipped yet"
        raise FileNotFoundError(
            f"{name!r} is not a checkpoint directory, a zoo model ({where}), or a model in the local Hugging Face "
            f"cache; nothing is downloaded at run time: fetch it first (huggingface-cli download {name}) "
            "or pass a directory")
    return surgery.load(snapshot, metadata=metadata)


def _looks_like_path(name: str) -> bool:
    """Absolute, relative-looking or deeper than a hub name's "org/name"."""
    return name.startswith((".", "~", os.sep, "/")) or name.count("/") > 1 or (os.sep != "/" and os.sep in name)


def _zoo_names() -> list[str]:
    try:
        from surgery import zoo
    except ImportError:
        return []
    return zoo.names()


def _hf_cache_snapshot(name: str) -> Path | None:
    """The local snapshot directory of a hub model, if it is cached; never downloads."""
    if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name):
        return None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:
        return None
    try:
        return Path(snapshot_download(repo_id=name, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None


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

    from surgery.localisation import locate
    from surgery.report import build_report, summary_text

    progress = not args.quiet and sys.stderr.isatty()
    _quiet_transformers()
    model = resolve_model(args.model, args.metadata)
    start = time.perf_counter()  # the analysis itself, not loading the model
    dtype = {"auto": None, "float32": torch.float32, "float64": torch.float64}[args.dtype]
    loc = locate(model, embedding=args.embeddings, weights=args.weights, blocks=args.blocks, heads=args.heads,
                 vectors=args.vectors, top=args.top, alpha=args.alpha, correction=args.correction,
                 family=args.family, draws=args.draws, seed=args.seed, fold_ln=args.fold_ln, dtype=dtype,
                 method=args.method, progress=progress)
    elapsed = time.perf_counter() - start
    files = []
    if not args.no_report:
        out = args.out or DEFAULT_OUT / _safe_name(args.model)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        report = build_report(loc, args.model, model, elapsed, figures=not args.no_figures, progress=progress)
        report.write(out)  # everything was rendered before the first file is written
        files = [str(out / "report.html"), "report.md", "summary.csv", "weights.csv", "vectors.csv", "alignment.csv"]
    print(summary_text(loc, args.model, elapsed, files))
    return 0
