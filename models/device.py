"""Where tensors live and in which precision: CPU by default, CUDA with autocast when present."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error, not a silent fallback. A
    ``torch.device`` passes through the same check, so models take either spelling."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but torch sees no CUDA GPU; use --device cpu or auto")
    return device


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """Mixed precision on GPU (bf16 where supported, else fp16); full fp32 on CPU unless asked."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str = "auto") -> AbstractContextManager:
    dtype = autocast_dtype(device, precision)
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
