"""A decision transformer wired by hand to balance CartPole: a working policy without training.

The state embedding writes +-(w . s) into residual dimensions 0 and 1; block 0's MLP reads them
(K) and writes relu(+) and relu(-) into dimensions 2 and 3 (V, singular values 2 and 1); the
action head reads 2 - 3. So the policy is `push right iff w . s > 0`, which keeps the pole up
for the whole 500 steps, and it flows through block 0's K and V: destroying K makes it fall
within a few dozen steps, and V's two write-side vectors are the ones aligned with the action
output embedding. Everything else is a small random initialisation.
"""
from __future__ import annotations

import torch

from surgery.behaviour.metadata import DTMetadata

GAINS = (0.0, 0.2, 1.0, 0.5)
"""w: a linear controller on (x, x_dot, theta, theta_dot) that balances CartPole-v1 for 500 steps."""


def cartpole_dt(seed: int = 0, d_model: int = 64, n_layer: int = 2, context_len: int = 5):
    """(DecisionTransformerModel, DTMetadata) of the hand-wired CartPole balancer."""
    from transformers import DecisionTransformerConfig, DecisionTransformerModel

    config = DecisionTransformerConfig(
        state_dim=4, act_dim=2, hidden_size=d_model, n_layer=n_layer, n_head=1, n_inner=2 * d_model,
        max_ep_len=500, action_tanh=False, bos_token_id=None, eos_token_id=None,
    )
    torch.manual_seed(seed)
    model = DecisionTransformerModel(config).eval()
    with torch.no_grad():
        model.encoder.wpe.weight.zero_()
        model.embed_timestep.weight.zero_()
        model.embed_state.weight.zero_(), model.embed_state.bias.zero_()
        w = torch.tensor(GAINS)
        model.embed_state.weight[0] = 10 * w
        model.embed_state.weight[1] = -10 * w
        mlp = model.encoder.h[0].mlp
        mlp.c_fc.weight[:2, :2] = 0
        mlp.c_fc.weight[0, 0] = mlp.c_fc.weight[1, 1] = 1.0
        mlp.c_fc.bias.zero_()
        mlp.c_proj.weight[:2] = 0
        mlp.c_proj.weight[0, 2], mlp.c_proj.weight[1, 3] = 2.0, 1.0
        mlp.c_proj.bias.zero_()
        head = model.predict_action[0]
        head.weight.zero_(), head.bias.zero_()
        head.weight[1, 2], head.weight[1, 3] = 1.0, -1.0
        head.weight[0, 2], head.weight[0, 3] = -1.0, 1.0
    metadata = DTMetadata(
        env_id="CartPole-v1", state_dim=4, act_dim=2, discrete=True, state_mean=[0.0] * 4, state_std=[1.0] * 4,
        return_scale=100.0, target_returns=[500.0], context_len=context_len, max_ep_len=500,
        state_names=["x", "x_dot", "theta", "theta_dot"], action_names=["left", "right"],
        notes="hand-wired CartPole balancer for tests (tests/experiments_models.py)",
    ).validate()
    return model, metadata
