"""Full-analysis time and peak memory at GPT-2-small and GPT-J-6B shapes, random weights, exact against fast routes.

    python benchmarks/lm_scale.py                       # CPU (and CUDA when present), both shapes
    python benchmarks/lm_scale.py --shapes gptj-6b --methods gram randomized --repeats 3
    python benchmarks/lm_scale.py --micro               # the single-matrix timings quoted in the issue

"Full analysis" is `surgery.lm.scan.scan`: for every block, the top-k triples of K, V and every
head's OV and QK, and the top/bottom tokens and coherence of all their residual-facing vectors
against the 50k-token unembedding. Weights are random (HF's init scale, N(0, 0.02)): nothing is
downloaded. Timings are medians over repeats, each repeat on freshly drawn weights, all routes
interleaved in one run so machine load hits them alike.

Memory: a one-block model of the shape is built (GPT-J's 28 blocks in float32 would be 24 GB),
and the per-block time is multiplied by the number of blocks: printed as "extrapolated". On a
CUDA device with room for it, the whole model is also built in bf16 and scanned end to end
("measured"). Peak memory is the high-water mark above the baseline during the scan (CUDA: the
allocator's peak; CPU: resident set size sampled every 2 ms).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgery.core.state import state
from surgery.lm.shapes import SHAPES, random_lm, randomize  # noqa: E402


def build(shape: str, n_blocks: int, device: str, dtype: torch.dtype, seed: int = 0):
    return random_lm(shape, n_blocks, device=device, dtype=dtype, seed=seed)


class PeakRSS:
    """Peak resident memory above the starting level, sampled in a thread (CPU)."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self.stop = False
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _watch(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        self.thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def bytes(self) -> int:
        return self.peak - self.base


class PeakCUDA:
    """Peak allocated CUDA memory above the starting level."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.bytes = torch.cuda.max_memory_allocated(self.device) - self.base


def peak(device: str):
    return PeakCUDA(device) if device.startswith("cuda") else PeakRSS()


def run_scan(model, method: str, k: int, dtype: str, blocks=None):
    from surgery.lm.scan import ScanConfig, scan

    cfg = ScanConfig(k=k, method=method, dtype=dtype, null_draws=200, progress=False)
    return scan(model, cfg, blocks=blocks)


def per_block(shape, device, methods, k, repeats, weight_dtype, dtype):
    """Median seconds and peak bytes of one block's full analysis, per method, on a one-block model."""
    model = build(shape, 1, device, weight_dtype)
    # The coherence null and unit embeddings are per model, not per block: time them separately.
    t0 = time.perf_counter()
    run_scan(model, "gram", 1, dtype)  # warm-up (kernels, allocator); also builds what every scan builds
    setup = time.perf_counter() - t0
    times = {m: [] for m in methods}
    decomposing = {m: [] for m in methods}
    peaks = {m: 0 for m in methods}
    residual = {m: {} for m in methods}
    for r in range(repeats):
        randomize(model, seed=r + 1)
        for m in methods:  # interleaved: load on the machine hits every route alike
            with peak(device) as pk:
                res = run_scan(model, m, k, dtype)
            times[m].append(res.seconds[0])
            decomposing[m].append(res.seconds_decomposing[0])
            peaks[m] = max(peaks[m], pk.bytes)
            residual[m] = res.max_residual
    return {m: (statistics.median(times[m]), peaks[m], residual[m], times[m], statistics.median(decomposing[m]))
            for m in methods}, setup


def agreement(shape, device, k, dtype, weight_dtype):
    """Largest angle (radians) between fast and exact top-k vectors, per weight, on one random block."""
    import surgery
    from surgery.core.lowrank import subspace_angles

    model = build(shape, 1, device, weight_dtype, seed=99)
    dt = {"float32": torch.float32, "float64": torch.float64}[dtype]
    out = {}
    for w in ("K", "V", "OV", "QK"):
        exact = surgery.decompose(model, 0, w, dtype=dt, k=k)
        for m in ("gram", "randomized", "auto"):
            fast = surgery.decompose(model, 0, w, dtype=dt, method=m, k=k)
            ang = subspace_angles(fast.U, exact.U).max().item()
            rel = ((fast.S - exact.S).abs() / exact.S).max().item()
            out[(w, m)] = (ang, rel)
        state(model).svd_cache.clear()
    return out


def micro(device: str, dtype: torch.dtype, repeats: int):
    """The issue's single-matrix figures: one GPT-J MLP matrix and one OV circuit (16 heads)."""
    from surgery.core import lowrank
    from surgery.core.decomposition import factored_svd

    g = torch.Generator().manual_seed(0)
    M = (torch.randn(4096, 16384, generator=g) * 0.02).to(device, dtype)
    A = (torch.randn(16, 4096, 256, generator=g) * 0.02).to(device, dtype)
    B = (torch.randn(16, 256, 4096, generator=g) * 0.02).to(device, dtype)
    cases = {
        "MLP 4096x16384: dense SVD": lambda: torch.linalg.svd(M, full_matrices=False),
        "MLP 4096x16384: Gram eigh (all triples)": lambda: lowrank.gram_svd(M),
        "MLP 4096x16384: randomized k=64 (ours, n_iter=4)": lambda: lowrank.randomized_svd((M,), 64),
        "MLP 4096x16384: torch.svd_lowrank q=64 niter=2": lambda: torch.svd_lowrank(M, q=64, niter=2),
        "OV one head 4096x4096: dense SVD": lambda: torch.linalg.svd(A[0] @ B[0]),
        "OV 16 heads: factored QR (exact)": lambda: factored_svd(A, B),
        "OV 16 heads: factored Gram (k=16)": lambda: lowrank.factored_gram_svd(A, B, 16),
    }
    rows = []
    for name, fn in cases.items():
        reps = 1 if "dense" in name and device == "cpu" else repeats
        ts = []
        for _ in range(reps + 1):  # the first call warms up
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        rows.append((name, statistics.median(ts[1:]) if reps > 1 else ts[-1], reps))
    return rows


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads ({os.cpu_count()} cores visible)"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", nargs="+", default=["gpt2-small", "gptj-6b"], choices=list(SHAPES))
    routes = ["exact", "gram", "randomized", "auto"]
    p.add_argument("--methods", nargs="+", default=routes, choices=routes)
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when available")
    p.add_argument("--k", type=int, default=16, help="top triples per weight and head (default 16)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default torch's). On a shared, oversubscribed machine 1 thread is far steadier: "
                        "spinning OpenMP threads that lose their core make a 768x3072 SVD 3-10x slower")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="analysis dtype")
    p.add_argument("--weights-dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: bfloat16 for GPT-J (half the memory), float32 otherwise")
    p.add_argument("--full-cuda", action="store_true", default=True,
                   help="on CUDA also build the whole model in bf16 and scan it end to end (default on)")
    p.add_argument("--no-full-cuda", dest="full_cuda", action="store_false")
    p.add_argument("--agreement", action="store_true", help="also print fast-vs-exact top-k errors per weight")
    p.add_argument("--micro", action="store_true", help="only the single-matrix timings")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    print(f"torch {torch.__version__}; load average {os.getloadavg()[0]:.1f}; analysis dtype {args.dtype}; k={args.k}; repeats={args.repeats}")
    for device in devices:
        print(f"\n== {device}: {device_name(device)} ==")
        if args.micro:
            for name, t, reps in micro(device, torch.float32, args.repeats):
                print(f"{name:<52} {t:9.3f} s  ({'median of ' + str(reps) if reps > 1 else 'one run'})")
            continue
        for shape in args.shapes:
            kind, d, h, d_mlp, L, vocab = SHAPES[shape]
            wd = {"auto": torch.bfloat16 if kind == "gptj" else torch.float32,
                  "float32": torch.float32, "bfloat16": torch.bfloat16}[args.weights_dtype]
            res, setup = per_block(shape, device, args.methods, args.k, args.repeats, wd, args.dtype)
            print(f"-- {shape}: d_model={d}, {h} heads, d_mlp={d_mlp}, {L} blocks, vocab {vocab}; "
                  f"weights {str(wd).replace('torch.', '')}; warm-up scan (one block, k=1, builds the null) {setup:.2f} s")
            base = res.get("exact", (None,))[0]
            for m, (t, pk, resid, ts, dec) in res.items():
                ratio = f"  {base / t:6.1f}x faster than exact" if base and m != "exact" else ""
                worst = max(resid.values()) if resid else 0.0
                print(f"  {m:<10} per block {t:8.3f} s (decompositions {dec:.3f} s; runs {', '.join(f'{x:.2f}' for x in ts)}); "
                      f"full model {t * L:8.1f} s extrapolated (x{L}); peak +{pk / 2**20:7.0f} MiB; "
                      f"max residual {worst:.1e}{ratio}")
            if args.agreement:
                for (w, m), (ang, rel) in agreement(shape, device, args.k, args.dtype, wd).items():
                    print(f"  agreement {w:<2} {m:<10} max angle to exact {ang:.1e} rad, max |dS|/S {rel:.1e}")
            if device.startswith("cuda") and args.full_cuda:
                full_model(shape, device, args.methods, args.k, args.dtype)
    return 0


def full_model(shape, device, methods, k, dtype):
    """The whole model in bf16 on the GPU, scanned end to end (measured, not extrapolated)."""
    L = SHAPES[shape][4]
    model = build(shape, L, device, torch.bfloat16)
    run_scan(model, "gram", 1, dtype, blocks=[0])  # warm-up
    for m in [m for m in methods if m != "exact"] + [m for m in methods if m == "exact"]:
        with peak(device) as pk:
            t0 = time.perf_counter()
            run_scan(model, m, k, dtype)
            t = time.perf_counter() - t0
        print(f"  full model {m:<10} {t:8.2f} s measured end to end ({L} blocks, bf16 weights); peak +{pk.bytes / 2**20:.0f} MiB")
    del model
    torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
