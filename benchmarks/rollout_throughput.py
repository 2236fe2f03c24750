"""Environment steps per second: batched lockstep evaluation against the per-episode HF loop, side by side.

    python benchmarks/rollout_throughput.py                      # 100 Hopper episodes x 1000 steps
    python benchmarks/rollout_throughput.py --episodes 20 --steps 200 --rounds 2   # quick

Every quantity is measured in each round, interleaved, and the table shows medians over rounds, so
a busy shared machine slows all of them alike. Episodes run without early termination
(terminate_when_unhealthy=False) so every round does the same work: `episodes x steps` steps.
The ceiling is the model's arithmetic per step at the measured matrix rate plus the raw MuJoCo step.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from surgery.behaviour.evaluation import evaluate  # noqa: E402
from surgery.behaviour.hf_loop import hf_episode, untrained_dt  # noqa: E402
from surgery.behaviour.policy import DTPolicy, forward_flops  # noqa: E402

MATMUL = (6000, 128, 512)  # rows x in x out: one MLP c_fc over ~100 episodes x 59 tokens


def load_model(name: str, env_id: str):
    """A zoo model by name, or a freshly initialised one ("untrained")."""
    if name == "untrained":
        return untrained_dt(env_id)
    from surgery.loading import load

    adapter = load(name)
    return adapter.model, adapter.metadata


def matmul_rate(dtype: torch.dtype, kernel: str, repeats: int = 20) -> float:
    """GFLOP/s of the benchmark matmul: "torch" is `a @ b` as a user writes it, "onednn" DTPolicy's fused kernel."""
    m, k, n = MATMUL
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    bt = b.t().contiguous()
    if kernel == "torch":
        def run():
            return a @ b
    else:
        def run():
            return torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 2 * m * k * n / statistics.median(times) / 1e9


def mujoco_step_us(env_id: str, steps: int = 2000) -> tuple[float, float]:
    """Median-free mean microseconds per env.step: through gymnasium's wrappers, and the bare MuJoCo env."""
    import gymnasium as gym

    env = gym.make(env_id, terminate_when_unhealthy=False)
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    acts = rng.uniform(-1, 1, (steps,) + env.action_space.shape).astype(np.float32)
    out = []
    for step in (env.step, env.unwrapped.step):
        env.reset(seed=0)
        t = time.perf_counter()
        for a in acts:
            step(a)
        out.append((time.perf_counter() - t) / steps * 1e6)
    env.close()
    return out[0], out[1]


def loop_steps_per_s(model, md, env_id: str, steps: int, seed: int) -> float:
    import gymnasium as gym

    env = gym.make(env_id, terminate_when_unhealthy=False)
    t = time.perf_counter()
    r = hf_episode(model, md, env, seed=seed, target_return=md.target_returns[0], max_steps=steps)
    return r["length"] / (time.perf_counter() - t)


def batched_steps_per_s(model, md, env_id: str, episodes: int, steps: int, dtype) -> float:
    t = time.perf_counter()
    res = evaluate(model, episodes=episodes, seed=0, metadata=md, env=env_id, dtype=dtype, progress=False,
                   max_steps=steps, env_kwargs={"terminate_when_unhealthy": False})
    return int(res.lengths.sum()) / (time.perf_counter() - t)


def time_split(model, md, env_id: str, episodes: int, steps: int, dtype) -> dict:
    """Inside one batched run: microseconds per env step in the forward, in env.step, and in the rest."""
    import gymnasium as gym

    spent = {"forward": 0.0, "env": 0.0}

    class Timed(gym.Wrapper):
        def step(self, action):
            t = time.perf_counter()
            out = self.env.step(action)
            spent["env"] += time.perf_counter() - t
            return out

    real_call = DTPolicy.__call__

    def timed_call(self, *args, **kwargs):
        t = time.perf_counter()
        out = real_call(self, *args, **kwargs)
        spent["forward"] += time.perf_counter() - t
        return out

    DTPolicy.__call__ = timed_call
    try:
        t = time.perf_counter()
        res = evaluate(model, episodes=episodes, seed=0, metadata=md, dtype=dtype, progress=False, max_steps=steps,
                       env=lambda: Timed(gym.make(env_id, terminate_when_unhealthy=False)))
        total = time.perf_counter() - t
    finally:
        DTPolicy.__call__ = real_call
    n = int(res.lengths.sum())
    return {k: v / n * 1e6 for k, v in spent.items()} | {"rest": (total - sum(spent.values())) / n * 1e6,
                                                         "total": total / n * 1e6}


def bf16_action_error(model, md, env_id: str, episodes: int, steps: int) -> dict:
    """bfloat16 against float32 actions on the same recorded windows (from a float32 run)."""
    res = evaluate(model, episodes=episodes, seed=1, metadata=md, env=env_id, progress=False, max_steps=steps,
                   env_kwargs={"terminate_when_unhealthy": False}, trajectories=True)
    K = md.context_len
    f32, b16 = DTPolicy(model), DTPolicy(model, torch.bfloat16)
    diffs, agree = [], []
    mean = torch.tensor(md.state_mean or [0.0] * md.state_dim)
    std = torch.tensor(md.state_std or [1.0] * md.state_dim)
    for tr in res.trajectories.values():
        obs = (torch.as_tensor(tr["observations"], dtype=torch.float32) - mean) / std
        acts = torch.as_tensor(np.asarray(tr["actions"]), dtype=torch.float32)
        if md.discrete:
            acts = torch.nn.functional.one_hot(acts.long(), md.act_dim).float()
        spent = np.concatenate([[0.0], np.cumsum(tr["rewards"])]) / md.return_scale
        rtg = md.target_returns[0] / md.return_scale - spent
        rtg = torch.as_tensor(rtg, dtype=torch.float32)
        ts = list(range(K, len(tr["rewards"]), max(1, len(tr["rewards"]) // 20)))
        lo = [t - K + 1 for t in ts]
        S = torch.stack([obs[a:t + 1] for a, t in zip(lo, ts)])
        A = torch.stack([acts[a:t] for a, t in zip(lo, ts)])
        R = torch.stack([rtg[a:t + 1] for a, t in zip(lo, ts)])[..., None]
        T = torch.stack([torch.arange(a, t + 1) for a, t in zip(lo, ts)])
        x, y = f32(S, A, R, T), b16(S, A, R, T)
        diffs.append((x - y).abs().flatten())
        agree.append((x.argmax(-1) == y.argmax(-1)).float())
    d = torch.cat(diffs)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "argmax_agreement": float(torch.cat(agree).mean()),
            "windows": int(len(torch.cat(agree)))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="auto", help='zoo name or checkpoint directory, "untrained", or "auto" '
                   "(the zoo's hopper if shipped, else untrained)")
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--steps", type=int, default=1000, help="steps per episode in the batched runs")
    p.add_argument("--loop-steps", type=int, default=300, help="steps of the per-episode loop per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name = args.model
    if name == "auto":
        from surgery import zoo

        name = "hopper" if "hopper" in zoo.names() and args.env.startswith("Hopper") else "untrained"
    model, md = load_model(name, args.env)
    K = md.context_len
    flops = forward_flops(model.config, K)

    m = {k: [] for k in ("loop", "f32", "bf16", "mm_f32", "mm_bf16", "dnn_f32", "dnn_bf16", "env_us", "env_bare_us")}
    for rnd in range(args.rounds):
        m["loop"].append(loop_steps_per_s(model, md, args.env, args.loop_steps, seed=rnd))
        m["f32"].append(batched_steps_per_s(model, md, args.env, args.episodes, args.steps, torch.float32))
        m["mm_f32"].append(matmul_rate(torch.float32, "torch"))
        m["dnn_f32"].append(matmul_rate(torch.float32, "onednn"))
        m["bf16"].append(batched_steps_per_s(model, md, args.env, args.episodes, args.steps, torch.bfloat16))
        m["mm_bf16"].append(matmul_rate(torch.bfloat16, "torch"))
        m["dnn_bf16"].append(matmul_rate(torch.bfloat16, "onednn"))
        env_us, bare_us = mujoco_step_us(args.env)
        m["env_us"].append(env_us), m["env_bare_us"].append(bare_us)
        print(f"round {rnd + 1}/{args.rounds}: loop {m['loop'][-1]:.0f}, float32 {m['f32'][-1]:.0f}, "
              f"bfloat16 {m['bf16'][-1]:.0f} steps/s", flush=True)
    med = {k: statistics.median(v) for k, v in m.items()}
    err = bf16_action_error(model, md, args.env, min(args.episodes, 10), min(args.steps, 300))

    def ceiling(rate_gflops: float) -> float:
        return 1.0 / (flops["linear"] / (rate_gflops * 1e9) + med["env_bare_us"] * 1e-6)

    print(f"\nmodel: {name} ({model.config.n_layer} blocks, width {model.config.hidden_size}, context {K}); "
          f"env {args.env}; {args.episodes} episodes x {args.steps} steps; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; medians of {args.rounds} rounds")
    print(f"arithmetic per env step: HF full forward {flops['linear'] / 1e6:.1f} MFLOP in matrix products "
          f"(+{flops['attention'] / 1e6:.1f} attention); DTPolicy computes {flops['policy_linear'] / 1e6:.1f} "
          f"(+{flops['policy_attention'] / 1e6:.1f})")
    m_, k_, n_ = MATMUL
    print(f"matrix rate {m_}x{k_} @ {k_}x{n_}: torch `@` float32 {med['mm_f32']:.0f}, bfloat16 {med['mm_bf16']:.0f} "
          f"GFLOP/s; oneDNN float32 {med['dnn_f32']:.0f}, bfloat16 {med['dnn_bf16']:.0f} GFLOP/s")
    print(f"MuJoCo step: {med['env_bare_us']:.0f} us bare, {med['env_us']:.0f} us through gymnasium's wrappers")
    for dt, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        split = time_split(model, md, args.env, args.episodes, min(args.steps, 300), dtype)
        print(f"where a {dt} step goes, timed inside one run (us per env step): forward {split['forward']:.0f}, "
              f"env.step {split['env']:.0f}, rest {split['rest']:.0f} (total {split['total']:.0f})")
    print(f"bfloat16 vs float32 actions on {err['windows']} recorded windows: max |diff| {err['max_abs']:.2e}, "
          f"mean {err['mean_abs']:.2e}, argmax agreement {100 * err['argmax_agreement']:.1f}%")
    ceil_f32, ceil_bf16 = ceiling(med["mm_f32"]), ceiling(med["mm_bf16"])
    ceil_dnn32, ceil_dnn16 = ceiling(med["dnn_f32"]), ceiling(med["dnn_bf16"])
    rows = [
        ("per-episode HF loop", med["loop"], None, None, None),
        ("batched float32", med["f32"], 3.0, ceil_f32, ceil_dnn32),
        ("batched bfloat16", med["bf16"], 10.0, ceil_bf16, ceil_dnn16),
    ]
    print(f"\n{'':22s} {'steps/s':>9s} {'x loop':>8s} {'target':>7s} {'ceiling':>8s} {'of ceil':>8s} "
          f"{'oneDNN ceil':>12s} {'of it':>6s}")
    ok = True
    for label, rate, target, ceil, ceil2 in rows:
        x = rate / med["loop"]
        if target is None:
            print(f"{label:22s} {rate:9.0f} {x:8.2f}")
            continue
        met = x >= target and (target != 3.0 or rate >= 0.7 * ceil)
        ok = ok and met
        print(f"{label:22s} {rate:9.0f} {x:8.2f} {('>=%gx' % target):>7s} {ceil:8.0f} {100 * rate / ceil:7.0f}% "
              f"{ceil2:12.0f} {100 * rate / ceil2:5.0f}%  {'met' if met else 'NOT MET'}")
    print("\nceiling = 1 / (HF forward's matrix FLOPs / matrix rate + bare MuJoCo step); float32 target: >= 3x loop "
          "and >= 70% of the torch-rate ceiling; bfloat16 target: >= 10x loop.")
    for label, ceil, target in (("float32", ceil_dnn32, 3.0), ("bfloat16", ceil_dnn16, 10.0)):
        if ceil < target * med["loop"]:
            print(f"note: the {label} ceiling at the oneDNN rate is only {ceil / med['loop']:.1f}x this run's loop: "
                  f"{target:g}x is out of reach here whatever the forward does (MuJoCo step {med['env_bare_us']:.0f} us).")
    if not ok:
        print("a target was not met; see the time split above for where the time goes.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
