"""Torch dtypes and devices by the names users type (`--dtype bf16`, `--device cuda:1`), checked."""
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


def parse_device(device) -> torch.device | None:
    """A torch device that exists on this machine, from a device or a string ("cpu", "cuda:1", "mps"); None stays None.

    Checked before anything is loaded: a typo or a CUDA device on a CPU build of torch is one clear error, not a
    traceback from deep inside a copy.
    """
    if device is None:
        return None
    try:
        parsed = device if isinstance(device, torch.device) else torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise SurgeryError(f"device={device!r} is not a device; valid: {_valid_devices()}") from None
    if parsed.type == "meta":
        raise SurgeryError(f"device={device!r} holds no data (shapes only); valid: {_valid_devices()}")
    if parsed.type != "cpu":
        count = _device_count(parsed.type)
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            no_cuda = parsed.type == "cuda" and torch.version.cuda is None
            why = (f"this torch ({torch.__version__}) has no CUDA" if no_cuda
                   else f"{count} {parsed.type} device{'s' * (count != 1)} visible")
            raise SurgeryError(f"device={device!r} is not available: {why}; valid: {_valid_devices()}")
    return parsed


def _device_count(kind: str) -> int:
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind == "mps":
        return int(torch.backends.mps.is_available())
    module = getattr(torch, kind, None)  # xpu and other accelerators torch knows by name
    available = getattr(module, "is_available", None)
    if available is None or not available():
        return 0
    return int(getattr(module, "device_count", lambda: 1)())


def _valid_devices() -> str:
    valid = ["cpu"]
    for kind in ("cuda", "mps", "xpu"):
        n = _device_count(kind)
        if n:
            valid.append(kind if n == 1 and kind != "cuda" else f"{kind}, {kind}:0..{kind}:{n - 1}")
    return ", ".join(valid)
