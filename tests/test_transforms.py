"""Transforms built from Plans: geometry after preprocessing, patch shapes, left/right-safe flips."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medunet.plans import Intensity, Plans
from medunet.transforms import (
    Augmentation,
    RandFlipSwapLRd,
    lr_swap_table,
    train_cache_transforms,
    train_random_transforms,
    val_transforms,
)

LABELS = {0: "background", 1: "liver", 2: "left_kidney", 3: "right_kidney"}


def _plans(dims: int = 3, **kw) -> Plans:
    patch = (16, 16, 16) if dims == 3 else (16, 16)
    return Plans(
        labels=LABELS,
        target_spacing=(2.0, 2.0, 2.0),
        patch_size=patch,
        spatial_dims=dims,
        intensity=Intensity("ct_window", -100.0, 200.0),
        **kw,
    )


@pytest.fixture
def case(tmp_path):
    """A 20x24x10 LPS-stored volume at 1x1x4 mm with a box of 'left kidney' and one of 'liver'."""
    image = np.full((20, 24, 10), -1000, np.int16)
    image[2:18, 2:22, 1:9] = 50
    label = np.zeros(image.shape, np.uint8)
    label[4:8, 4:10, 2:6] = 2
    label[12:16, 10:20, 3:8] = 1
    image[label > 0] = 150
    affine = np.diag([-1.0, -1.0, 4.0, 1.0])  # L-P-S voxel axes
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "lab.nii.gz")
    return {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz"), "case_id": "c0"}


def test_val_pipeline_reorients_resamples_and_windows(case):
    out = val_transforms(_plans())(case)
    img, lab = out["image"], out["label"]
    # RAS at 2 mm: 20 mm x 24 mm x 40 mm -> about 10 x 12 x 20 voxels before cropping to the body.
    assert img.shape[0] == 1 and lab.shape == img.shape
    assert img.shape[1] <= 10 and img.shape[2] <= 12 and img.shape[3] <= 20
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert set(np.unique(lab.numpy()).tolist()) <= {0, 1, 2}
    # Left kidney was stored at low i of an L-axis (patient left) -> after RAS it sits at high x.
    xs = np.nonzero(lab.numpy()[0] == 2)[0]
    assert xs.mean() > lab.shape[1] / 2


def test_training_crop_keeps_the_body_the_predictor_sees_even_below_the_window(tmp_path: Path) -> None:
    # Soft-tissue body (40 HU) under a window starting at 95 HU (planned from bright organs): the crop
    # used to follow the window's lower bound and cut the body down to the organ, so training saw a
    # field of view the Predictor (body > BODY_HU) never gives it (evaluation Dice 0.66 vs 0.80).
    image = np.full((30, 30, 12), -1000, np.int16)
    image[3:27, 4:26, 1:11] = 40  # the body
    image[10:16, 10:16, 4:8] = 150  # one organ inside it
    label = (image == 150).astype(np.uint8)
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "lab.nii.gz")
    plans = Plans(
        labels={0: "background", 1: "liver"},
        target_spacing=(1.0, 1.0, 1.0),
        patch_size=(8, 8, 8),
        intensity=Intensity("ct_window", 95.0, 220.0),
    )
    out = val_transforms(plans)(
        {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    )
    # The body's box (24 x 22 x 10) plus the 2-voxel margin, clipped to the volume.
    assert tuple(out["image"].shape[1:]) == (28, 26, 12)
    assert int(out["label"].sum()) == int(label.sum())


@pytest.mark.parametrize("dims", [3, 2])
def test_train_pipeline_patch_shapes(case, dims):
    plans = _plans(dims)
    head, tail = train_cache_transforms(plans), train_random_transforms(plans, Augmentation(num_samples=3))
    tail.set_random_state(0)
    samples = tail(head(case))
    assert len(samples) == 3
    for s in samples:
        assert tuple(s["image"].shape) == (1, *plans.patch_size)
        assert tuple(s["label"].shape) == (1, *plans.patch_size)
        assert s["label"].dtype == torch.long and "label_cls_indices" not in s


def test_lr_flip_swaps_left_and_right_labels():
    assert lr_swap_table({0: "bg", 1: "liver", 3: "left_kidney", 4: "right_kidney"}) == {3: 4, 4: 3}
    label = torch.zeros(1, 4, 2, 2)
    label[0, 0] = 2  # left kidney label in the first R->L column
    image = torch.arange(16.0).reshape(1, 4, 2, 2)
    out = RandFlipSwapLRd(["image", "label"], LABELS, prob=1.0)({"image": image, "label": label})
    assert torch.equal(out["image"], image.flip(1))
    assert (out["label"][0, 3] == 3).all() and (out["label"][0, :3] == 0).all()


def test_plain_flip_of_left_right_axis_is_refused():
    with pytest.raises(ValueError, match="left/right"):
        Augmentation(flip_axes=(0, 1))


def _centre_labels(tmp_path: Path, aug: Augmentation, n: int) -> list[int]:
    """Label at the centre of each of ``n`` training patches from a case with a big liver (5760 voxels),
    a tiny left kidney (8 voxels), background elsewhere and no right kidney, 1 mm RAS, 8^3 patches."""
    image = np.full((40, 40, 40), 50, np.int16)
    label = np.zeros(image.shape, np.uint8)
    label[6:16, 8:32, 8:32] = 1
    label[30:32, 30:32, 30:32] = 2
    image[label > 0] = 150
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "lab.nii.gz")
    plans = Plans(
        labels=LABELS,
        target_spacing=(1.0, 1.0, 1.0),
        patch_size=(8, 8, 8),
        intensity=Intensity("ct_window", -100.0, 200.0),
    )
    cached = train_cache_transforms(plans)(
        {"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}
    )
    assert tuple(cached["label"].shape[1:]) == (40, 40, 40)  # nothing cropped: patch centre = voxel
    tail = train_random_transforms(plans, aug)
    tail.set_random_state(0)
    return [int(s["label"][0, 4, 4, 4]) for s in tail(cached)[:n]]


def test_patches_are_class_balanced(tmp_path: Path) -> None:
    """Each present class (background, liver, the 8-voxel kidney) is the patch centre 1/3 of the time.

    Uniform sampling would centre a patch on the kidney 8 / 64000 of the time; 300 patches give
    100 +- 8 per class (binomial sd), checked within 4 sd. The absent right kidney is never a centre.
    """
    no_aug = {"affine_prob": 0.0, "intensity_prob": 0.0}
    counts = np.bincount(_centre_labels(tmp_path, Augmentation(num_samples=300, **no_aug), 300), minlength=4)
    assert counts.sum() == 300 and counts[3] == 0
    for c in (0, 1, 2):
        assert abs(counts[c] - 100) <= 4 * np.sqrt(300 * (1 / 3) * (2 / 3)), counts
    # class_ratios set the frequencies: liver 1/4, kidney 3/4, never background
    aug = Augmentation(num_samples=300, class_ratios=(0.0, 1.0, 3.0, 0.0), **no_aug)
    counts = np.bincount(_centre_labels(tmp_path, aug, 300), minlength=4)
    assert counts[0] == 0 and counts[3] == 0
    assert abs(counts[2] - 225) <= 4 * np.sqrt(300 * 0.75 * 0.25), counts


def test_class_weights_need_one_entry_per_class() -> None:
    plans = _plans(3)
    with pytest.raises(ValueError, match="class_weights needs"):
        train_random_transforms(plans, Augmentation(), class_weights=(1.0, 2.0))
