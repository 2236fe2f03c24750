"""Cost of the whole alignment analysis, and of its parts, measured side by side in one run.

  dt      a 3-block, 128-wide decision transformer (Hopper shapes): every weight, every embedding
          set, top 10; cold (fresh model, no cached SVDs or nulls) and warm (caches hot)
  gpt2    a GPT-2-small-shaped random model (12 blocks, 12 heads, 768 wide, 50257 tokens): K, V
          and OV against token_out, top 20, float32; cold, end to end
  parts   for the GPT-2 shape: OV of all 144 heads factored (QR + 64x64 SVD) against dense
          (768x768 SVD of W_V W_O); K/V SVDs by each decompose method; the cosine search
          with and without the bfloat16 screen

    python benchmarks/analysis_cost.py                  # everything (a few minutes on 2 cores)
    python benchmarks/analysis_cost.py --only dt --repeats 7
    python benchmarks/analysis_cost.py --threads 1      # on a busy machine one thread can win

Targets (issue 3): dt under 1 s; gpt2 under 30 s. Medians over --repeats; the machine's load
average is printed before and after, since other jobs share these cores.
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import time

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine a spinning pool makes a
# 768x3072 SVD ~4x slower with 2 threads than with 1. Read when torch starts, so set it before the import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

import surgery  # noqa: E402
from surgery.analysis import chance  # noqa: E402
from surgery.analysis.alignment import alignment  # noqa: E402
from surgery.analysis.cosines import extremes, unit_rows  # noqa: E402
from surgery.core.state import state


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _median(fn, repeats: int) -> tuple[float, list[float]]:
    ts = [_time(fn) for _ in range(repeats)]
    return statistics.median(ts), ts


def _quiet():
    import transformers

    transformers.logging.set_verbosity_error()


def dt_model(seed: int = 0):
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    torch.manual_seed(seed)
    cfg = DecisionTransformerConfig(state_dim=11, act_dim=3, hidden_size=128, n_layer=3, n_head=1, n_inner=512,
                                    max_ep_len=1000, activation_function="relu")
    return DecisionTransformerModel(cfg).eval()


def gpt2_model(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257)).eval()


def _cold():
    chance._NULLS.clear()
    chance._DIRECTIONS.clear()
    for cache in ("_SUBSPACE_NULLS", "_FRAMES"):  # the subspace nulls' caches (absent before tied groups)
        getattr(chance, cache, {}).clear()


def bench_dt(repeats: int) -> None:
    models = [dt_model(seed) for seed in range(repeats)]
    it = iter(models)

    def cold():
        _cold()
        alignment(next(it), top=10)

    c0 = time.process_time()
    cold_s, cold_all = _median(cold, repeats)
    cold_cpu = (time.process_time() - c0) / repeats
    warm_model = models[0]
    c0 = time.process_time()
    warm_s, _ = _median(lambda: alignment(warm_model, top=10), repeats)
    warm_cpu = (time.process_time() - c0) / repeats
    a = alignment(warm_model, top=10)
    n_vec = len(a.vectors) // len(a.settings.embeddings)
    print(f"dt   3 blocks x 128, all weights ({n_vec} singular vectors) x all 7 sets, top 10: "
          f"cold {cold_s:.3f} s (runs {', '.join(f'{t:.2f}' for t in cold_all)}; mean CPU {cold_cpu:.3f} s), "
          f"warm {warm_s:.3f} s (mean CPU {warm_cpu:.3f} s); "
          f"{len(a.records):,} records   [target < 1 s]")


def bench_gpt2(repeats: int, method: str) -> None:
    kw = {} if method == "exact" else {"method": method}

    def run():
        _cold()
        model = gpt2_model()
        t, c = time.perf_counter(), time.process_time()
        a = alignment(model, embeddings="token_out", weights=("K", "V", "OV"), top=20, dtype=torch.float32,
                      progress=False, **kw)
        return time.perf_counter() - t, time.process_time() - c, a

    times, cpu = [], []
    for _ in range(repeats):
        t, c, a = run()
        times.append(t)
        cpu.append(c)
    print(f"gpt2 12 x 768, K+V+OV ({len(a.vectors):,} singular vectors) vs token_out (50,257), top 20, float32, "
          f"decompose method={method}: {statistics.median(times):.1f} s wall, {statistics.median(cpu):.1f} s CPU "
          f"(runs {', '.join(f'{t:.1f}' for t in times)}); {len(a.records):,} records   [target < 30 s]")


def bench_parts(repeats: int) -> None:
    model = gpt2_model()
    ad = surgery.wrap(model)
    f32 = torch.float32

    # OV: factored (what decompose does) against a dense SVD of each head's 768 x 768 product.
    def factored():
        state(ad).svd_cache.clear()
        for b in range(ad.n_blocks):
            surgery.decompose(ad, b, "OV", dtype=f32)

    def dense():
        with torch.no_grad():
            for b in range(ad.n_blocks):
                w = ad.attn_weights(b)
                torch.linalg.svd((w["W_V"] @ w["W_O"]).to(f32), full_matrices=False)

    fac, _ = _median(factored, repeats)
    den, _ = _median(dense, max(1, repeats // 2))
    print(f"OV   144 heads: factored {fac:.2f} s, dense {den:.2f} s: factored is {den / fac:.0f}x faster")

    # K and V: one block's pair, by each decompose route available.
    methods = ["exact"]
    if "method" in inspect.signature(surgery.decompose).parameters:
        from surgery.core import lowrank

        methods = list(lowrank.METHODS)
    line = []
    for m in methods:
        kw = {} if m == "exact" else {"method": m}

        def kv():
            state(ad).svd_cache.clear()
            surgery.decompose(ad, 0, "K", dtype=f32, **kw)
            surgery.decompose(ad, 0, "V", dtype=f32, **kw)

        try:
            t, _ = _median(kv, repeats)
        except ValueError:  # a top-k-only route (needs k): not a way to get every triple
            continue
        line.append(f"{m} {t:.2f} s")
    print(f"K+V  one block (768x3072 twice), float32: {', '.join(line)}; x12 blocks for the model")

    # The cosine search: one block's K read side (768 vectors) against 50,257 tokens, top 20.
    E = unit_rows(model.lm_head.weight, f32)
    D = unit_rows(surgery.decompose(ad, 0, "K", dtype=f32).U.T, f32)
    exact, _ = _median(lambda: extremes(D, E, 20, screen=False), repeats)
    screened, _ = _median(lambda: extremes(D, E, 20, screen=True), repeats)
    a, b = extremes(D, E, 20, screen=True), extremes(D, E, 20, screen=False)
    diff = max((a.top - b.top).abs().max().item(), (a.bottom - b.bottom).abs().max().item())
    print(f"cos  768 vectors x 50,257 tokens, top+bottom 20: exact float32 {exact:.2f} s, bf16-screened "
          f"{screened:.2f} s ({exact / screened:.2f}x; largest difference {diff:.1e}); x48 for K+V+OV of 12 blocks")

    null, _ = _median(lambda: (_cold(), chance.null_for(model.lm_head.weight)), 1)
    print(f"null token_out: {chance.default_draws(50257, 768):,} random directions: {null:.2f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("dt", "gpt2", "parts"), nargs="+", default=["dt", "gpt2", "parts"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--gpt2-repeats", type=int, default=1, help="end-to-end GPT-2 runs (each ~30-60 s)")
    p.add_argument("--method", default="exact", help="decompose method for the GPT-2 run (exact, gram)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, capped at 2)")
    args = p.parse_args()
    torch.set_num_threads(args.threads or min(2, torch.get_num_threads()))
    _quiet()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average {os.getloadavg()[0]:.1f}")
    if "dt" in args.only:
        bench_dt(args.repeats)
    if "parts" in args.only:
        bench_parts(args.repeats)
    if "gpt2" in args.only:
        bench_gpt2(args.gpt2_repeats, args.method)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
