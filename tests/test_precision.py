"""Mixed precision: bf16 autocast only where it pays, and a CPU training network that really runs in bf16
while its weights, gradients and outputs stay float32."""

from __future__ import annotations

import pytest
import torch

from medunet.precision import CpuAutocast, autocast, autocast_pays, cpu_has_bf16


class _Probe(torch.nn.Module):
    """A conv whose forward records the dtype it computed in; optionally two outputs (deep supervision)."""

    def __init__(self, heads: int = 1) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 3, padding=1)
        self.heads = heads
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y if self.heads == 1 else (y, y[:, :, ::2, ::2, ::2])


def test_cpu_autocast_computes_in_bf16_and_trains_float32_weights() -> None:
    torch.manual_seed(0)
    probe = _Probe()
    net = CpuAutocast(probe)
    assert list(net.parameters()) == list(probe.parameters())  # an optimiser on either trains both
    x = torch.rand(2, 1, 6, 6, 6)
    out = net(x)
    assert probe.seen == [torch.bfloat16]  # the convolution ran in bf16
    assert out.dtype == torch.float32  # the loss sees float32
    reference = probe.conv(x)  # plain fp32 forward
    assert torch.allclose(out, reference, atol=0.05, rtol=0.02) and not torch.equal(out, reference)
    out.square().mean().backward()
    assert probe.conv.weight.grad is not None and probe.conv.weight.grad.dtype == torch.float32
    assert probe.conv.weight.dtype == torch.float32


def test_cpu_autocast_keeps_every_deep_supervision_head_float32() -> None:
    out = CpuAutocast(_Probe(heads=2))(torch.rand(1, 1, 4, 4, 4))
    assert isinstance(out, tuple) and [o.dtype for o in out] == [torch.float32, torch.float32]
    assert out[1].shape == (1, 2, 2, 2, 2)


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
        ("fpu avx2 avx512f", False),
    ],
)
def test_autocast_pays_on_a_gpu_or_a_cpu_with_native_bf16(flags: str, native: bool, monkeypatch) -> None:
    import medunet.precision as precision

    assert cpu_has_bf16(flags) is native
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda f=None: native)
    assert autocast_pays(torch.device("cpu")) is native
    assert autocast_pays(torch.device("cuda")) is True
    with autocast(torch.device("cpu"), enabled=False):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
