"""torch's CPU thread count for one block of work, put back afterwards.

Results are bitwise reproducible for a given thread count, not across counts (a matrix product is
split differently), so library code never leaves the process with another count than it found.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

__all__ = ["torch_threads"]


@contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch CPU threads (None: as they are); restore the previous count on exit."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
