"""Adapters map each architecture onto one interface: dimensions, `[d_in, d_out]` weight views, embeddings, hooks."""
# Built-in adapters register themselves on import.
from adapters import decision_transformer, gpt2, gptj, transformer_lens  # noqa: E402,F401
from adapters.base import BLOCK_HOOKS, WEIGHTS, Adapter, EmbeddingSet
from adapters.registry import register, supported, wrap

__all__ = ["Adapter", "EmbeddingSet", "BLOCK_HOOKS", "WEIGHTS", "register", "supported", "wrap"]
