"""Compute precision: where bf16 autocast pays, and the one way training, validation and inference enter it.

On CUDA, autocast is bf16 where the GPU has it (float16 overflowed instance-norm statistics of 3D
patches), else float16. On a CPU it is bf16 only where the CPU computes bf16 natively
(``avx512_bf16`` or ``amx_bf16``): there a training step of the 3D U-Net ran 1.9x faster and the 2D one
1.4x (2-core AMD EPYC with AVX-512 BF16, 2026-12-07, ``benchmarks/bench_training.py``); without them
oneDNN converts to fp32 around every op and bf16 was 65x slower (AVX2-only EPYC, 2026-11-29).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn


def cpu_has_bf16(flags: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively (``avx512_bf16`` or ``amx_bf16`` in ``/proc/cpuinfo``).

    ``flags``: a cpuinfo ``flags`` line to test instead of this machine's.
    """
    if flags is None:
        try:
            text = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        flags = next((ln.split(":", 1)[1] for ln in text.splitlines() if ln.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bf16, except float16 on a GPU without bf16."""
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def autocast_pays(device: torch.device) -> bool:
    """Whether mixed precision is worth turning on for ``device`` (any CUDA GPU; a CPU with native bf16)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16())


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` for ``device`` in :func:`autocast_dtype`, or a no-op when not ``enabled``."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=autocast_dtype(device))


class CpuAutocast(nn.Module):
    """Runs ``module``'s forward under CPU bf16 autocast and returns float32 outputs.

    MONAI's ``SupervisedTrainer`` only autocasts on CUDA (``torch.autocast("cuda")`` with a CUDA grad
    scaler), so on a CPU the network carries its own autocast. Weights, optimiser state and the loss
    stay float32 (autocast casts per op; bf16 has float32's range, so no loss scaling is needed).
    The wrapped module's parameters are the ones trained: optimisers and checkpoints built on
    ``module`` see the same tensors.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: object, **kwargs: object) -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out.float()
        if isinstance(out, list | tuple):  # deep supervision heads
            return type(out)(o.float() if isinstance(o, torch.Tensor) else o for o in out)
        return out


__all__ = ["CpuAutocast", "autocast", "autocast_dtype", "autocast_pays", "cpu_has_bf16"]
