"""Behaviour: decision transformers played in their environments, batched, with stored, resumable results."""
