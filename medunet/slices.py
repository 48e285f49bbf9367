"""2D networks on volumes: axial slices, optionally with their neighbours stacked as channels (2.5D).

A 2D network with ``context_slices = c`` segments slice ``z`` from the ``2c + 1`` slices
``z - c .. z + c``. Training (``medunet.transforms.SliceStackd``), validation
(:class:`SliceStackInferer`) and the Predictor build the stack with the same channel order --
image channel major, slice offset minor -- so a model sees the same input in all three. Beyond the
ends of the volume the edge slice is repeated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer, sliding_window_inference

#: Axial slices per batched sliding-window call (memory stays at a few slices' worth of windows).
SLICES_PER_CALL = 16


def axial_stacks(volume: torch.Tensor, start: int, stop: int, context: int) -> torch.Tensor:
    """``(C, X, Y, Z)`` -> ``(stop - start, C * (2 * context + 1), X, Y)``: slices ``start..stop-1``,
    each with ``context`` neighbours on either side as extra channels (edge slices repeated)."""
    if context == 0:
        return volume[..., start:stop].permute(3, 0, 1, 2)
    channels, nx, ny, depth = volume.shape
    k = 2 * context + 1
    z = torch.arange(start, stop, device=volume.device)[:, None] + torch.arange(
        -context, context + 1, device=volume.device
    )
    stacks = volume[..., z.clamp_(0, depth - 1).reshape(-1)]  # (C, X, Y, n * k)
    n = stop - start
    return stacks.reshape(channels, nx, ny, n, k).permute(3, 0, 4, 1, 2).reshape(n, channels * k, nx, ny)


def stack_patch(patch: torch.Tensor) -> torch.Tensor:
    """A training crop ``(C, X, Y, k)`` -> ``(C * k, X, Y)`` in :func:`axial_stacks`' channel order."""
    channels, nx, ny, k = patch.shape
    return patch.permute(0, 3, 1, 2).reshape(channels * k, nx, ny)


class SliceStackInferer(Inferer):
    """Sliding windows of a 2D network over every axial slice (with its context) of ``(B, C, X, Y, Z)``.

    Returns ``(B, K, X, Y, Z)`` scores, like MONAI's ``SliceInferer``, which it replaces so that
    validation builds the 2.5D stack exactly as inference does.
    """

    def __init__(
        self,
        roi_size: tuple[int, ...],
        context: int = 0,
        sw_batch_size: int = 32,
        overlap: float = 0.5,
        mode: str = "gaussian",
    ) -> None:
        super().__init__()
        self.roi_size = tuple(roi_size)
        self.context = int(context)
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        batch, _, _, _, depth = inputs.shape
        out: torch.Tensor | None = None
        for b in range(batch):
            for start in range(0, depth, SLICES_PER_CALL):
                stop = min(depth, start + SLICES_PER_CALL)
                scores = sliding_window_inference(
                    axial_stacks(inputs[b], start, stop, self.context).contiguous(),
                    roi_size=list(self.roi_size),
                    sw_batch_size=self.sw_batch_size,
                    predictor=network,
                    overlap=self.overlap,
                    mode=self.mode,
                )
                if isinstance(scores, list | tuple):  # deep supervision heads: first is full resolution
                    scores = scores[0]
                assert isinstance(scores, torch.Tensor)
                if out is None:
                    out = scores.new_zeros((batch, scores.shape[1], *inputs.shape[2:]))
                out[b, ..., start:stop] = scores.permute(1, 2, 3, 0)
        assert out is not None
        return out


__all__ = ["SLICES_PER_CALL", "SliceStackInferer", "axial_stacks", "stack_patch"]
