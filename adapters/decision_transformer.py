"""Hugging Face `DecisionTransformerModel`: a GPT-2 encoder over interleaved (return, state, action) tokens."""
from __future__ import annotations

from adapters.base import EmbeddingSet, numbered
from adapters.gpt2 import GPT2Blocks
from adapters.registry import register


@register
class DecisionTransformerAdapter(GPT2Blocks):
    """Decision transformer; embedding sets are the input projections and the prediction heads.

    Input sets are the columns of the `nn.Linear` input projections (the vector each state or
    action dimension adds to the residual stream per unit) and the timestep table; output sets
    are the rows of the prediction heads (the direction each output reads from the residual stream).
    """

    model_classes = ("DecisionTransformerModel",)

    def __init__(self, model):
        super().__init__(model)
        c = model.config
        self._declare(c.n_layer, c.n_head, c.hidden_size, c.n_inner)
        self.state_dim = c.state_dim
        self.act_dim = c.act_dim

    def blocks(self):
        return self.model.encoder.h

    def _names(self, field: str, prefix: str, n: int) -> list[str]:
        names = list(getattr(self.metadata, field, None) or [])
        return names if len(names) == n else numbered(prefix, n)

    def embedding_sets(self):
        m = self.model
        states = self._names("state_names", "s", self.state_dim)
        actions = self._names("action_names", "a", self.act_dim)
        # nn.Linear stores [out, in]: the embedding of input dimension j is column j, i.e. row j of W.T.
        table = {
            "state_in": (m.embed_state.weight.T, states, "in"),
            "action_in": (m.embed_action.weight.T, actions, "in"),
            "return_in": (m.embed_return.weight.T, ["return"], "in"),
            "time_in": (m.embed_timestep.weight, [f"t={t}" for t in range(m.embed_timestep.num_embeddings)], "in"),
            "state_out": (m.predict_state.weight, states, "out"),
            "action_out": (m.predict_action[0].weight, actions, "out"),
            "return_out": (m.predict_return.weight, ["return"], "out"),
        }
        return {name: EmbeddingSet(name, w.detach(), labels, side) for name, (w, labels, side) in table.items()}

    def hook_root(self):
        # "embed" is the residual stream entering block 0: the layer-normed (R, s, a) token
        # sequence plus the encoder's position-0 embedding, as for every architecture.
        return self.model.encoder
