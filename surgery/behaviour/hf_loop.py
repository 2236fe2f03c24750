"""The per-episode loop a user would write from Hugging Face's decision-transformer example.

It is the independent reference for the batched evaluation (tests compare actions with it)
and the baseline of the throughput benchmark: one episode at a time, one full-context HF
forward per environment step, left-padded to the context length with an attention mask.
"""
from __future__ import annotations

import numpy as np
import torch

from surgery.behaviour.metadata import DTMetadata

__all__ = ["hf_get_action", "hf_episode", "untrained_dt"]


def hf_get_action(model, states, actions, returns_to_go, timesteps, context_len: int) -> torch.Tensor:
    """The HF example's get_action: the model output at the last state token (tanh'd or logits)."""
    state_dim, act_dim = model.config.state_dim, model.config.act_dim
    states = states.reshape(1, -1, state_dim)[:, -context_len:]
    actions = actions.reshape(1, -1, act_dim)[:, -context_len:]
    returns_to_go = returns_to_go.reshape(1, -1, 1)[:, -context_len:]
    timesteps = timesteps.reshape(1, -1)[:, -context_len:]
    pad = context_len - states.shape[1]
    # Left padding with zeros, masked out: the example's way to feed a fixed-size window.
    attention_mask = torch.cat([torch.zeros(pad), torch.ones(states.shape[1])]).to(torch.long).reshape(1, -1)
    states = torch.cat([torch.zeros(1, pad, state_dim, dtype=states.dtype), states], dim=1)
    actions = torch.cat([torch.zeros(1, pad, act_dim, dtype=actions.dtype), actions], dim=1)
    returns_to_go = torch.cat([torch.zeros(1, pad, 1, dtype=returns_to_go.dtype), returns_to_go], dim=1)
    timesteps = torch.cat([torch.zeros(1, pad, dtype=torch.long), timesteps], dim=1)
    with torch.no_grad():
        _, action_preds, _ = model(
            states=states, actions=actions, rewards=None, returns_to_go=returns_to_go,
            timesteps=timesteps, attention_mask=attention_mask, return_dict=False,
        )
    return action_preds[0, -1]


def hf_episode(model, metadata: DTMetadata, env, seed: int, target_return: float,
               max_steps: int | None = None, record: bool = False) -> dict:
    """Play one episode as the HF example does; return its return and length (and history if record)."""
    dtype = next(model.parameters()).dtype
    sd, ad = metadata.state_dim, metadata.act_dim
    mean = torch.as_tensor(metadata.state_mean or np.zeros(sd), dtype=dtype)
    std = torch.as_tensor(metadata.state_std or np.ones(sd), dtype=dtype)
    obs, _ = env.reset(seed=seed)
    states = torch.as_tensor(obs, dtype=dtype).reshape(1, sd)
    actions = torch.zeros((0, ad), dtype=dtype)
    rtg = torch.tensor([[target_return / metadata.return_scale]], dtype=dtype)
    timesteps = torch.zeros((1, 1), dtype=torch.long)
    outputs, ret, length, terminated = [], 0.0, 0, False
    limit = max_steps or env.spec.max_episode_steps or metadata.max_ep_len
    for t in range(limit):
        actions = torch.cat([actions, torch.zeros((1, ad), dtype=dtype)], dim=0)
        out = hf_get_action(model, (states - mean) / std, actions, rtg, timesteps, metadata.context_len)
        outputs.append(out.clone())
        if metadata.discrete:
            a = int(out.argmax())
            actions[-1] = torch.nn.functional.one_hot(torch.tensor(a), ad).to(dtype)
            env_action = a
        else:
            actions[-1] = out
            env_action = out.numpy()
        obs, reward, terminated, truncated, _ = env.step(env_action)
        states = torch.cat([states, torch.as_tensor(obs, dtype=dtype).reshape(1, sd)], dim=0)
        rtg = torch.cat([rtg, (rtg[0, -1] - reward / metadata.return_scale).reshape(1, 1)], dim=1)
        timesteps = torch.cat([timesteps, torch.full((1, 1), min(t + 1, metadata.max_ep_len - 1))], dim=1)
        ret += float(reward)
        length += 1
        if terminated or truncated:
            break
    result = {"return": ret, "length": length, "terminated": bool(terminated)}
    if record:
        result.update(states=states, actions=actions, returns_to_go=rtg, timesteps=timesteps,
                      outputs=torch.stack(outputs))
    return result


_TARGETS = {"Hopper": 3600.0, "HalfCheetah": 12000.0, "LunarLander": 250.0}


def untrained_dt(env_id: str, seed: int = 0, target_return: float | None = None):
    """A freshly initialised (untrained) DT of the study's shape and a DTMetadata for env_id."""
    import gymnasium as gym
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    from surgery.behaviour.envs import env_info

    env = gym.make(env_id)
    discrete = hasattr(env.action_space, "n")
    state_dim = env.observation_space.shape[0]
    act_dim = int(env.action_space.n) if discrete else env.action_space.shape[0]
    env.close()
    config = DecisionTransformerConfig(
        state_dim=state_dim, act_dim=act_dim, hidden_size=128, n_layer=3, n_head=1,
        max_ep_len=1000, action_tanh=not discrete, bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = DecisionTransformerModel(config).eval()
    rng = np.random.default_rng(seed)
    info = env_info(env_id)
    metadata = DTMetadata(
        env_id=env_id, state_dim=state_dim, act_dim=act_dim, discrete=discrete,
        state_mean=rng.normal(0, 0.1, state_dim).tolist(),
        state_std=rng.uniform(0.5, 2.0, state_dim).tolist(),
        return_scale=100.0 if discrete else 1000.0,
        target_returns=[target_return or _TARGETS.get(env_id.split("-")[0], 1000.0)], context_len=20, max_ep_len=1000,
        state_names=list(info.state_names) if info else [],
        action_names=list(info.action_names) if info else [],
        notes="untrained: random initialisation, for tests and benchmarks",
    ).validate()
    return model, metadata
