"""Markdown cards: the dataset card and the model card (README.md shipped with each checkpoint)."""
from __future__ import annotations

from surgery.behaviour.metadata import DTMetadata


def dataset_card_md(name: str, card: dict) -> str:
    """A Markdown table of a build's dataset levels."""
    lines = [f"# Datasets: {name} ({card['env_id']})", "",
             "| level | episodes | steps | return mean | std | min | max | behaviour policy | reset seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [dataset_row(level, c) for level, c in card["levels"].items()]
    return "\n".join(lines) + "\n"


def dataset_row(level: str, c: dict) -> str:
    return (f"| {level} | {c['episodes']} | {c['steps']} | {c['return_mean']:.1f} | {c['return_std']:.1f} "
            f"| {c['return_min']:.1f} | {c['return_max']:.1f} | {c['policy']} | {c['seeds']} |")


def model_card(spec, meta: DTMetadata, data_card: dict, expert: dict, train: dict, command: str,
               name: str | None = None) -> str:
    """README.md of a zoo checkpoint: how it was made and how well it plays, from measured numbers only."""
    ev, cfg = meta.evaluation, train["config"]
    score = "" if ev.get("normalized_score") is None else f", D4RL-normalised score **{ev['normalized_score']:.1f}**"
    best = data_card["levels"]["expert"]
    expert_line = expert["method"]
    if "best_eval_return" in expert:
        n = expert["config"].get("select_episodes", 3)
        expert_line += (f"; {expert['iters_done']} iterations in {expert['seconds']:.0f} s; the expert is the snapshot "
                        f"of iteration {expert.get('best_iteration', '?')}, mean return {expert['best_eval_return']:.1f} "
                        f"over {n} evaluation episodes")
    return "\n".join([
        f"# {name or spec.name}: decision transformer for {meta.env_id}",
        "",
        f"A Hugging Face `DecisionTransformerModel` (hidden {cfg['hidden_size']}, {cfg['n_layer']} layers, "
        f"{cfg['n_head']} head, MLP {cfg['n_inner']} {cfg['activation']}, context {meta.context_len}, "
        f"max episode length {meta.max_ep_len}; {'one-hot actions in, logits out' if meta.discrete else 'tanh actions'}) "
        f"trained here from scratch on data generated here. Load it with `surgery.load(\"{name or spec.name}\")` "
        "(safetensors; no pickle).",
        "",
        "## How well it plays",
        "",
        f"Measured with `surgery evaluate` over {ev['episodes']} episodes ({ev['seeds']}), conditioned on return "
        f"{ev['target_return']:.0f}: mean return **{ev['return_mean']:.1f}** (std {ev['return_std']:.1f}, "
        f"min {ev['return_min']:.1f}, max {ev['return_max']:.1f}, mean length {ev['length_mean']:.0f}){score}.",
        f"Best behaviour policy in the data (expert level): mean return {best['return_mean']:.1f} over "
        f"{best['episodes']} episodes, so the model reaches {100 * ev['return_mean'] / best['return_mean']:.1f}% of it.",
        "Protocol: all episodes side by side, the model sees the last "
        f"{meta.context_len} steps, returns-to-go start at the target and drop by each reward; "
        f"{'the action is the argmax of the logits' if meta.discrete else 'the action is the tanh output, no sampling'}.",
        "",
        "## How it was made",
        "",
        f"- Expert: {expert_line}.",
        f"- Data: levels below; the model is trained on `{meta.dataset}`.",
        f"- Training: {cfg['steps']} AdamW steps, batch {cfg['batch_size']}, lr {cfg['lr']} "
        f"(linear warm-up {cfg['warmup_steps']} steps, then cosine to {cfg['lr'] * cfg.get('final_lr_ratio', 1.0):.2g}), weight decay {cfg['weight_decay']}, dropout {cfg['dropout']}, "
        f"grad clip {cfg['grad_clip']}, {'bfloat16 autocast' if cfg['bf16'] else 'float32'}, seed {cfg['seed']}; "
        f"{train['seconds']:.0f} s on the CPU; final loss {train['final_loss_mean_last_100']:.4f} "
        f"({'cross-entropy' if meta.discrete else 'action MSE'}, mean of the last 100 steps).",
        f"- States normalised with the training data's mean/std; returns-to-go divided by {meta.return_scale:g}. "
        f"Target returns {meta.target_returns} (the first is the default).",
        f"- Reproduce: `{command}`",
        "",
        dataset_card_md(spec.name, data_card).replace("# Datasets", "### Datasets"),
    ])
