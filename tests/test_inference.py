"""Predictor: exact source-grid round trips with known-answer networks, and agreement with MONAI."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medunet.inference import Predictor, fill_holes, keep_largest_component, plan_grid
from medunet.io import Volume, write_nifti
from medunet.plans import Intensity, Plans

LABELS = {0: "background", 1: "liver", 2: "spleen"}


class BandNet(torch.nn.Module):
    """Known answer: channel k is high where the (normalised) input is near k / (K - 1).

    With a CT window [0, 100] and image = 50 * label, the network returns exactly the label map in
    whatever grid it is shown; any geometry error on the way there or back shows up as a mismatch.
    """

    def __init__(self, num_classes: int = 3, sharpness: float = 50.0) -> None:
        super().__init__()
        self.register_buffer("centers", torch.linspace(0, 1, num_classes))
        self.sharpness = sharpness
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        shape = [1, -1] + [1] * (x.ndim - 2)
        return -self.sharpness * (x - self.centers.view(shape)) ** 2


def make_plans(spacing=(0.5, 0.5, 0.5), patch=(16, 16, 16), dims: int = 3) -> Plans:
    return Plans(
        labels=LABELS,
        target_spacing=spacing,
        patch_size=patch,
        spatial_dims=dims,
        intensity=Intensity("ct_window", 0.0, 100.0),
    )


def label_phantom(shape=(14, 12, 10)) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[2:8, 3:9, 2:6] = 1
    lab[8:12, 1:5, 5:9] = 2
    lab[3, 10, 8] = 2  # a single voxel: survives only an exact round trip
    return lab


def rotation(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.deg2rad(deg / 2)
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def variant(kind: str, lab: np.ndarray, spacing=(1.0, 1.0, 2.0)) -> tuple[np.ndarray, np.ndarray]:
    """The phantom stored in another orientation: returns (array, affine)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10.0, 5.0, 30.0)
    arr = lab
    if kind == "lps":  # flip i and j: voxel axes point to L and P
        arr = lab[::-1, ::-1, :]
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[0, 3] = lab.shape[0] - 1
        flip[1, 3] = lab.shape[1] - 1
        affine = affine @ flip
    elif kind == "permuted":  # storage order (k, i, j), e.g. a sagittal/coronal acquisition
        arr = np.transpose(lab, (2, 0, 1))
        affine = affine[:, [2, 0, 1, 3]]
    elif kind == "oblique":
        affine[:3, :3] = rotation(12.0) @ affine[:3, :3]
    elif kind == "pli":  # like the shared OpenKBP data
        arr = np.transpose(lab, (1, 0, 2))[::-1, :, ::-1]
        a = affine[:, [1, 0, 2, 3]].copy()
        a[:, 0] *= -1
        a[:, 2] *= -1
        a[:3, 3] = affine[:3, 3] + affine[:3, 1] * (lab.shape[1] - 1) + affine[:3, 2] * (lab.shape[2] - 1)
        affine = a
    return np.ascontiguousarray(arr), affine


@pytest.mark.parametrize("kind", ["ras", "lps", "permuted", "oblique", "pli"])
def test_known_answer_round_trip_is_exact_on_source_grid(kind: str, tmp_path) -> None:
    lab_src, affine = variant(kind, label_phantom())
    image = Volume((lab_src.astype(np.int16) * 50), affine, source=f"{kind}.nii.gz")
    # target spacing half the source spacing: every source voxel centre is a network voxel centre.
    predictor = Predictor(BandNet(), make_plans(spacing=(0.5, 0.5, 1.0)), device="cpu")
    pred = predictor.predict(image)
    assert pred.labels.shape == lab_src.shape
    assert pred.labels.dtype == np.uint8
    np.testing.assert_array_equal(pred.labels, lab_src)

    # Geometry read back by two libraries equals the source image's.
    img_path = write_nifti(tmp_path / "img.nii.gz", image.array, affine)
    seg_path = write_nifti(tmp_path / "seg.nii.gz", pred.labels, pred.affine)
    seg_nib = nib.load(str(seg_path))
    assert seg_nib.shape == lab_src.shape
    np.testing.assert_allclose(seg_nib.affine, affine, atol=1e-5)
    a, b = sitk.ReadImage(str(img_path)), sitk.ReadImage(str(seg_path))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(np.transpose(sitk.GetArrayFromImage(b), (2, 1, 0)), lab_src)


#: One float32 unit in the last place at 1.0: the finest difference two float32 pipelines can show on
#: intensities normalised to [0, 1].
FLOAT32_ULP_AT_1 = float(np.spacing(np.float32(1.0)))


def test_preprocessing_matches_monai_orientation_spacing_intensity() -> None:
    from monai.data import MetaTensor
    from monai.transforms import Orientation, ScaleIntensityRange, Spacing

    rng = np.random.default_rng(1)
    arr, affine = variant("pli", rng.integers(-50, 150, (14, 12, 10)).astype(np.float32))
    plans = make_plans(spacing=(1.5, 0.7, 1.3))
    x, grid = Predictor(BandNet(), plans, device="cpu").preprocess(Volume(arr, affine))
    ref = MetaTensor(torch.from_numpy(arr)[None], affine=torch.from_numpy(affine))
    ref = Orientation(axcodes="RAS")(ref)
    ref = Spacing(pixdim=plans.target_spacing, mode="bilinear")(ref)
    ref = ScaleIntensityRange(0.0, 100.0, 0.0, 1.0, clip=True)(ref)
    assert tuple(x.shape[2:]) == tuple(ref.shape[1:]) == grid.resampled_shape
    # Equal to float32 rounding: one unit in the last place at 1.0 (1.19e-7) on the [0, 1] intensities.
    np.testing.assert_allclose(x[0].numpy(), ref.numpy(), rtol=0, atol=FLOAT32_ULP_AT_1)
    np.testing.assert_allclose(grid.resampled_affine, ref.affine.numpy(), atol=1e-6)


def _sphere_phantom() -> tuple[np.ndarray, np.ndarray]:
    shape = (40, 36, 14)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    lab = np.zeros(shape, np.uint8)
    lab[((ii - 14) * 0.8) ** 2 + ((jj - 16) * 0.8) ** 2 + ((kk - 6) * 2.5) ** 2 < 8.0**2] = 1
    lab[((ii - 29) * 0.8) ** 2 + ((jj - 17) * 0.8) ** 2 + ((kk - 8) * 2.5) ** 2 < 6.0**2] = 2
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    affine[:3, 3] = (20.0, 15.0, -40.0)
    return lab, affine


def test_agrees_with_stock_monai_pipeline_with_invertd(tmp_path) -> None:
    from monai.inferers import sliding_window_inference
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    lab, affine = _sphere_phantom()
    image = (lab.astype(np.int16) * 50).astype(np.int16)
    path = write_nifti(tmp_path / "ct.nii.gz", image, affine)
    plans = make_plans(spacing=(1.5, 1.5, 1.5), patch=(24, 24, 16))
    net = BandNet()
    ours = Predictor(net, plans, device="cpu", overlap=0.5).predict(Volume(image, affine)).labels
    ours_nearest = (
        Predictor(net, plans, device="cpu", overlap=0.5, resample_scores=False)
        .predict(Volume(image, affine))
        .labels
    )

    pre = Compose(
        [
            LoadImaged("image", image_only=False),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=plans.target_spacing, mode="bilinear"),
            ScaleIntensityRanged("image", a_min=0.0, a_max=100.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    data = pre({"image": str(path)})
    with torch.inference_mode():
        logits = sliding_window_inference(
            data["image"][None], (24, 24, 16), 4, net, overlap=0.5, mode="gaussian"
        )

    def invert(post: Compose) -> np.ndarray:
        d = dict(data)
        d["pred"] = logits[0]
        return np.asarray(post(d)["pred"])[0].astype(np.uint8)

    # The stock zoo recipe (and the accuracy anchor): softmax, invert with linear interpolation, argmax.
    ref_scores = invert(
        Compose(
            [
                Activationsd("pred", softmax=True),
                Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                AsDiscreted("pred", argmax=True),
            ]
        )
    )
    # The label path: argmax on the network grid, nearest-neighbour inversion.
    ref_labels = invert(
        Compose(
            [
                AsDiscreted("pred", argmax=True),
                Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True),
            ]
        )
    )
    assert ref_scores.shape == ref_labels.shape == ours.shape == lab.shape
    # Probabilities inverted then argmax (the default path): every voxel equal on this phantom.
    np.testing.assert_array_equal(ours, ref_scores)
    # Labels inverted by nearest neighbour: the README's >= 99.5 % (measured 99.92 % here).
    agreement = float((ref_labels == ours_nearest).mean())
    assert agreement >= 0.995, agreement
    # and both are close to the truth (downsampling blurs only the rims)
    assert float((ours == lab).mean()) > 0.97


def test_2d_plans_run_slice_by_slice_with_same_3d_answer() -> None:
    lab_src, affine = variant("lps", label_phantom())
    image = Volume(lab_src.astype(np.int16) * 50, affine)
    plans2d = make_plans(spacing=(0.5, 0.5, 2.0), patch=(16, 16), dims=2)
    net = BandNet()
    pred = Predictor(net, plans2d, device="cpu", slice_batch_size=4).predict(image)
    np.testing.assert_array_equal(pred.labels, lab_src)
    # (10 slices, batches of 4) -> 3 sliding-window calls; each call sees 2D windows only.
    assert net.calls >= 3


def test_tta_mirror_runs_the_trained_flips_and_keeps_answer() -> None:
    """TTA mirrors only ``plans.mirror_axes`` (here all three: 8 passes); untrained axes: no extra pass."""
    import dataclasses

    lab_src, affine = variant("ras", label_phantom())
    image = Volume(lab_src.astype(np.int16) * 50, affine)
    plans = make_plans(spacing=(1.0, 1.0, 2.0), patch=(16, 16, 16))
    plain, mirrored, untrained = BandNet(), BandNet(), BandNet()
    a = Predictor(plain, plans, device="cpu").predict(image).labels
    all_axes = dataclasses.replace(plans, mirror_axes=(0, 1, 2))
    b = Predictor(mirrored, all_axes, device="cpu", tta_mirror=True).predict(image).labels
    c = Predictor(untrained, plans, device="cpu", tta_mirror=True).predict(image).labels
    assert mirrored.calls == 8 * plain.calls
    assert untrained.calls == plain.calls
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_uncertainty_and_probabilities_on_source_grid() -> None:
    lab_src, affine = variant("permuted", label_phantom())
    arr = lab_src.astype(np.float32) * 50
    arr[0, 0, 0] = 25.0  # exactly between background and liver: two-way tie
    pred = Predictor(BandNet(), make_plans(spacing=(0.5, 0.5, 1.0)), device="cpu").predict(
        Volume(arr, affine), uncertainty=True, return_probabilities=True
    )
    assert pred.uncertainty is not None and pred.probabilities is not None
    assert pred.uncertainty.shape == lab_src.shape
    assert pred.probabilities.shape == (3, *lab_src.shape)
    assert pred.uncertainty.min() >= 0.0 and pred.uncertainty.max() <= 1.0 + 1e-6
    p = np.array([0.5, 0.5, np.exp(-50 * 0.75**2 + 50 * 0.25**2)])
    p /= p.sum()
    assert pred.uncertainty[0, 0, 0] == pytest.approx(-(p * np.log(p)).sum() / np.log(3), rel=1e-3)
    # An interior voxel: the exact label, and the entropy of BandNet's softmax at x = label / 2.
    assert pred.labels[5, 5, 5] == lab_src[5, 5, 5] == 1
    q = np.exp(-50 * (0.5 - np.array([0.0, 0.5, 1.0])) ** 2)
    q /= q.sum()
    assert pred.uncertainty[5, 5, 5] == pytest.approx(-(q * np.log(q)).sum() / np.log(3), abs=1e-6)  # 9.16e-5
    np.testing.assert_allclose(pred.probabilities[:, 5, 5, 5], q, rtol=1e-4)
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.probabilities.argmax(0)[1:, 1:, 1:], lab_src[1:, 1:, 1:])


def test_bad_channel_count_is_a_typed_error() -> None:
    from medunet.errors import InvalidImageError

    with pytest.raises(InvalidImageError, match="channel"):
        Predictor(BandNet(), make_plans(), device="cpu").predict(
            Volume(np.zeros((4, 4, 4, 2), np.float32), np.eye(4), source="two.nii.gz")
        )


def test_plan_grid_is_identity_for_ras_at_target_spacing() -> None:
    grid = plan_grid((10, 11, 12), np.diag([1.5, 1.5, 1.5, 1.0]), (1.5, 1.5, 1.5))
    assert grid.identity_orientation and grid.resampled_shape == (10, 11, 12)


def test_keep_largest_component_and_fill_holes() -> None:
    lab = np.zeros((20, 20, 20), np.uint8)
    lab[2:8, 2:8, 2:8] = 1
    lab[15:17, 15:17, 15:17] = 1  # small island of organ 1
    lab[10:18, 2:10, 2:10] = 2
    lab[13:15, 5:7, 5:7] = 0  # hole in organ 2
    lab[11, 3, 3] = 1  # organ-1 speck inside organ 2: not a hole to fill, an island to drop
    out = keep_largest_component(lab)
    assert out[15, 15, 15] == 0 and out[11, 3, 3] == 0 and out[4, 4, 4] == 1
    assert (out == 2).sum() == (lab == 2).sum()
    filled = fill_holes(out)
    assert (filled[13:15, 5:7, 5:7] == 2).all()
    assert (filled == 1).sum() == (out == 1).sum()
    assert filled[11, 3, 3] == 2  # the dropped speck left a cavity enclosed by organ 2


@pytest.mark.parametrize("kind", ["ct_window", "zscore_nonzero"])
def test_fast_preprocessing_equals_training_inference_transforms(kind: str, tmp_path) -> None:
    """The predictor's tensor path sees the voxels the training pipeline (medunet.transforms) produces."""
    transforms = pytest.importorskip("medunet.transforms")
    rng = np.random.default_rng(3)
    arr, affine = variant("pli", rng.integers(-200, 300, (14, 12, 10)).astype(np.int16))
    arr[:2] = 0  # some exact zeros for the MR z-score mask
    path = write_nifti(tmp_path / "img.nii.gz", arr, affine)
    plans = Plans(
        labels=LABELS,
        target_spacing=(1.5, 0.7, 1.3),
        patch_size=(16, 16, 16),
        intensity=Intensity(kind, -100.0, 200.0),
    )
    ref = transforms.inference_transforms(plans)({"image": str(path)})["image"]
    ours, grid = Predictor(BandNet(), plans, device="cpu").preprocess(Volume(arr, affine))
    assert tuple(ref.shape[1:]) == grid.resampled_shape
    # Float32 rounding only, in units in the last place (ulp) of the largest value: 1 ulp for the CT
    # window's [0, 1] (1.2e-7); z-scores (up to ~2.5 here, 1 ulp = 2.4e-7) also differ in how the mean
    # and std are summed, measured 2 ulp, allowed 4.
    ulp = float(np.spacing(np.abs(np.asarray(ref)).max().astype(np.float32)))
    atol = ulp if kind == "ct_window" else 4 * ulp
    np.testing.assert_allclose(ours[0].numpy(), np.asarray(ref), rtol=0, atol=atol)
    np.testing.assert_allclose(grid.resampled_affine, np.asarray(ref.affine), atol=1e-6)


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("kind", ["ras", "lps", "permuted", "oblique", "pli"])
def test_source_to_network_equals_transpose_then_resample(kind: str, order: str) -> None:
    """The memory-order numpy path (any layout, crop box) gives the torch reference's voxels."""
    from medunet.inference.geometry import resample_to_network, source_to_network, to_ras

    rng = np.random.default_rng(5)
    arr, affine = variant(kind, rng.integers(-1000, 1000, (30, 27, 20)).astype(np.int16))
    arr = np.asarray(arr, order=order)
    grid = plan_grid(arr.shape, affine, (1.5, 0.7, 1.3))
    ref = resample_to_network(to_ras(torch.from_numpy(np.ascontiguousarray(arr))[None].float(), grid), grid)
    ours = source_to_network(arr[..., None], grid)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-3)  # HU, float32 rounding
    box = ((2, 10), (3, 20), (1, 5))
    np.testing.assert_allclose(
        source_to_network(arr[..., None], grid, box), ref.numpy()[:, 2:10, 3:20, 1:5], atol=1e-3
    )


def _body_phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(int16 HU image in LPS storage, label map, affine): organs in a soft-tissue body in air."""
    shape = (48, 40, 24)
    lab = np.zeros(shape, np.uint8)
    lab[16:24, 12:20, 8:14] = 1
    lab[25:30, 20:26, 10:16] = 2
    body = np.zeros(shape, bool)
    body[12:34, 10:30, 4:20] = True
    image = np.where(body, 0, -1000).astype(np.int16)
    image[lab > 0] = 50 * lab[lab > 0]
    image[1, 1, 1] = 1000  # a stray bright voxel in the air must not widen the box
    arr, affine = variant("lps", image)
    lab_src, _ = variant("lps", lab)
    return arr, lab_src, affine


def test_foreground_crop_gives_identical_labels_with_fewer_windows() -> None:
    arr, lab, affine = _body_phantom()
    plans = make_plans(spacing=(1.0, 1.0, 1.0), patch=(16, 16, 16))
    full_net, crop_net = BandNet(), BandNet()
    full = Predictor(full_net, plans, device="cpu", crop_foreground=False).predict(Volume(arr, affine))
    crop = Predictor(crop_net, plans, device="cpu", crop_margin=2).predict(Volume(arr, affine))
    assert full.network_box is None
    assert crop.network_box is not None
    # body: x 12..33 -> RAS 14..35 (L flip of 48), y 10..29 -> 10..29 (P flip of 40), z 4..19 at 2 mm -> 8..38
    (x0, x1), (y0, y1), (z0, z1) = crop.network_box
    assert x0 <= 14 and x1 >= 36 and y0 <= 10 and y1 >= 30 and z0 <= 8 and z1 >= 39
    assert (x1 - x0) * (y1 - y0) * (z1 - z0) < 0.5 * arr.size
    # Identical everywhere but the stray bright voxel in the air, which the crop leaves background.
    stray = np.zeros(lab.shape, bool)
    stray[-2, -2, 1] = True  # (1, 1, 1) of the RAS image, stored LPS
    np.testing.assert_array_equal(crop.labels[~stray], full.labels[~stray])
    assert full.labels[stray] == 2 and crop.labels[stray] == 0
    np.testing.assert_array_equal(crop.labels, lab)
    assert crop_net.calls < full_net.calls


def test_foreground_crop_defaults_and_fallbacks() -> None:
    plans = make_plans()
    assert Predictor(BandNet(), plans, device="cpu").crop_foreground  # CT window: on
    mr = Plans(
        labels=LABELS,
        target_spacing=(1, 1, 1),
        patch_size=(16, 16, 16),
        intensity=Intensity("zscore_nonzero"),
    )
    assert not Predictor(BandNet(), mr, device="cpu").crop_foreground
    # all air: nothing to crop to -> the whole grid runs (and says background)
    air = Volume(np.full((20, 20, 20), -1000, np.int16), np.eye(4))
    pred = Predictor(BandNet(), make_plans(spacing=(1.0, 1.0, 1.0)), device="cpu").predict(air)
    assert pred.network_box is None and not pred.labels.any()


def test_foreground_crop_fills_probabilities_and_uncertainty_outside_box() -> None:
    arr, lab, affine = _body_phantom()
    plans = make_plans(spacing=(1.0, 1.0, 1.0), patch=(16, 16, 16))
    pred = Predictor(BandNet(), plans, device="cpu", crop_margin=1).predict(
        Volume(arr, affine), uncertainty=True, return_probabilities=True
    )
    assert pred.network_box is not None and pred.probabilities is not None and pred.uncertainty is not None
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.probabilities.argmax(0), lab)
    assert pred.uncertainty[0, 0, 0] == 0.0 and pred.probabilities[0, 0, 0, 0] == 1.0


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, None], ids=["fp32", "default_amp"])
def test_cuda_inference_equals_cpu(amp: bool | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same networks on CUDA give the CPU answer.

    The known-answer network returns the exact label map on CUDA too, in float32 and under the
    default CUDA autocast. A random tiny U-Net (real convolutions) gives class probabilities within
    1e-4 of the CPU ones in float32 (TF32 off) and 2e-2 under autocast, and the same labels wherever
    the CPU's two best classes are further apart than that.
    """
    import copy

    from medunet.networks import build_network

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    lab_src, affine = variant("oblique", label_phantom())
    image = Volume(lab_src.astype(np.int16) * 50, affine)
    plans = make_plans(spacing=(0.5, 0.5, 1.0))
    on_gpu = Predictor(BandNet(), plans, device="cuda", amp=amp)
    assert on_gpu.device.type == "cuda" and on_gpu.amp == (amp is None)
    np.testing.assert_array_equal(on_gpu.predict(image).labels, lab_src)

    lab, affine = _sphere_phantom()
    ct = Volume((lab.astype(np.int16) * 50), affine)
    plans = make_plans(spacing=(1.5, 1.5, 1.5), patch=(16, 16, 16))
    torch.manual_seed(0)
    net = build_network("unet", 3, 1, 3, size="tiny")
    cpu = Predictor(net, plans, device="cpu").predict(ct, return_probabilities=True)
    gpu = Predictor(copy.deepcopy(net), plans, device="cuda", amp=amp).predict(ct, return_probabilities=True)
    assert cpu.probabilities is not None and gpu.probabilities is not None
    tol = 1e-4 if amp is False else 2e-2
    np.testing.assert_allclose(gpu.probabilities, cpu.probabilities, rtol=0, atol=tol)
    top2 = np.sort(cpu.probabilities, axis=0)[-2:]
    decided = (top2[1] - top2[0]) > 2 * tol
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(gpu.labels[decided], cpu.labels[decided])
