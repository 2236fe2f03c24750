"""The package tree is the architecture: no import runs up a layer (README's Layout)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lower number = lower layer. A module may import its own layer and the ones below it.
LAYERS = [
    ("surgery.errors", 0), ("surgery.checks", 0), ("surgery.names", 0), ("surgery.files", 0), ("surgery.progress", 0), ("surgery.runlock", 0),
    ("surgery.stats", 1), ("surgery.safe_weights", 1),
    ("adapters", 2),
    ("surgery.core", 3),
    ("surgery.analysis", 4),
    ("surgery.behaviour", 5),
    ("surgery.zoo", 6),
    ("surgery.loading", 7),  # below the experiments: atlas workers load models by reference
    ("surgery.lm", 8), ("surgery.experiments", 8),
    ("surgery.export", 9),
    ("surgery.cli", 10), ("surgery.__main__", 10),
]
SIBLINGS_APART = {("surgery.lm", "surgery.experiments"), ("surgery.experiments", "surgery.lm")}


def layer(module: str) -> tuple[str, int] | None:
    best = None
    for prefix, n in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best[0]):
                best = (prefix, n)
    return best


def imports(path: Path, module: str):
    """Every module an import statement names (at any depth: function-level imports count too)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                yield node.lineno, full if layer(full) and layer(full) != layer(base) else base


def test_no_import_runs_up_a_layer():
    wrong = []
    for path in sorted([*ROOT.glob("surgery/**/*.py"), *ROOT.glob("adapters/**/*.py")]):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        if module == "surgery":  # the package face re-exports every layer's public names, lazily
            continue
        mine = layer(module)
        assert mine is not None, f"{module} is on no layer: add it to LAYERS"
        for line, target in imports(path, module):
            theirs = layer(target)
            if theirs is None or target == "surgery":
                continue
            if theirs[1] > mine[1] or (mine[0], theirs[0]) in SIBLINGS_APART:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {module} ({mine[0]}) imports {target} ({theirs[0]})")
    assert not wrong, "imports that run up a layer:\n" + "\n".join(wrong)


def test_the_test_sees_an_upward_import(tmp_path):
    """The checker is not vacuous: an import of the CLI from the core is caught."""
    src = tmp_path / "x.py"
    src.write_text("def f():\n    from surgery.cli.args import positive_int\n")
    found = [t for _, t in imports(src, "surgery.core.x")]
    assert layer(found[0])[1] > layer("surgery.core.x")[1]


def test_no_lazy_export_is_named_like_a_submodule_of_its_package():
    """`from pkg import name` must not give a function or a module depending on what was imported before:
    importing pkg.name (as any caller of its other functions does) rebinds pkg.name to the module."""
    import importlib
    import pkgutil

    for package in ("surgery", "surgery.experiments", "surgery.analysis", "surgery.behaviour", "surgery.core",
                    "surgery.zoo", "surgery.lm"):
        pkg = importlib.import_module(package)
        exports = set(getattr(pkg, "_EXPORTS", {})) | set(getattr(pkg, "__all__", ()))
        modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)}
        clash = sorted(exports & modules - set(getattr(pkg, "_MODULES", ())))
        assert not clash, f"{package} exports {clash}, which are also its submodules"
