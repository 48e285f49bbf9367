"""Patch sampling on partially contoured data: every organ is a patch centre about as often, whatever
the number of cases that contour it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medunet.data.datalist import Case
from medunet.plans import Intensity, Plans
from medunet.training.data import annotation_balanced_weights, train_loader
from medunet.training.environment import TrainingEnv
from medunet.transforms import Augmentation

LABELS = {0: "background", 1: "liver", 2: "left_kidney", 3: "right_kidney"}


def _case(tmp_path: Path, name: str, annotated: set[int] | None) -> Case:
    """40^3 mm at 1 mm: a big liver (5760 voxels) and, where contoured, an 8-voxel left kidney."""
    image = np.full((40, 40, 40), 50, np.int16)
    label = np.zeros(image.shape, np.uint8)
    label[6:16, 8:32, 8:32] = 1
    image[label > 0] = 150
    image[30:32, 30:32, 30:32] = 150  # the kidney is in every image, contoured or not
    if annotated is None or 2 in annotated:
        label[30:32, 30:32, 30:32] = 2
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / f"{name}_img.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / f"{name}_lab.nii.gz")
    return Case(
        name,
        (tmp_path / f"{name}_img.nii.gz",),
        tmp_path / f"{name}_lab.nii.gz",
        None if annotated is None else frozenset(annotated),
    )


def test_weights_are_cases_over_cases_that_contour_the_class(tmp_path: Path) -> None:
    cases = [
        Case("a", (tmp_path / "a",), tmp_path / "a", frozenset({1, 2})),
        Case("b", (tmp_path / "b",), tmp_path / "b", frozenset({1})),
        Case("c", (tmp_path / "c",), tmp_path / "c", frozenset({1})),
        Case("d", (tmp_path / "d",), tmp_path / "d", None),  # fully contoured
    ]
    # background and liver everywhere; left kidney in a and d (4/2); right kidney only in d (4/1)
    assert annotation_balanced_weights(cases, 4) == (1.0, 1.0, 2.0, 4.0)
    full = [Case(c.case_id, c.images, c.label, None) for c in cases]
    assert annotation_balanced_weights(full, 4) == (1.0, 1.0, 1.0, 1.0)


def test_an_organ_contoured_in_one_case_of_three_is_sampled_three_times_as_often_there(
    tmp_path: Path,
) -> None:
    """Through the real training loader: the kidney is contoured in case a only (weight 3).

    In a, the centre is background / liver / kidney with ratios 1 : 1 : 3, i.e. the kidney 3/5 of the
    time (120 of its 200 patches, binomial sd 6.9); b and c never centre on it. Unweighted class
    balance would give the kidney 1/3 of a's patches (67) and 1/9 of all of them: that fails here.
    """
    cases = [_case(tmp_path, "a", {1, 2}), _case(tmp_path, "b", {1}), _case(tmp_path, "c", {1})]
    plans = Plans(
        labels=LABELS,
        target_spacing=(1.0, 1.0, 1.0),
        patch_size=(8, 8, 8),
        intensity=Intensity("ct_window", -100.0, 200.0),
    )
    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    aug = Augmentation(num_samples=200, affine_prob=0.0, intensity_prob=0.0)
    loader = train_loader(cases, plans, env, (40.0, 40.0, 40.0), batch_size=1, augmentation=aug)
    centres: dict[str, np.ndarray] = {}
    for batch in loader:
        labels = batch["label"][:, 0, 4, 4, 4].long()
        centres[batch["case_id"][0]] = np.bincount(labels.numpy(), minlength=4)
    assert sorted(centres) == ["a", "b", "c"]
    a = centres["a"]
    assert a.sum() == 200 and a[3] == 0
    assert abs(a[2] - 120) <= 4 * np.sqrt(200 * 0.6 * 0.4), a
    assert abs(a[1] - 40) <= 4 * np.sqrt(200 * 0.2 * 0.8), a
    for other in ("b", "c"):
        assert centres[other][2] == 0 and centres[other][3] == 0
