"""The network stage at equal settings: same scores as stock MONAI, fast channel reductions, bf16 guard."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

from medunet.inference import Predictor
from medunet.inference import predictor as predictor_module
from medunet.inference.predictor import cpu_has_bf16
from medunet.inference.scores import channel_argmax, softmax_channels_
from medunet.plans import Intensity, Plans


def _plans(num_classes: int = 3, patch: int = 16) -> Plans:
    return Plans(
        labels={i: ("background" if i == 0 else f"organ{i}") for i in range(num_classes)},
        target_spacing=(1.0, 1.0, 1.0),
        patch_size=(patch,) * 3,
        intensity=Intensity("ct_window", 0.0, 1.0),
    )


@pytest.mark.parametrize("num_classes", [1, 2, 5])
def test_channel_argmax_equals_torch_argmax_including_ties(num_classes: int) -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (num_classes, 7, 6, 5), generator=g).float()  # many ties
    got = channel_argmax(scores, torch.uint8)
    assert got.dtype == torch.uint8
    assert torch.equal(got, scores.argmax(0).to(torch.uint8))
    assert torch.equal(channel_argmax(scores, torch.int32), scores.argmax(0).to(torch.int32))


def test_softmax_channels_in_place_equals_torch_softmax() -> None:
    scores = torch.randn(4, 6, 5, 3) * 30  # large logits: needs the max shift
    ref = torch.softmax(scores, 0)
    out = softmax_channels_(scores)
    assert out.data_ptr() == scores.data_ptr()
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)


def test_single_network_blends_logits_exactly_like_stock_sliding_window() -> None:
    """Equal settings (overlap 0.5, constant): medunet's probabilities are stock's softmax of blended logits."""
    torch.manual_seed(0)
    net = UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).eval()
    predictor = Predictor(
        net, _plans(), device="cpu", sw_batch_size=2, overlap=0.5, mode="constant", amp=False
    )
    x = torch.rand(1, 1, 30, 27, 20)
    with torch.inference_mode():
        stock = torch.softmax(
            sliding_window_inference(x, (16, 16, 16), 2, net, overlap=0.5, mode="constant"), 1
        )[0]
        ours = torch.cat([p for _, p in predictor._logit_chunks(x)], dim=-1)
    torch.testing.assert_close(ours, stock, atol=1e-6, rtol=1e-5)
    assert predictor._averages_logits


def test_ensemble_still_averages_probabilities() -> None:
    torch.manual_seed(0)
    nets = [UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).eval() for _ in range(2)]
    predictor = Predictor(nets, _plans(), device="cpu", overlap=0.5, mode="constant", amp=False)
    assert not predictor._averages_logits
    x = torch.rand(1, 1, 16, 16, 16)  # one window: the blend is the window itself
    with torch.inference_mode():
        ours = torch.cat([p for _, p in predictor._logit_chunks(x)], dim=-1)
        ref = sum(torch.softmax(n(x), 1) for n in nets)[0] / 2
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    ("flags", "native"),
    [
        ("fpu sse avx avx2 fma", False),  # this CI machine's kind: AVX2 only
        ("avx2 avx512f avx512bw", False),  # AVX-512 without BF16 still emulates bf16
        ("avx2 avx512f avx512_bf16", True),
        ("avx2 amx_tile amx_bf16", True),
    ],
)
def test_cpu_has_bf16_reads_the_flags(flags: str, native: bool) -> None:
    assert cpu_has_bf16(flags) is native


@pytest.mark.parametrize("amp", [None, True])
def test_cpu_bf16_autocast_is_off_without_native_bf16(
    monkeypatch: pytest.MonkeyPatch, amp: bool | None
) -> None:
    monkeypatch.setattr(predictor_module, "cpu_has_bf16", lambda flags=None: False)
    p = Predictor(torch.nn.Conv3d(1, 3, 1), _plans(), device="cpu", amp=amp)
    assert p.amp is False and p.channels_last is False


def test_cpu_bf16_autocast_and_channels_last_where_native(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predictor_module, "cpu_has_bf16", lambda flags=None: True)
    p = Predictor(torch.nn.Conv3d(1, 3, 1), _plans(), device="cpu", amp=None)
    assert p.amp is True and p.channels_last is True
    assert p.net.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not Predictor(torch.nn.Conv3d(1, 3, 1), _plans(), device="cpu", amp=False).amp


class _ConstantNet(torch.nn.Module):
    """The same class probabilities everywhere: logits ``log(probs)``."""

    def __init__(self, probs: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(probs).log())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.view(1, -1, *([1] * (x.ndim - 2))).expand(x.shape[0], -1, *x.shape[2:])


def test_ensemble_averages_probabilities_to_a_class_neither_member_picks() -> None:
    """README / bundle README: several checkpoints are an ensemble, class probabilities averaged.

    Member A says (0.55, 0.05, 0.40), member B (0.05, 0.55, 0.40): A alone labels 0, B alone 1, their
    mean (0.30, 0.30, 0.40) labels 2. Averaging logits instead would give (0.225, 0.225, 0.55)."""
    from medunet.io import Volume

    a, b = _ConstantNet((0.55, 0.05, 0.40)), _ConstantNet((0.05, 0.55, 0.40))
    affine = torch.diag(torch.tensor([-1.0, 1.0, 2.0, 1.0])).numpy()
    volume = Volume(torch.full((20, 18, 10), 0.5).numpy(), affine, source="constant")
    plans = Plans(
        labels={0: "background", 1: "liver", 2: "spleen"},
        target_spacing=(1.0, 1.0, 2.0),
        patch_size=(16, 16, 8),
        intensity=Intensity("ct_window", 0.0, 1.0),
    )

    def run(nets: list[torch.nn.Module]):
        return Predictor(nets, plans, device="cpu", crop_foreground=False, tta_mirror=True).predict(
            volume, return_probabilities=True
        )

    assert set(run([a]).labels.ravel().tolist()) == {0}
    assert set(run([b]).labels.ravel().tolist()) == {1}
    ensemble = run([a, b])
    assert set(ensemble.labels.ravel().tolist()) == {2}
    assert ensemble.labels.shape == volume.shape
    expected = torch.tensor([0.30, 0.30, 0.40]).view(3, 1, 1, 1).expand(3, *volume.shape)
    torch.testing.assert_close(torch.from_numpy(ensemble.probabilities), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("crop", [False, True])
def test_network_input_is_freed_before_the_scores_are_used(
    crop: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peak memory: once the 3D sliding window has produced its scores, the network-grid input is gone
    before the scores are used (softmax, the full-grid probability volume, the way back to the source
    grid). Before, the predict loop and its chunk generators held it until the loop ended, at the
    peak-RSS moment of a whole-volume prediction."""
    import weakref

    import numpy as np

    from medunet.io.volume import Volume

    torch.manual_seed(0)
    net = UNet(3, 1, 3, (4, 8), (2,), num_res_units=1).eval()
    predictor = Predictor(net, _plans(), device="cpu", sw_batch_size=2, crop_foreground=crop)
    inputs: list[weakref.ref] = []
    sliding = predictor._sliding

    def remember(x: torch.Tensor) -> torch.Tensor:
        inputs.append(weakref.ref(x))
        return sliding(x)

    alive_when_used: list[bool] = []
    softmax = predictor_module.softmax_channels_

    def check(scores: torch.Tensor) -> torch.Tensor:
        alive_when_used.append(any(ref() is not None for ref in inputs))
        return softmax(scores)

    monkeypatch.setattr(predictor, "_sliding", remember)
    monkeypatch.setattr(predictor_module, "softmax_channels_", check)
    image = np.full((48, 44, 40), -1000.0, np.float32)
    image[20:30, 18:26, 16:24] = 40.0  # a body in air, more than the 8-voxel margin from every side
    pred = predictor.predict(Volume(image, np.eye(4)))
    assert pred.labels.shape == (48, 44, 40)
    assert inputs and alive_when_used == [False]
    assert (pred.network_box is not None) == crop
