"""`surgery lm ...`: scan a language model, print one weight's token table, compare widths."""
from __future__ import annotations

import sys

from surgery.cli.args import check_out_file, device, non_negative_int, positive_int
from surgery.errors import SurgeryError
from surgery.lm.shapes import SHAPES
from surgery.names import DTYPE_NAMES, LM_EMBEDDINGS, METHODS, SIDES, WEIGHTS


def register(subparsers) -> None:
    lm = subparsers.add_parser("lm", help="language models: full scans, token tables, width comparison",
                               description=__doc__)
    sub = lm.add_subparsers(dest="lm_command", metavar="LM_COMMAND", required=True)

    def model_args(p):
        p.add_argument("model", help="a local checkpoint directory or a model id in the local Hugging Face cache "
                                     f"(nothing is downloaded), or random:SHAPE ({', '.join(SHAPES)})")
        p.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:1, ... (default cpu)")
        p.add_argument("--dtype", default=None, choices=DTYPE_NAMES, help="weight dtype (default: the checkpoint's)")
        p.add_argument("--blocks", type=positive_int, default=None, help="random:SHAPE only: build this many blocks")
        p.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("scan", help="every block: top-k triples of K, V, OV, QK, their tokens and coherence")
    model_args(s)
    s.add_argument("--k", type=positive_int, default=16, help="top triples per weight and head (default 16)")
    s.add_argument("--tokens", type=positive_int, default=10, help="tokens per direction (default 10)")
    s.add_argument("--method", default="gram", choices=METHODS, help="SVD route (default gram)")
    s.add_argument("--weights", nargs="+", default=list(WEIGHTS), choices=WEIGHTS, metavar="W",
                   help=f"weights to scan, of {', '.join(WEIGHTS)} (default: all)")
    s.add_argument("--embedding", default="token_out", choices=LM_EMBEDDINGS)
    s.add_argument("--out", default=None, help="write every vector's record as JSON to this new file (checked "
                                              "writable before the scan starts)")
    s.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    s.set_defaults(func=_scan)

    t = sub.add_parser("tokens", help="the token table of one weight (one head for OV/QK)")
    model_args(t)
    t.add_argument("--block", type=non_negative_int, required=True)
    t.add_argument("--weight", required=True, choices=WEIGHTS)
    t.add_argument("--head", type=non_negative_int, default=None)
    t.add_argument("--side", default=None, choices=SIDES, help="default: the residual-facing side a patch edits")
    t.add_argument("--k", type=positive_int, default=10, help="singular vectors shown (default 10)")
    t.add_argument("--tokens", type=positive_int, default=10, help="tokens per direction (default 10)")
    t.add_argument("--method", default="exact", choices=METHODS, help="SVD route (default exact)")
    t.add_argument("--embedding", default="token_out", choices=LM_EMBEDDINGS)
    t.set_defaults(func=_tokens)

    w = sub.add_parser("width", help="compare models' best token cosines against chance (z-scores), any width")
    w.add_argument("models", nargs="+", help="checkpoint directories, cached model ids, or random:SHAPE")
    w.add_argument("--device", default="cpu", type=device, help="cpu, cuda, cuda:1, ... (default cpu)")
    w.add_argument("--dtype", default=None, choices=DTYPE_NAMES)
    w.add_argument("--blocks", type=positive_int, default=2, help="analyse the first N blocks of each (default 2)")
    w.add_argument("--k", type=positive_int, default=8, help="top triples per weight and head (default 8)")
    w.add_argument("--draws", type=positive_int, default=None, help="Monte Carlo draws of the chance null")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    w.set_defaults(func=_width)


def open_model(source: str, device: str, dtype, blocks: int | None = None):
    """A wrapped model: random:SHAPE (random weights of a published shape) or a local/cached checkpoint."""
    from adapters import wrap
    from surgery.lm.shapes import random_lm
    from surgery.loading import load

    if source.startswith("random:"):
        shape = source.split(":", 1)[1]
        return wrap(random_lm(shape, blocks, device=device, dtype=dtype or "float32"))
    if blocks is not None:
        raise SurgeryError("--blocks builds a shorter random model; it applies to random:SHAPE only")
    return load(source, dtype=dtype, device=device)


def _scan(args) -> int:
    from surgery.files import write_atomic
    from surgery.lm.scan import ScanConfig, scan

    out = None if args.out is None else check_out_file(args.out, args.force)  # before the scan, not after it
    model = open_model(args.model, args.device, args.dtype, args.blocks)
    res = scan(model, ScanConfig(k=args.k, tokens=args.tokens, method=args.method, weights=tuple(args.weights),
                                 embedding=args.embedding, progress=not args.quiet))
    for w, s in res.summary().items():
        print(f"{w:<3} {s['vectors']:>6} vectors; coherent at p<0.01: {s['coherent_p01']:.3f}; median z {s['median_z']:+.2f}")
    print(f"{sum(res.seconds):.2f} s over {len(res.seconds)} blocks on {res.device}"
          + (f"; max residual {max(res.max_residual.values()):.1e}" if res.max_residual else ""))
    if out is not None:
        write_atomic(out, res.to_json())
        print(f"wrote {out}")
    return 0


def _tokens(args) -> int:
    from surgery.lm.semantic import token_table

    model = open_model(args.model, args.device, args.dtype, args.blocks)
    t = token_table(model, args.block, args.weight, args.head, embedding=args.embedding, side=args.side, k=args.k,
                    n=args.tokens, method=args.method)
    print(t.format(tokens=args.tokens))
    return 0


def _width(args) -> int:
    from surgery.lm.width import compare

    models = {}
    repeated = sorted({m for m in args.models if args.models.count(m) > 1})
    if repeated:
        raise SurgeryError(f"model(s) named more than once: {', '.join(repeated)}; name each once")
    for source in args.models:
        random = source.startswith("random:")
        a = open_model(source, args.device, args.dtype, args.blocks if random else None)
        models[source] = a
    # The first --blocks blocks of every model: as many as the shallowest has when models differ in depth
    # (GPT-2's 12 against GPT-J's 28); more than any model has is a mistake.
    depths = [a.n_blocks for a in models.values()]
    if args.blocks > max(depths):
        raise SurgeryError(f"--blocks {args.blocks}: the models have at most {max(depths)} blocks "
                           f"(valid: 1..{max(depths)})")
    n = min([args.blocks, *depths])
    if n < args.blocks:
        print(f"comparing the first {n} blocks: the shallowest model has {n}", file=sys.stderr)
    blocks = list(range(n))
    print(compare(models, blocks=blocks, k=args.k, draws=args.draws, progress=not args.quiet))
    return 0


def main(argv=None) -> int:
    """`python -m surgery.cli.lm ARGS` = `surgery lm ARGS`, with the same error handling."""
    from surgery.cli.main import Parser, run

    parser = Parser(prog="surgery")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lm", *(sys.argv[1:] if argv is None else argv)])
    return run(args.func, args, f"lm {args.lm_command}")


if __name__ == "__main__":
    sys.exit(main())
