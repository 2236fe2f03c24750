"""Train a Hugging Face DecisionTransformerModel on an offline dataset, as in Chen et al. 2021's gym code."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from surgery.core.threads import torch_threads
from surgery.zoo.datasets import episodes


@dataclass
class TrainConfig:
    """Decision-transformer training settings (defaults: the DT paper's gym settings, shorter run)."""

    seed: int = 0
    """Seeds the weights, dropout and batch sampling: the same seed and data give the same weights."""
    steps: int = 6_000
    """Gradient steps (the paper does 100k at lr 1e-4; the zoo's CPU budget allows a few thousand at 3e-4)."""
    batch_size: int = 64
    """Sub-trajectories per step."""
    lr: float = 3e-4
    """Peak AdamW learning rate (the paper: 1e-4 for 100k steps)."""
    weight_decay: float = 1e-4
    """AdamW weight decay."""
    warmup_steps: int = 500
    """Linear learning-rate warm-up from 0 to lr (the paper uses 10k of 100k steps)."""
    final_lr_ratio: float = 0.1
    """After warm-up the rate follows a cosine from lr to lr * this; 1.0 keeps it constant as in the paper.
    The decay lets a short run (a few thousand steps at a higher lr) settle."""
    grad_clip: float = 0.25
    """Gradient-norm clip."""
    context_len: int = 20
    """K: timesteps per sub-trajectory."""
    hidden_size: int = 128
    """Residual width, as in the study and the public HF gym checkpoints."""
    n_layer: int = 3
    """Transformer blocks."""
    n_head: int = 1
    """Attention heads per block."""
    n_inner: int = 512
    """MLP width (4 x hidden_size)."""
    activation: str = "relu"
    """MLP non-linearity; the original gym code uses relu."""
    dropout: float = 0.1
    """Residual, embedding and attention dropout."""
    max_ep_len: int = 1000
    """Size of the timestep embedding table."""
    return_scale: float = 1000.0
    """Returns-to-go are divided by this (1000 for MuJoCo in the paper)."""
    bf16: bool = False
    """Run forward/backward under bfloat16 autocast (weights and optimizer stay float32)."""
    threads: int = 1
    """torch CPU threads. One by default: on a shared 2-core machine two threads ran 12x slower than one."""


def make_model(cfg: TrainConfig, state_dim: int, act_dim: int, discrete: bool):
    """A fresh DecisionTransformerModel of the zoo's shape; discrete: logits out (no tanh)."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    config = DecisionTransformerConfig(
        state_dim=state_dim, act_dim=act_dim, hidden_size=cfg.hidden_size, max_ep_len=cfg.max_ep_len,
        action_tanh=not discrete, n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.n_inner,
        activation_function=cfg.activation, n_positions=1024,
        resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=None, eos_token_id=None,  # GPT-2's token ids mean nothing here (vocab_size is 1)
    )
    return DecisionTransformerModel(config)


def state_stats(data: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the dataset's states (std floored at 1e-6 as in the DT code)."""
    obs = np.asarray(data["observations"], np.float64)
    return obs.mean(0), obs.std(0) + 1e-6


class Sampler:
    """Draws length-K sub-trajectories, episodes weighted by length, left-padded with mask 0 (as in the DT code)."""

    def __init__(self, data: dict, cfg: TrainConfig, act_dim: int, discrete: bool, mean, std):
        self.K, self.scale, self.max_ep_len = cfg.context_len, cfg.return_scale, cfg.max_ep_len
        self.act_dim, self.discrete = act_dim, discrete
        self.eps = []
        for ep in episodes(data):
            s = ((ep["observations"] - mean) / std).astype(np.float32)
            a = np.asarray(ep["actions"])
            a = np.eye(act_dim, dtype=np.float32)[a] if discrete else a.astype(np.float32)
            # Undiscounted reward-to-go from each step (gamma = 1 in the DT paper).
            rtg = np.cumsum(ep["rewards"][::-1].astype(np.float64))[::-1].astype(np.float32) / self.scale
            self.eps.append((s, a, rtg, np.asarray(ep["actions"])))
        lens = np.array([len(e[0]) for e in self.eps], np.float64)
        self.p = lens / lens.sum()

    def sample(self, batch_size: int, rng: np.random.Generator) -> dict:
        K, B = self.K, batch_size
        sd, ad = self.eps[0][0].shape[1], self.act_dim
        s = np.zeros((B, K, sd), np.float32)
        a = np.zeros((B, K, ad), np.float32)
        rtg = np.zeros((B, K, 1), np.float32)
        t = np.zeros((B, K), np.int64)
        mask = np.zeros((B, K), np.int64)
        target = np.zeros((B, K), np.int64) if self.discrete else np.zeros((B, K, ad), np.float32)
        for b, i in enumerate(rng.choice(len(self.eps), size=B, p=self.p)):
            es, ea, ertg, raw = self.eps[i]
            start = int(rng.integers(len(es)))
            n = min(K, len(es) - start)
            sl = slice(start, start + n)
            s[b, K - n:] = es[sl]
            a[b, K - n:] = ea[sl]
            rtg[b, K - n:, 0] = ertg[sl]
            t[b, K - n:] = np.minimum(np.arange(start, start + n), self.max_ep_len - 1)
            mask[b, K - n:] = 1
            target[b, K - n:] = raw[sl] if self.discrete else ea[sl]
        return {k: torch.from_numpy(v) for k, v in
                dict(states=s, actions=a, returns_to_go=rtg, timesteps=t, attention_mask=mask, target=target).items()}


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Multiplier of cfg.lr at a step: linear warm-up, then cosine down to final_lr_ratio."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(cfg.steps - cfg.warmup_steps, 1)
    return cfg.final_lr_ratio + (1 - cfg.final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def loss_fn(model, batch: dict, discrete: bool) -> torch.Tensor:
    """MSE on actions (continuous) or cross-entropy on action logits (discrete), over unpadded steps."""
    out = model(
        states=batch["states"], actions=batch["actions"], returns_to_go=batch["returns_to_go"],
        timesteps=batch["timesteps"], attention_mask=batch["attention_mask"], return_dict=True,
    )
    pred = out.action_preds.float()
    keep = batch["attention_mask"].bool()
    if discrete:
        return torch.nn.functional.cross_entropy(pred[keep], batch["target"][keep])
    return torch.nn.functional.mse_loss(pred[keep], batch["target"][keep])


def train(cfg: TrainConfig, data: dict, act_dim: int, discrete: bool, progress: bool = True) -> dict:
    """Train a DT; returns {"model", "state_mean", "state_std", "losses", "seconds"}.

    act_dim is the action size, or for discrete actions the number of actions (one-hot width).
    """
    with torch_threads(cfg.threads):
        return _train(cfg, data, act_dim, discrete, progress)


def _train(cfg: TrainConfig, data: dict, act_dim: int, discrete: bool, progress: bool) -> dict:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    state_dim = data["observations"].shape[1]
    mean, std = state_stats(data)
    sampler = Sampler(data, cfg, act_dim, discrete, mean, std)
    model = make_model(cfg, state_dim, act_dim, discrete)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(cfg, step))
    losses, start = [], time.monotonic()
    bar = tqdm(range(cfg.steps), desc="train DT", disable=not progress)
    for step in bar:
        batch = sampler.sample(cfg.batch_size, rng)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = loss_fn(model, batch, discrete)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"training loss became {loss.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    model.eval()
    return {"model": model, "state_mean": mean, "state_std": std, "losses": losses,
            "seconds": time.monotonic() - start}
