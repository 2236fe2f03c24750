"""Torch dtypes by the names users type (`--dtype bf16`)."""
from __future__ import annotations

import torch

from surgery.errors import SurgeryError
from surgery.names import DTYPE_NAMES

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float32, torch.float16, torch.float16,
                                torch.bfloat16, torch.bfloat16)))


def parse_dtype(dtype) -> torch.dtype | None:
    """A torch dtype from a dtype or one of DTYPE_NAMES (None stays None: the checkpoint's own)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise SurgeryError(f"dtype={dtype!r} is not known; valid: {', '.join(DTYPES)}")
    return DTYPES[dtype]
