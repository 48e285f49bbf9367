"""Network registry: every network builds, runs, trains and reloads in every supported dim."""

from __future__ import annotations

import json
from typing import get_args

import pytest
import torch

from medunet.cli import main as cli_main
from medunet.errors import ConfigError
from medunet.networks import (
    NETWORKS,
    NetworkName,
    build_network,
    dynunet_kernels_strides,
    network_names,
    patch_divisor,
    resolve_network_kwargs,
    valid_patch_size,
)

CASES = [(name, dims) for name, spec in NETWORKS.items() for dims in spec.spatial_dims]


def _input(name: str, dims: int) -> torch.Tensor:
    """Smallest cheap input each tiny network accepts in training mode."""
    if dims == 2:
        return torch.randn(2, 1, 64, 64)
    if name == "swinunetr":  # edges multiple of 32; a 2x1x1 bottleneck keeps instance norm happy
        return torch.randn(1, 1, 64, 32, 32)
    return torch.randn(2, 1, 32, 32, 32)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_registry_lists_expected_networks() -> None:
    assert network_names()[0] == "unet"
    assert network_names() == list(get_args(NetworkName))  # the Literal type and the registry agree
    for spec in NETWORKS.values():
        assert set(spec.spatial_dims) == {2, 3}
        assert set(spec.size_presets) == {"tiny", "small", "base"}
        assert patch_divisor(spec.name, 3) == (spec.divisor,) * 3


@pytest.mark.parametrize(("name", "dims"), CASES)
def test_forward_backward_and_state_dict_round_trip(name: str, dims: int) -> None:
    net = build_network(name, dims, 1, 3, size="tiny")
    x = _input(name, dims)
    expected = (x.shape[0], 3, *x.shape[2:])

    # train mode: one tensor of logits (deep supervision: stacked heads, the logits first), and one
    # SGD step moves the first layer's weights
    net.train()
    out = net(x)
    assert isinstance(out, torch.Tensor)
    if NETWORKS[name].default_kwargs.get("deep_supervision"):
        assert out.shape[:2] == (x.shape[0], 3)
        out = out[:, 0]
    assert tuple(out.shape) == expected
    first = next(p for p in net.parameters() if p.requires_grad)
    before = first.detach().clone()
    target = torch.randint(0, 3, (x.shape[0], *x.shape[2:]))
    torch.nn.functional.cross_entropy(out, target).backward()
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert not torch.equal(first.detach(), before)

    # eval mode: same contract; a rebuild from JSON-stored resolved kwargs reloads identically
    net.eval()
    with torch.no_grad():
        ref = net(x)
    assert tuple(ref.shape) == expected
    stored = json.loads(json.dumps(resolve_network_kwargs(name, dims, size="tiny")))
    torch.manual_seed(123)
    clone = build_network(name, dims, 1, 3, **stored)
    clone.load_state_dict(net.state_dict())
    clone.eval()
    with torch.no_grad():
        again = clone(x)
    torch.testing.assert_close(again, ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", network_names())
def test_unsupported_dims_raise_config_error(name: str) -> None:
    for dims in (1, 4):
        with pytest.raises(ConfigError, match="supports 2D or 3D"):
            build_network(name, dims, 1, 2)


def test_bad_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="valid: unet, dynunet"):
        build_network("vnet", 3, 1, 2)
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        build_network("unet", 3, 1, 2, size="huge")
    with pytest.raises(ConfigError, match="cannot build network 'unet'"):
        build_network("unet", 3, 1, 2, size="tiny", no_such_option=1)
    with pytest.raises(ConfigError, match="pretrained=True"):
        build_network("flexible_unet", 2, 1, 2, pretrained=True)
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_network("flexible_unet", 2, 1, 2, backbone="vgg16")
    with pytest.raises(ConfigError, match="img_size"):
        build_network("swinunetr", 3, 1, 2, img_size=(96, 96, 96))
    with pytest.raises(ConfigError, match="deep_supervision"):
        build_network("unetpp", 2, 1, 2, size="tiny", deep_supervision=True)
    with pytest.raises(ConfigError, match="in_channels"):
        build_network("unet", 3, 0, 2)


def test_size_presets_scale_parameter_count() -> None:
    counts = [
        sum(p.numel() for p in build_network("unet", 2, 1, 2, size=s).parameters())
        for s in NETWORKS["unet"].size_presets
    ]
    assert counts == sorted(counts) and counts[0] < counts[-1] / 10


def test_valid_patch_size_rounds_to_divisor() -> None:
    assert valid_patch_size("unet", (100, 100, 30)) == (96, 96, 32)
    assert valid_patch_size("unet", (100, 100, 30), rounding="up") == (112, 112, 32)
    assert valid_patch_size("unet", (100, 100, 30), rounding="down") == (96, 96, 16)
    assert valid_patch_size("unet", (5, 5)) == (16, 16)  # never below one divisor
    assert valid_patch_size("unet", (96, 96, 96)) == (96, 96, 96)
    assert valid_patch_size("unet", (40, 40), strides=(2, 2)) == (40, 40)  # divisor follows strides
    assert valid_patch_size("swinunetr", (100, 20)) == (96, 64)  # multiple of 32, at least 64
    assert valid_patch_size("flexible_unet", (70, 70, 70)) == (64, 64, 64)
    with pytest.raises(ConfigError):
        valid_patch_size("unet", (96, 96, 96, 96))
    with pytest.raises(ConfigError):
        valid_patch_size("unet", (0, 96))


def test_valid_patch_size_dynunet_agrees_with_its_own_plan() -> None:
    spacing = (0.8, 0.8, 4.0)
    patch = valid_patch_size("dynunet", (100, 100, 30), spacing=spacing)
    divisor = patch_divisor("dynunet", 3, patch_size=patch, spacing=spacing)
    assert all(p % d == 0 for p, d in zip(patch, divisor, strict=True))
    assert divisor[0] > divisor[2]  # fewer downsamplings along the thick-slice axis
    assert patch == (96, 96, 32)


def test_dynunet_kernels_strides_anisotropic_pools_in_plane_first() -> None:
    kernels, strides = dynunet_kernels_strides((128, 128, 32), (0.8, 0.8, 4.0))
    assert strides[0] == [1, 1, 1]
    assert strides[1] == [2, 2, 1] and strides[2] == [2, 2, 1]  # 0.8/4.0 mm: in-plane only at first
    assert strides[3] == [2, 2, 2]  # 3.2/4.0 mm: nearly isotropic now
    assert kernels[0] == [3, 3, 1] and kernels[-1] == [3, 3, 3]
    assert len(kernels) == len(strides) == 6


def test_dynunet_kernels_strides_isotropic_and_small_axes() -> None:
    kernels, strides = dynunet_kernels_strides((64, 64, 64), (1.0, 1.0, 1.0))
    assert strides == [[1, 1, 1]] + [[2, 2, 2]] * 4  # stops at 4 voxels
    assert all(k == [3, 3, 3] for k in kernels)
    _, strides2d = dynunet_kernels_strides((256, 32), (1.0, 1.0))
    assert [s[1] for s in strides2d] == [1, 2, 2, 2, 1, 1]  # 32 -> 4 voxels, then stops
    with pytest.raises(ConfigError):
        dynunet_kernels_strides((64, 64, 64), (1.0, 1.0))


def test_dynunet_planned_from_anisotropic_patch_runs() -> None:
    patch = valid_patch_size("dynunet", (64, 64, 16), spacing=(0.8, 0.8, 3.0))
    net = build_network("dynunet", 3, 2, 4, size="tiny", patch_size=patch, spacing=(0.8, 0.8, 3.0))
    assert net.strides[1] == [2, 2, 1]
    x = torch.randn(1, 2, *patch)
    with torch.no_grad():
        assert tuple(net.eval()(x).shape) == (1, 4, *patch)


def test_cli_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["networks", "--json", "--losses"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in data["networks"]] == network_names()
    assert [r["name"] for r in data["losses"]][0] == "dicece"
    assert cli_main(["networks"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in network_names()) and "2D/3D" in text


@pytest.mark.parametrize("dims", [3, 2])
def test_resunet_returns_every_supervised_head_while_training_and_one_output_in_eval(dims: int) -> None:
    """Deep supervision: training mode stacks the full-resolution logits and 2 deeper heads (upsampled
    to the patch); eval mode (validation, prediction, export) returns the logits alone."""
    patch = valid_patch_size("resunet", (64, 64, 32)[:dims], spacing=(0.8, 0.8, 2.0)[:dims])
    net = build_network("resunet", dims, 1, 4, size="tiny", patch_size=patch, spacing=(0.8, 0.8, 2.0)[:dims])
    assert any("res" in type(m).__name__.lower() for m in net.modules())  # residual blocks
    x = torch.rand(2, 1, *patch)
    net.train()
    assert net(x).shape == (2, 3, 4, *patch)
    net.eval()
    with torch.no_grad():
        assert net(x).shape == (2, 4, *patch)
    flat = build_network("resunet", dims, 1, 4, size="tiny", deep_supervision=False)
    flat.train()
    assert flat(torch.rand(1, 1, *(32,) * dims)).shape == (1, 4, *(32,) * dims)


def test_resunet_plans_say_deep_supervision() -> None:
    from medunet.plans import Plans

    kwargs = resolve_network_kwargs("resunet", 3, size="tiny", patch_size=(32, 32, 32), spacing=(1, 1, 1))
    plans = Plans(
        labels={0: "background", 1: "a"},
        target_spacing=(1, 1, 1),
        patch_size=(32, 32, 32),
        network="resunet",
        network_kwargs=kwargs,
    )
    assert plans.deep_supervision and kwargs["deep_supr_num"] == 2
    assert not Plans(
        labels={0: "background", 1: "a"}, target_spacing=(1, 1, 1), patch_size=(32, 32, 32)
    ).deep_supervision
