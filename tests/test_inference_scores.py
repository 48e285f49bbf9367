"""Class scores: anatomy-respecting mirror TTA and probabilities resampled to the source grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medunet.inference import Predictor, plan_grid
from medunet.inference.geometry import from_ras, resample_to_ras
from medunet.inference.scores import labels_from_probabilities, mirror_channel_order, mirror_dims
from medunet.io import Volume
from medunet.plans import Intensity, Plans

LR_LABELS = {0: "background", 1: "left_kidney", 2: "right_kidney", 3: "spine"}


class RampSideNet(torch.nn.Module):
    """Known answer that is left/right *asymmetric*: it reads laterality from the image content.

    Where intensity rises along RAS axis 0 it says ``left_kidney``, where it falls ``right_kidney``,
    on a bright plateau ``spine``, elsewhere background. It uses a central difference, so a
    mirrored input gives exactly the mirrored answer with left and right exchanged -- which is what
    a correct TTA must undo (flip back *and* swap the pair). Averaging without the swap mixes the
    two kidneys; flipping axes the model never saw mirrored is irrelevant to this net.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = [0] * (2 * (x.ndim - 3)) + [1, 1]
        xp = torch.nn.functional.pad(x, pad, mode="replicate") if x.ndim == 5 else None
        if x.ndim == 5:
            g = (xp[:, :, 2:] - xp[:, :, :-2]) / 2  # type: ignore[index]
        else:
            xq = torch.nn.functional.pad(x, [0, 0, 1, 1], mode="replicate")
            g = (xq[:, :, 2:] - xq[:, :, :-2]) / 2
        bright = (x > 0.9).float()
        bg = torch.full_like(x, 0.02)
        return torch.cat([bg, 40 * g, -40 * g, bright * 2.0], 1)


def lr_phantom(shape=(40, 12, 8)) -> tuple[np.ndarray, np.ndarray]:
    """Image with a rising ramp at low x (-> left_kidney), a plateau (spine), a falling ramp at high x."""
    img = np.zeros(shape, np.float32)
    ref = np.zeros(shape, np.uint8)
    ramp = np.linspace(0.1, 0.6, 8)
    img[4:12] = ramp[:, None, None] * 1000
    ref[4:12] = 1
    img[16:24] = 1000
    ref[16:24] = 3
    img[28:36] = ramp[::-1, None, None] * 1000
    ref[28:36] = 2
    return img, ref


def lr_plans(dims: int = 3, mirror_axes=(0,)) -> Plans:
    patch = (40, 12, 8) if dims == 3 else (40, 12)
    return Plans(
        labels=LR_LABELS,
        target_spacing=(1.0, 1.0, 1.0),
        patch_size=patch,
        spatial_dims=dims,
        intensity=Intensity("ct_window", 0.0, 1000.0),
        mirror_axes=mirror_axes,
    )


@pytest.mark.parametrize("dims", [2, 3])
def test_tta_keeps_left_organs_left(dims: int) -> None:
    img, ref = lr_phantom()
    vol = Volume(img, np.eye(4))
    plain = Predictor(RampSideNet(), lr_plans(dims), device="cpu", crop_foreground=False, postprocess=False)
    tta = Predictor(
        RampSideNet(), lr_plans(dims), device="cpu", crop_foreground=False, tta_mirror=True, postprocess=False
    )
    a = plain.predict(vol).labels
    b = tta.predict(vol).labels
    # The network's answer without TTA is the known one inside each structure (its edges are
    # ramps too and get a side of their own, identically with and without mirroring)...
    assert (a[5:11] == 1).all() and (a[29:35] == 2).all() and (a[17:23] == 3).all()
    # ...and TTA keeps it voxel for voxel: left kidney left, right kidney right, midline untouched.
    np.testing.assert_array_equal(b, a)


def test_tta_without_the_swap_would_mix_left_and_right() -> None:
    """The control: averaging the mirrored pass without swapping channels destroys laterality."""
    img, ref = lr_phantom()
    x = torch.from_numpy(img / 1000.0)[None, None]
    net = RampSideNet()
    p = torch.softmax(net(x), 1)
    mirrored = torch.softmax(net(x.flip(2)), 1).flip(2)
    naive = (p + mirrored) / 2
    swapped = (p + mirrored[:, mirror_channel_order(LR_LABELS, 4)]) / 2
    # The bug: left and right get the same probability on the left kidney (laterality is gone).
    left_ramp = (slice(None), slice(5, 11))  # (batch, X, Y, Z) of one channel
    assert torch.allclose(naive[:, 1][left_ramp], naive[:, 2][left_ramp], atol=1e-6)
    assert (swapped[:, 1][left_ramp] > 0.8).all() and (swapped[:, 2][left_ramp] < 0.1).all()
    labels = swapped.argmax(1)[0].numpy()
    assert (labels[5:11] == 1).all() and (labels[29:35] == 2).all()


def test_tta_mirrors_only_trained_axes() -> None:
    assert mirror_dims((0,), 3) == [[2]]
    assert mirror_dims((0, 1), 2) == [[2], [3], [2, 3]]
    assert mirror_dims((), 3) == []
    assert mirror_channel_order(LR_LABELS, 4) == [0, 2, 1, 3]

    class Count(RampSideNet):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Count.calls += 1
            return super().forward(x)

    img, _ = lr_phantom()
    for axes, expected in (((0,), 2), ((), 1)):
        Count.calls = 0
        Predictor(Count(), lr_plans(3, axes), device="cpu", crop_foreground=False, tta_mirror=True).predict(
            Volume(img, np.eye(4))
        )
        assert Count.calls == expected


def _oblique(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


def _source(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A sphere of radius 9 mm sampled at 0.8 x 0.8 x 1.2 mm in several storage orders."""
    shape, spacing = (40, 36, 28), np.array([0.8, 0.8, 1.2])
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1).astype(float)
    centre = (np.array(shape) - 1) / 2 + [1.3, -0.7, 0.4]
    r = np.linalg.norm((idx - centre) * spacing, axis=-1)
    img = np.clip((10.5 - r) * 300, 0, 1000).astype(np.float32)  # soft edge: partial volume
    direction = np.eye(3)
    if kind == "lps":
        img, direction = img[::-1, ::-1].copy(), np.diag([-1.0, -1.0, 1.0])
    elif kind == "permuted":
        img, direction = img.transpose(2, 0, 1).copy(), np.eye(3)[:, [2, 0, 1]]
        spacing = spacing[[2, 0, 1]]
    elif kind == "oblique":
        direction = _oblique(20)
    aff = np.eye(4)
    aff[:3, :3] = direction * spacing
    aff[:3, 3] = [-12.0, 5.0, 30.0]
    return img, aff


class ThresholdNet(torch.nn.Module):
    """Known answer: organ 1 where the normalised intensity exceeds 0.5 (a smooth logit)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), 4 * (x - 0.5)], 1)


@pytest.mark.parametrize("kind", ["ras", "lps", "permuted", "oblique"])
def test_score_resampling_keeps_exact_geometry_and_smooth_edges(kind: str) -> None:
    img, aff = _source(kind)
    plans = Plans(
        labels={0: "background", 1: "organ"},
        target_spacing=(3.0, 3.0, 3.0),  # a coarse network grid: staircase edges if labels are resampled
        patch_size=(16, 16, 16),
        intensity=Intensity("ct_window", 0.0, 1000.0),
    )
    vol = Volume(img, aff)
    smooth = Predictor(ThresholdNet(), plans, device="cpu", crop_foreground=False).predict(vol)
    stairs = Predictor(
        ThresholdNet(), plans, device="cpu", crop_foreground=False, resample_scores=False
    ).predict(vol)
    truth = img > 500
    for pred in (smooth, stairs):
        assert pred.labels.shape == img.shape
        np.testing.assert_array_equal(pred.affine, aff)

    def dice(p: np.ndarray) -> float:
        return 2 * float(((p == 1) & truth).sum()) / float((p == 1).sum() + truth.sum())

    print(kind, dice(smooth.labels), dice(stairs.labels))
    assert dice(smooth.labels) > 0.95
    assert dice(smooth.labels) > dice(stairs.labels) + 0.02


def test_box_restricted_resampling_equals_full_resampling() -> None:
    rng = np.random.default_rng(0)
    grid = plan_grid((30, 26, 20), np.diag([0.9, 1.1, 2.0, 1.0]) @ np.diag([-1, 1, 1, 1]), (2.0, 2.0, 3.0))
    k = 4
    logits = torch.from_numpy(rng.normal(size=(k, *grid.resampled_shape)).astype(np.float32))
    logits[0] += 3.0  # mostly background, organs in a sub-box
    logits[:, :3] = torch.tensor([5.0, 0, 0, 0])[:, None, None, None]
    probs = torch.softmax(logits, 0)
    full = resample_to_ras(probs, grid, mode="linear").argmax(0).to(torch.uint8)
    boxed = labels_from_probabilities(probs, grid)
    np.testing.assert_array_equal(from_ras(boxed, grid).numpy(), from_ras(full, grid).numpy())
    # All background -> all background, without work.
    assert not labels_from_probabilities(
        torch.nn.functional.one_hot(torch.zeros(grid.resampled_shape, dtype=torch.long), k)
        .permute(3, 0, 1, 2)
        .float(),
        grid,
    ).any()


def test_box_around_a_small_interior_organ_equals_full_resampling() -> None:
    """The box's one-voxel margin: an organ in a small block of network voxels spreads to the RAS
    positions around it exactly as the full-volume resampling does."""
    grid = plan_grid((30, 26, 20), np.diag([0.9, 1.1, 2.0, 1.0]), (2.0, 2.0, 3.0))
    probs = torch.zeros((3, *grid.resampled_shape))
    probs[0] = 1.0
    probs[:, 7:9, 5:7, 3:5] = torch.tensor([0.0, 0.2, 0.8])[:, None, None, None]
    full = resample_to_ras(probs, grid, mode="linear").argmax(0).to(torch.uint8)
    boxed = labels_from_probabilities(probs, grid)
    assert int((full == 2).sum()) > 1  # the organ covers more than one source voxel
    np.testing.assert_array_equal(boxed.numpy(), full.numpy())
