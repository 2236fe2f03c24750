"""Argument types, output-path checks and option groups shared by the command groups."""
from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def episode_count(text: str) -> int:
    """argparse type: episodes of a run, at least 2 (one episode has no spread, and pairs no test)."""
    value = _int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, got {text!r}: one episode has no confidence interval "
                                         "and one pair no test (6 pairs are the fewest that can reach p < 0.05)")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (nan and inf reach no sensible setting)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number above 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def device(text: str) -> str:
    """argparse type: a torch device that exists on this machine (cpu, cuda, cuda:1, mps)."""
    from surgery.core.dtypes import parse_device
    from surgery.errors import SurgeryError

    try:
        parse_device(text)
    except SurgeryError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def add_rollout_arguments(p, episodes: int) -> None:
    """The model and how it is played: options shared by `evaluate` and the edit experiments."""
    p.add_argument("model", metavar="MODEL", help="zoo name (e.g. hopper) or Hugging Face checkpoint directory")
    p.add_argument("--metadata", help="metadata JSON for a checkpoint directory without metadata.json")
    p.add_argument("--episodes", type=episode_count, default=episodes, help=f"episodes per run, at least 2 "
                   f"(default {episodes})")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="run seed; episode i is reset with a seed derived from (seed, i), so every run with "
                        "this seed faces the same initial states (default 0)")
    p.add_argument("--target-return", type=finite_float, help="return to condition on (default: the metadata's first)")
    p.add_argument("--max-steps", type=positive_int, help="cut episodes at this many steps (default: the env's limit)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 forward: faster, actions differ slightly")


def load_dt(args):
    """The decision transformer a behaviour command names, loaded through `surgery.load` with its metadata."""
    from surgery.errors import SurgeryError
    from surgery.loading import load

    model = load(args.model, metadata=args.metadata)
    if getattr(model, "metadata", None) is None:
        raise SurgeryError(f"{args.model} has no metadata.json; pass --metadata FILE with env_id, state_mean/std, "
                           "return_scale and context_len")
    return model


def add_base_edits_argument(p, what: str) -> None:
    """--edits DIR: the experiment runs on MODEL with a saved patch applied (the edited model is the one studied)."""
    p.add_argument("--edits", type=Path, metavar="DIR",
                   help=f"apply the patch saved in DIR (Patch.save, surgery edit-eval --save-edit) to MODEL first "
                        f"and run {what} on the edited model (refused if MODEL's weights are not the ones the patch "
                        "was saved for)")


def edited_suffix(args) -> str:
    """What a default output directory adds for --edits DIR, so the edited model's results go elsewhere."""
    return "" if getattr(args, "edits", None) is None else f"-edited-{Path(args.edits).resolve().name}"


def output_lock(out):
    """Check `out` can be written, then hold it for this run (surgery.runlock); nothing when no --out was given."""
    from contextlib import nullcontext

    from surgery import runlock

    return nullcontext() if out is None else runlock.hold(check_out_dir(out))


def saved_note(out) -> str:
    """What an interrupted run leaves in `out`: the episodes stored in each results file, and how to go on."""
    from pathlib import Path

    from surgery.behaviour.results_store import RESULTS_FILE, saved

    out = Path(out)
    files = sorted(out.rglob(RESULTS_FILE)) if out.is_dir() else []
    if not files:
        return f"nothing saved in {out} yet"
    if files == [out / RESULTS_FILE]:
        return f"{saved(out)} episodes saved in {files[0]}; rerun the same command to resume"
    each = ", ".join(f"{p.parent.relative_to(out)}: {saved(p.parent)}" for p in files)
    return f"{saved(out)} episodes saved under {out} ({each}); rerun the same command to resume"


def reused_note(before: int, out) -> str:
    """The line a finished run prints about episodes reused from an earlier run on the same --out."""
    return f"{before} episodes were reused from an earlier run in {out}" if before else ""


# ---- flags from a settings dataclass (CleanRL style: the dataclass and its field docstrings are the source) ----
def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of a dataclass, read from its source."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    docs = {}
    for node, after in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def add_settings_arguments(parser, cls, skip=(), defaults=None) -> None:
    """One `--flag` per field of a frozen settings dataclass, with its docstring as help.

    Field types (as written, e.g. "tuple[str, ...] | None", "int", "bool") choose the argparse type;
    `field(metadata={"choices": ..., "metavar": ..., "positive": True, "nonnegative": True})` refines it. `defaults`
    overrides a field's default for this command only.
    """
    import dataclasses

    docs, defaults = field_docs(cls), dict(defaults or {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, meta = str(f.type).replace(" ", ""), f.metadata
        default = defaults.get(f.name, f.default)
        flag = "--" + f.name.replace("_", "-")
        shown = "" if default is None or kind == "bool" else (
            f" (default {' '.join(map(str, default)) if isinstance(default, tuple) else default})")
        kwargs = {"dest": f.name, "help": docs.get(f.name, "") + shown}
        if kind == "bool":
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        base = kind.removesuffix("|None")
        whole = positive_int if meta.get("positive") else non_negative_int if meta.get("nonnegative") else int
        item = {"int": whole, "float": float, "str": str}
        if base.startswith("tuple["):
            # "--weights K V" and "--weights K,V" both work; choices are checked item by item.
            kwargs.update(nargs="+", type=_items(item[base[6:].split(",")[0]], meta.get("choices")), action=_Flatten)
            if "choices" in meta:
                kwargs["help"] += f"; choices: {', '.join(map(str, meta['choices']))}"
        else:
            kwargs["type"] = item[base]
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        if "metavar" in meta:
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(flag, default=default, **kwargs)


class _Flatten(argparse.Action):
    """Store the items of every (comma-separated) value given to a list flag as one list."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, [v for group in values for v in group])


def _items(convert, choices):
    """argparse type: comma-separated items, each converted and checked against the choices."""
    def parse(text: str) -> list:
        out = []
        for part in filter(None, text.split(",")):
            value = convert(part)
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(f"invalid choice: {part!r} (choose from {', '.join(map(str, choices))})")
            out.append(value)
        if not out:
            raise argparse.ArgumentTypeError(f"expected at least one value, got {text!r}")
        return out

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def settings_from_args(cls, args, **extra):
    """The settings dataclass filled from parsed flags (lists become tuples), plus `extra` fields."""
    import dataclasses

    values = {}
    for f in dataclasses.fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            values[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**{**values, **extra})


def check_out_file(path, force: bool = False, flag: str = "--out") -> Path:
    """Before any long work: `path` can be written as a file (an existing one only with `force`)."""
    from surgery.errors import SurgeryError

    path = Path(path)
    if path.is_dir():
        raise SurgeryError(f"{flag} {path} is a directory; name a file, e.g. {path / 'scan.json'}")
    if path.exists() and not force:
        raise SurgeryError(f"{flag} {path} exists; pass --force to overwrite it, or name another file")
    parent = path.parent
    if not parent.exists():
        raise SurgeryError(f"{flag} {path}: {parent} does not exist")
    if not parent.is_dir():
        raise SurgeryError(f"{flag} {path}: {parent} is not a directory")
    _probe(parent, flag, path)
    return path


def check_out_dir(path, flag: str = "--out") -> Path:
    """Before any long work: `path` is a directory that can be written, or one that can be made."""
    from surgery.errors import SurgeryError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SurgeryError(f"{flag} {path} exists and is not a directory")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise SurgeryError(f"{flag} {path}: {existing} is a file, not a directory")
    _probe(existing, flag, path)
    return path


def _probe(directory: Path, flag: str, path: Path) -> None:
    """Create and delete a file in `directory`: permissions, read-only mounts and quotas all show up here."""
    from surgery.errors import SurgeryError

    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".surgery-write-test-"):
            pass
    except OSError as e:
        raise SurgeryError(f"{flag} {path}: cannot write in {directory} ({e.strerror or e})") from None
