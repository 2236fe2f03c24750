"""`surgery zoo build`: expert -> datasets -> DT training -> evaluation -> checkpoint with cards. Resumable."""
from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from surgery import runlock
from surgery.behaviour.envs import env_info
from surgery.behaviour.metadata import DTMetadata
from surgery.checks import integer, one_of, positive_number
from surgery.errors import SurgeryError
from surgery.files import write_atomic
from surgery.zoo import cards, datasets
from surgery.zoo.specs import ZooSpec, spec

LEVELS = ("expert", "medium", "mixed")
STAGES = ("expert", "data", "train", "model")


@dataclass
class BuildOptions:
    """Budgets and seeds of one build; None means the spec's default."""

    out: Path
    """Working directory; stages write into out/NAME/{expert,data,train,model}."""
    seed: int = 0
    """Seeds ARS, data collection (offset per level) and, unless train_seed is given, training."""
    train_seed: int | None = None
    """Seeds DT training only (weights, dropout, batches); None: the same as seed. Another value trains
    a twin of a model on the very same expert and datasets."""
    expert_iters: int | None = None
    """ARS iterations (spec default when None)."""
    expert_minutes: float | None = None
    """Wall-clock cap on ARS; a capped run is not reproducible."""
    episodes: int | None = None
    """Episodes per level (expert and medium)."""
    train_steps: int | None = None
    """DT gradient steps."""
    eval_episodes: int = 100
    """Episodes for the final evaluation."""
    eval_seed: int = 0
    """Run seed of the final evaluation (surgery.evaluate's episode seeds)."""
    bf16: bool = True
    """bfloat16 autocast while training."""
    progress: bool = True
    """Show progress bars."""
    threads: int = 1
    """torch CPU threads for training and evaluation."""
    stop_after: str | None = None
    """Stop after this stage (expert, data, train or model)."""

    def __post_init__(self):  # a bad budget should fail here, not after minutes of ARS (nan removed the cap)
        for name, low in (("seed", 0), ("train_seed", 0), ("expert_iters", 1), ("episodes", 1), ("train_steps", 1),
                          ("eval_episodes", 1), ("eval_seed", 0), ("threads", 1)):
            if getattr(self, name) is not None:
                integer(getattr(self, name), name, low=low)
        if self.expert_minutes is not None:
            positive_number(self.expert_minutes, "expert_minutes")
        if self.stop_after is not None:
            one_of(self.stop_after, "stop_after", STAGES)


def train_seed(opts: BuildOptions) -> int:
    """The seed DT training uses: opts.train_seed, or opts.seed when that is None."""
    return opts.seed if opts.train_seed is None else opts.train_seed


def data_seed(level: str, seed: int) -> int:
    """First reset seed of a level's episodes, far from the evaluation seeds (0, 1, ...)."""
    return 1_000_000 * (1 + LEVELS.index(level)) + 100_000 * seed


def build(name: str, opts: BuildOptions, log=print) -> Path:
    """Run every unfinished stage for one zoo model; returns the finished model directory.

    Every finished stage's record is checked before anything runs, so a refusal changes nothing;
    the build directory is locked for the run (a second build of it is refused, naming this one).
    A stage that runs invalidates the later stages (they were built from its old output).
    """
    s = spec(name)
    root = Path(opts.out) / s.name
    stages = (("expert", stage_expert), ("data", stage_data), ("train", stage_train), ("model", stage_model))
    if opts.stop_after not in (None, *STAGES):
        raise SurgeryError(f"unknown stage {opts.stop_after!r}; valid stages: {', '.join(STAGES)}")
    _check_markers(root, opts)
    with runlock.hold(root):
        _check_markers(root, opts)  # again, now that no other build can be writing them
        for i, (stage, fn) in enumerate(stages):
            marker, record = root / f".{stage}.done", _stage_options(stage, opts)
            if marker.is_file():
                log(f"[{s.name}] {stage}: done earlier, skipped ({root / stage})")
            else:
                for later in STAGES[i + 1:]:
                    (root / f".{later}.done").unlink(missing_ok=True)
                log(f"[{s.name}] {stage} ...")
                fn(s, root, opts)
                write_atomic(marker, json.dumps(record) + "\n")  # written last, so an interrupted stage reruns
            if stage == opts.stop_after:
                break
    return root / (opts.stop_after or "model")


def _check_markers(root: Path, opts: BuildOptions) -> None:
    """Refuse, before anything is written, a build directory holding a stage built with other options."""
    for stage in STAGES[: STAGES.index(opts.stop_after or STAGES[-1]) + 1]:
        marker, record = root / f".{stage}.done", _stage_options(stage, opts)
        if marker.is_file():
            try:
                earlier = json.loads(marker.read_text())
            except ValueError:
                earlier = f"an unreadable record ({marker})"
            if earlier != record:
                raise SurgeryError(
                    f"{root} holds a {stage} stage built with {earlier}, not {record}; "
                    f"use another --out, or delete {marker} (and the later stages' markers) to rebuild")


def _stage_options(stage: str, opts: BuildOptions) -> dict:
    """The options a stage's output depends on (its own and every earlier stage's)."""
    keys = {"expert": ("seed", "expert_iters", "expert_minutes"), "data": ("episodes",),
            "train": ("train_steps", "bf16"), "model": ("eval_episodes", "eval_seed")}
    upto = STAGES[: STAGES.index(stage) + 1]
    record = {k: getattr(opts, k) for st in upto for k in keys[st]}
    # Recorded only when it differs from --seed, so builds made before --train-seed existed (and
    # --train-seed equal to --seed) keep their markers; any other training seed refuses a resume.
    if "train" in upto and train_seed(opts) != opts.seed:
        record["train_seed"] = train_seed(opts)
    return record


def stage_expert(s: ZooSpec, root: Path, opts: BuildOptions) -> None:
    out = root / "expert"
    out.mkdir(parents=True, exist_ok=True)
    if s.ars is None:
        summary = {"method": f"gymnasium's built-in {s.env_id} heuristic controller (nothing to train)"}
        (out / "expert.json").write_text(json.dumps(summary, indent=2) + "\n")
        return
    from surgery.zoo.ars import ARSConfig
    from surgery.zoo.experts import train_expert

    cfg = ARSConfig(env_id=s.env_id, seed=opts.seed, **s.ars)
    cfg = replace(cfg, iters=opts.expert_iters or cfg.iters, minutes=opts.expert_minutes)
    cfg = replace(cfg, eval_every=min(cfg.eval_every, cfg.iters))
    train_expert(cfg, out, progress=opts.progress)


def _policy_factory(s: ZooSpec, root: Path, level: str):
    """make_policy(env, rng) for a level, and a description for the card."""
    from surgery.zoo.experts import load_expert, load_snapshot
    from surgery.zoo.policies import GaussianNoise, LunarHeuristic

    noise = s.expert_noise if level == "expert" else s.medium_noise
    if s.ars is None:
        return (lambda env, rng: LunarHeuristic(env, noise, rng)), f"heuristic controller, epsilon={noise} random actions"
    if level == "expert":
        policy, what = load_expert(root / "expert"), "best ARS policy"
    else:
        policy, it, ret = load_snapshot(root / "expert", s.medium_fraction)
        what = f"ARS snapshot at iteration {it} (closest to {s.medium_fraction:.0%} of the best; evaluated {ret:.0f})"
    return (lambda env, rng: GaussianNoise(policy, noise, rng)), f"{what}, Gaussian action noise sigma={noise}"


def dataset_path(root: Path, name: str, level: str) -> Path:
    return root / "data" / f"{name}-{level}.npz"


def stage_data(s: ZooSpec, root: Path, opts: BuildOptions) -> None:
    n = opts.episodes or s.episodes
    parts, card = {}, {"env_id": s.env_id, "levels": {}}
    for level in ("expert", "medium"):
        make_policy, what = _policy_factory(s, root, level)
        seed = data_seed(level, opts.seed)
        parts[level] = datasets.collect(s.env_id, make_policy, n, seed, desc=f"collect {s.name}-{level}", progress=opts.progress)
        datasets.save(parts[level], dataset_path(root, s.name, level))
        card["levels"][level] = {"policy": what, "seeds": f"{seed}..{seed + n - 1}", **datasets.card(parts[level])}
    mixed = datasets.concat(parts["expert"], parts["medium"])
    datasets.save(mixed, dataset_path(root, s.name, "mixed"))
    card["levels"]["mixed"] = {"policy": "union of the expert and medium episodes (like D4RL medium-expert)",
                               "seeds": "as expert and medium", **datasets.card(mixed)}
    (root / "data" / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (root / "data" / "card.md").write_text(cards.dataset_card_md(s.name, card))


def _train_config(s: ZooSpec, opts: BuildOptions):
    from surgery.zoo.train import TrainConfig

    cfg = TrainConfig(seed=train_seed(opts), return_scale=s.return_scale, bf16=opts.bf16, threads=opts.threads, **s.train)
    if opts.train_steps:
        cfg = replace(cfg, steps=opts.train_steps, warmup_steps=min(cfg.warmup_steps, max(opts.train_steps // 10, 1)))
    return cfg


def stage_train(s: ZooSpec, root: Path, opts: BuildOptions) -> None:
    from surgery.behaviour.checkpoint import save_checkpoint
    from surgery.zoo.train import train

    info = env_info(s.env_id)
    data = datasets.load(dataset_path(root, s.name, s.train_level))
    card = json.loads((root / "data" / "card.json").read_text())
    cfg = _train_config(s, opts)
    act_dim = len(info.action_names) if info.discrete else data["actions"].shape[1]
    res = train(cfg, data, act_dim, info.discrete, progress=opts.progress)
    best = card["levels"]["expert"]["return_max"]
    # Condition on the best return in the data, rounded up (the DT paper asks for about the expert's return).
    targets = [math.ceil(best / 100) * 100, math.ceil(card["levels"]["medium"]["return_mean"] / 100) * 100]
    meta = DTMetadata(
        env_id=s.env_id, state_dim=data["observations"].shape[1], act_dim=act_dim, discrete=info.discrete,
        state_mean=[float(x) for x in res["state_mean"]], state_std=[float(x) for x in res["state_std"]],
        return_scale=cfg.return_scale, target_returns=[float(t) for t in targets],
        context_len=cfg.context_len, max_ep_len=cfg.max_ep_len,
        state_names=list(info.state_names), action_names=list(info.action_names),
        dataset=f"{s.name}-{s.train_level}",
        seeds={"expert": opts.seed, "data": {lv: card["levels"][lv]["seeds"] for lv in LEVELS}, "train": train_seed(opts)},
    )
    out = root / "train"
    save_checkpoint(res["model"], meta, out)
    np.save(out / "losses.npy", np.asarray(res["losses"], np.float32))
    summary = {"config": asdict(cfg), "seconds": round(res["seconds"], 1),
               "final_loss_mean_last_100": float(np.mean(res["losses"][-100:]))}
    (out / "train.json").write_text(json.dumps(summary, indent=2) + "\n")


def stage_model(s: ZooSpec, root: Path, opts: BuildOptions) -> None:
    from surgery.behaviour.checkpoint import load_checkpoint, save_checkpoint
    from surgery.core.threads import torch_threads
    from surgery.zoo.rollout import play

    model, meta = load_checkpoint(root / "train")
    with torch_threads(opts.threads):
        result = play(model, meta, opts.eval_episodes, opts.eval_seed, progress=opts.progress)
    meta.evaluation = {k: v for k, v in result.items()}
    meta.seeds["eval"] = result["seeds"]
    out = root / "model"
    if out.exists():
        shutil.rmtree(out)
    save_checkpoint(model, meta, out)
    write_card(s, root, opts)


def write_card(s: ZooSpec, root: Path, opts: BuildOptions) -> None:
    """(Re)write model/README.md from the recorded files; no numbers are recomputed."""
    out = root / "model"
    meta = DTMetadata.load(out)
    data_card = json.loads((root / "data" / "card.json").read_text())
    expert = json.loads((root / "expert" / "expert.json").read_text())
    train_summary = json.loads((root / "train" / "train.json").read_text())
    (out / "README.md").write_text(cards.model_card(s, meta, data_card, expert, train_summary, command(s, opts),
                                                    zoo_name(s, opts)))


def zoo_name(s: ZooSpec, opts: BuildOptions) -> str:
    """The name the model ships under: the recipe's, with "-seedN" for a twin trained with another seed."""
    return s.name if train_seed(opts) == opts.seed else f"{s.name}-seed{train_seed(opts)}"


def command(s: ZooSpec, opts: BuildOptions) -> str:
    """The command line that reproduces this build."""
    parts = [f"surgery zoo build {s.name}", f"--seed {opts.seed}"]
    if train_seed(opts) != opts.seed:
        parts.append(f"--train-seed {train_seed(opts)}")
    for flag, value in (("--expert-iters", opts.expert_iters), ("--expert-minutes", opts.expert_minutes),
                        ("--episodes", opts.episodes), ("--train-steps", opts.train_steps)):
        if value is not None:
            parts.append(f"{flag} {value}")
    parts.append(f"--eval-episodes {opts.eval_episodes} --eval-seed {opts.eval_seed}")
    if not opts.bf16:
        parts.append("--no-bf16")
    if opts.threads != 1:
        parts.append(f"--threads {opts.threads}")
    return " ".join(parts)
