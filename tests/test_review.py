"""Review import: corrected masks go into the dataset; wrong-grid or unknown-label masks are refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medunet.cli import main
from medunet.export.case import write_case
from medunet.inference import Prediction
from medunet.io import Volume, read_nifti, write_nifti
from medunet.io.itk_io import to_sitk

LABELS = {0: "background", 1: "liver", 2: "spleen"}


def _phantom() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lab = np.zeros((16, 14, 8), np.uint8)
    lab[2:8, 3:9, 1:5] = 1
    lab[9:14, 2:6, 3:7] = 2
    affine = np.diag([-0.9, -0.9, 2.5, 1.0])
    affine[:3, 3] = (30.0, 10.0, -50.0)
    return lab, (lab * 50 - 100).astype(np.int16), affine


@pytest.fixture
def reviewed(tmp_path: Path) -> Path:
    """A predict output folder with two cases: NIfTI-referenced image and a copied image."""
    lab, image, affine = _phantom()
    src = write_nifti(tmp_path / "inputs" / "ct.nii.gz", image, affine)
    out = tmp_path / "pred"
    for name, copy in (("ct", False), ("ct_copy", True)):
        write_case(
            out,
            name,
            Volume(image, affine, source=str(src)),
            Prediction(labels=lab, affine=affine, label_names=LABELS),
            source=src,
            is_dicom=False,
            copy_image=copy,
            checkpoint_sha256="ab" * 32,
        )
    return out


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    lab, image, affine = _phantom()
    root = tmp_path / "ds"
    write_nifti(root / "imagesTr" / "case_001.nii.gz", image, affine)
    write_nifti(root / "labelsTr" / "case_001.nii.gz", lab, affine)
    d = {
        "name": "toy",
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "modality": {"0": "CT"},
        "numTraining": 1,
        "training": [{"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}],
    }
    (root / "dataset.json").write_text(json.dumps(d))
    return root


def save_like_itksnap(volume: Volume, path: Path) -> None:
    """ITK-SNAP writes through ITK: unsigned short labels, LPS geometry converted to NIfTI by ITK."""
    img = to_sitk(Volume(volume.array.astype(np.uint16), volume.affine))
    sitk.WriteImage(img, str(path))


def test_accepts_corrected_masks_and_updates_dataset(reviewed: Path, dataset: Path) -> None:
    lab, image, affine = _phantom()
    corrected = lab.copy()
    corrected[2:4, 3:9, 1:5] = 0  # reviewer trims the liver
    save_like_itksnap(Volume(corrected, affine), reviewed / "ct" / "segmentation.nii.gz")
    before_inputs = hashlib.sha256((reviewed.parent / "inputs" / "ct.nii.gz").read_bytes()).hexdigest()

    assert main(["review", "import", "--reviewed", str(reviewed), "--dataset", str(dataset)]) == 0

    d = json.loads((dataset / "dataset.json").read_text())
    assert d["numTraining"] == 3 == len(d["training"])
    assert d["training"][1] == {"image": "./imagesTr/case_002.nii.gz", "label": "./labelsTr/case_002.nii.gz"}
    new_label = read_nifti(dataset / "labelsTr" / "case_002.nii.gz")
    np.testing.assert_array_equal(new_label.array, corrected)
    new_image = nib.load(str(dataset / "imagesTr" / "case_002.nii.gz"))
    np.testing.assert_array_equal(np.asarray(new_image.dataobj), image)
    np.testing.assert_allclose(new_image.affine, new_label.affine, atol=1e-6)
    prov = d["provenance"]["case_002"]
    assert prov["corrected_by"] == "human review" and prov["modified_in_review"] is True
    assert prov["model_checkpoint_sha256"] == "ab" * 32 and prov["imported"]
    assert d["provenance"]["case_003"]["modified_in_review"] is False  # ct_copy was left as predicted
    assert "inputs" not in json.dumps(d)  # no original paths leak into the dataset
    assert (
        hashlib.sha256((reviewed.parent / "inputs" / "ct.nii.gz").read_bytes()).hexdigest() == before_inputs
    )

    from medunet.data.layouts import load_dataset

    datalist = load_dataset(dataset)
    assert len(datalist.training) == 3

    # a second import of the same masks adds nothing
    assert main(["review", "import", "--reviewed", str(reviewed), "--dataset", str(dataset)]) == 0
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 3


def test_rejects_mask_on_another_grid(reviewed: Path, dataset: Path, capsys) -> None:
    lab, _, affine = _phantom()
    moved = affine.copy()
    moved[:3, 3] += (1.0, 0.0, 0.0)
    save_like_itksnap(Volume(lab, moved), reviewed / "ct" / "segmentation.nii.gz")
    before = (dataset / "dataset.json").read_bytes()
    assert main(["review", "import", "--reviewed", str(reviewed / "ct"), "--dataset", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "segmentation.nii.gz" in err and "grid" in err
    assert (dataset / "dataset.json").read_bytes() == before
    assert not (dataset / "labelsTr" / "case_002.nii.gz").exists()


def test_rejects_unknown_label_and_wrong_shape(reviewed: Path, dataset: Path, capsys) -> None:
    lab, _, affine = _phantom()
    bad = lab.copy()
    bad[0, 0, 0] = 7
    save_like_itksnap(Volume(bad, affine), reviewed / "ct" / "segmentation.nii.gz")
    save_like_itksnap(Volume(lab[:, :, :-1].copy(), affine), reviewed / "ct_copy" / "segmentation.nii.gz")
    assert main(["review", "import", "--reviewed", str(reviewed), "--dataset", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "unknown label value(s) [7]" in err and str(reviewed / "ct" / "segmentation.nii.gz") in err
    assert "shape" in err and str(reviewed / "ct_copy" / "segmentation.nii.gz") in err
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1


def test_creates_new_dataset_when_absent(reviewed: Path, tmp_path: Path) -> None:
    target = tmp_path / "new_ds"
    assert main(["review", "import", "--reviewed", str(reviewed), "--dataset", str(target)]) == 0
    d = json.loads((target / "dataset.json").read_text())
    assert d["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert d["numTraining"] == 2
    assert (target / "labelsTr" / "reviewed_001.nii.gz").is_file()
