"""Cost of one reversible patch (enter + exit) against a memory copy and against the study's way.

For each MLP shape, in one process, interleaved, medians over repeats:
  copy     one copy of the touched weight into a preallocated buffer (the physical floor)
  patch    `with patch(model, block=0, weight="K", idx=0): pass` with the SVD cached (a sweep)
  first    the same, the first time (includes the SVD)
  study    the study's way: full SVD, set one vector to 1/d_model, dense reconstruction U S Vh,
           copy into the model, and copy the original back

    python benchmarks/edit_cost.py                      # 128x512, 768x3072, 4096x16384
    python benchmarks/edit_cost.py --shapes 128x512 --repeats 50

Targets (issue 2): patch <= 4x copy at every shape; patch >= 100x faster than the study's way at 768x3072.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import surgery


def _model(d_model: int, d_mlp: int):
    """A one-block GPT-2 whose MLP has the requested shape (its other weights are kept small)."""
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=8, n_positions=8, n_embd=d_model, n_layer=1, n_head=max(1, d_model // 64),
                     n_inner=d_mlp, bos_token_id=0, eos_token_id=0)
    return GPT2Model(cfg).eval()


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(d_model: int, d_mlp: int, repeats: int, study_repeats: int) -> dict:
    model = _model(d_model, d_mlp)
    W = model.h[0].mlp.c_fc.weight
    buf = torch.empty_like(W)
    value = 1.0 / d_model

    def copy():
        with torch.no_grad():
            buf.copy_(W)

    def patch_once():
        with surgery.patch(model, block=0, weight="K", idx=0, value=value):
            pass

    def study():
        with torch.no_grad():
            original = W.detach().clone()
            U, S, Vh = torch.linalg.svd(W.detach(), full_matrices=False)
            U[:, 0] = value  # K's residual-facing side is its read side, U (DESIGN.md)
            W.copy_(U @ torch.diag(S) @ Vh)
            W.copy_(original)

    first = _time(patch_once)
    times = {"copy": [], "patch": [], "study": []}
    for i in range(repeats):  # interleaved, so machine noise hits every method alike
        times["copy"].append(_time(copy))
        times["patch"].append(_time(patch_once))
        if i < study_repeats:
            times["study"].append(_time(study))
    med = {k: statistics.median(v) for k, v in times.items() if v}
    med["first"] = first
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="128x512,768x3072,4096x16384", help="comma-separated d_model x d_mlp")
    p.add_argument("--repeats", type=int, default=21)
    p.add_argument("--study-repeats", type=int, default=3, help="the study's way is slow: fewer repeats")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 weights; medians in ms")
    print(f"{'shape':>12} {'copy':>9} {'patch':>9} {'first':>9} {'study':>10} {'patch/copy':>11} {'study/patch':>12}")
    for shape in args.shapes.split(","):
        d_model, d_mlp = map(int, shape.lower().split("x"))
        study_repeats = args.study_repeats if d_model * d_mlp < 2 ** 24 else 1
        m = bench(d_model, d_mlp, args.repeats, study_repeats)
        ms = {k: v * 1e3 for k, v in m.items()}
        print(f"{shape:>12} {ms['copy']:9.3f} {ms['patch']:9.3f} {ms['first']:9.1f} {ms['study']:10.1f} "
              f"{m['patch'] / m['copy']:11.2f} {m['study'] / m['patch']:12.0f}")


if __name__ == "__main__":
    main()
