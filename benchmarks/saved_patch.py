"""Cost of edits as files: save, load and export time, and folder sizes, for a DT edit and a GPT-2-small K edit.

For each model, in one process, medians over repeats (the SVD is computed once before timing, as in a
session that has already analysed the model):
  save     Patch.save(DIR): plan the update, hash the touched tensor, write and fsync three files
  load     surgery.load_patch(DIR, model): check the manifest hashes, read the factors, hash the tensor
  apply    apply + revert of the loaded patch, against the same for the plain patch (interleaved, 3x repeats)
  export   surgery.export.export(model, patch, CKPT) once: the whole edited model as a checkpoint

    python benchmarks/saved_patch.py                       # zoo hopper block 1 K #0; GPT-2 small block 0 K #0
    python benchmarks/saved_patch.py --repeats 11
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import surgery
from surgery.export import export


def _median_s(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def bench(name: str, model, edit: dict, repeats: int, root: Path) -> dict:
    patch = surgery.Patch(model, [edit])
    surgery.decompose(model, block=edit["block"], weight=edit["weight"])  # the SVD, once, outside the timings
    n = iter(range(10**6))
    save = _median_s(lambda: patch.save(root / f"{name}-save{next(n)}"), repeats)
    folder = root / f"{name}-save0"
    load = _median_s(lambda: surgery.load_patch(folder, model), repeats)
    loaded = surgery.load_patch(folder, model)

    def cycle(p):
        return lambda: (p.apply(), p.revert())

    cycle(patch)(), cycle(loaded)()  # warm the save buffers
    pairs = [(_median_s(cycle(loaded), 1), _median_s(cycle(patch), 1)) for _ in range(3 * repeats)]  # interleaved
    apply_loaded, apply_plain = (statistics.median(x) for x in zip(*pairs))
    t = time.perf_counter()
    export(model, loaded, root / f"{name}-ckpt")
    export_s = time.perf_counter() - t
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir())}
    return {"name": name, "save_ms": 1e3 * save, "load_ms": 1e3 * load, "apply_loaded_ms": 1e3 * apply_loaded,
            "apply_plain_ms": 1e3 * apply_plain, "export_s": export_s, "folder_bytes": _size(folder), "files": files,
            "checkpoint_bytes": _size(root / f"{name}-ckpt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from surgery.lm.shapes import random_lm

    cases = [
        ("hopper (DT, 128x512 K)", surgery.load("hopper"), {"block": 1, "weight": "K", "idx": 0}),
        ("gpt2-small (768x3072 K, 12 blocks)", random_lm("gpt2-small"), {"block": 0, "weight": "K", "idx": 0}),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeats}")
    print("| model | save ms | load ms | apply+revert loaded / plain ms | folder bytes (spec, updates, manifest) "
          "| export s | checkpoint MB |")
    print("|---|---:|---:|---:|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, model, edit in cases:
            r = bench(name.split()[0], model, edit, args.repeats, Path(tmp))
            f = r["files"]
            print(f"| {name} | {r['save_ms']:.1f} | {r['load_ms']:.1f} | {r['apply_loaded_ms']:.2f} / "
                  f"{r['apply_plain_ms']:.2f} | {r['folder_bytes']:,} ({f['spec.json']:,}, "
                  f"{f['updates.safetensors']:,}, {f['manifest.json']:,}) | {r['export_s']:.2f} "
                  f"| {r['checkpoint_bytes'] / 1e6:.1f} |")


if __name__ == "__main__":
    main()
