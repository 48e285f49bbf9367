"""Every DICOM object medunet writes passes dciodvfy (dicom3tools) with no errors; warnings are allowed.

Covers the synthetic series (``medunet synth --dicom`` and ``write_dicom_series`` with awkward geometry),
and the SEG and RTSTRUCT written for such a series. dciodvfy tests skip with a reason when the tool is not
installed (.ci/run installs the Debian package dicom3tools where apt-get exists); the DS-length and Type 2
checks below run everywhere.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_checks import dciodvfy_errors, requires_dciodvfy
from pydicom.uid import RLELossless

from medunet.cli import main
from medunet.export.dicom_seg import write_dicom_seg
from medunet.export.rtstruct import write_rtstruct
from medunet.io.dicom import read_dicom_series
from medunet.io.dicom_write import write_dicom_series
from medunet.io.volume import Volume

LABELS = {0: "background", 1: "liver", 2: "right_kidney"}


def awkward_affine() -> np.ndarray:
    """Rotated in-plane, spacings and origin whose decimal expansions exceed DS's 16 characters."""
    theta = 0.3
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([0.7777777777777, 0.8333333333333, 2.5])
    aff[:3, 3] = [-123.456789123456, 45.123456789123, -7.333333333333]
    return aff


def phantom(shape: tuple[int, int, int] = (20, 18, 6)) -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros(shape, np.uint8)
    labels[2:9, 3:12, 1:5] = 1
    labels[4:7, 6:9, 2] = 0  # a hole
    labels[12:18, 2:7, 2:6] = 2
    return labels, labels.astype(np.float32) * 60.0 - 20.0


@pytest.mark.parametrize(("modality", "transfer_syntax"), [("CT", None), ("MR", None), ("CT", RLELossless)])
def test_synthetic_series_ds_values_fit_and_type2_present(
    tmp_path: Path, modality: str, transfer_syntax: str | None
) -> None:
    _, image = phantom()
    kwargs = {"transfer_syntax": transfer_syntax} if transfer_syntax else {}
    files = write_dicom_series(
        Volume(image, awkward_affine()), tmp_path / "s", modality=modality, rescale_slope=1 / 3, **kwargs
    )
    for f in files:
        ds = pydicom.dcmread(f)
        for elem in ds:
            if elem.VR == "DS" and elem.value not in (None, ""):
                values = elem.value if elem.VM > 1 else [elem.value]
                assert all(len(str(v)) <= 16 for v in values), elem.keyword
        for keyword in ("Manufacturer", "AcquisitionNumber", "PatientPosition", "Laterality", "StudyID"):
            assert keyword in ds, keyword
    # geometry survives the 16-character limit: positions within a micrometre of the affine
    volume = read_dicom_series(tmp_path / "s")
    np.testing.assert_allclose(volume.affine, awkward_affine(), atol=1e-5)
    if modality == "CT":
        np.testing.assert_allclose(volume.array, image, atol=0.5)


@requires_dciodvfy
@pytest.mark.parametrize("modality", ["ct", "mri"])
def test_medunet_synth_dicom_passes_dciodvfy(tmp_path: Path, modality: str) -> None:
    out = tmp_path / "synth"
    args = ["synth", modality, "--out", str(out), "--cases", "1", "--test-cases", "0", "--size", "32"]
    assert main([*args, "--dicom"]) == 0
    files = sorted((out / "dicom").rglob("*.dcm"))
    assert len(files) >= 8
    for f in files:
        assert dciodvfy_errors(f) == [], f.name


@requires_dciodvfy
@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_written_series_seg_and_rtstruct_pass_dciodvfy(tmp_path: Path, modality: str) -> None:
    labels, image = phantom()
    files = write_dicom_series(
        Volume(image, awkward_affine()),
        tmp_path / "s",
        modality=modality,
        patient_name="Doe^Jane",
        rescale_slope=1 / 3,
    )
    for f in files:
        assert dciodvfy_errors(f) == [], f.name
    volume = read_dicom_series(tmp_path / "s")
    seg = write_dicom_seg(tmp_path / "seg.dcm", labels, volume.affine, volume.meta["source_files"], LABELS)
    rt = write_rtstruct(tmp_path / "rt.dcm", labels, volume.affine, volume.meta["source_files"], LABELS)
    assert dciodvfy_errors(seg) == []
    assert dciodvfy_errors(rt) == []
    for path in (seg, rt):  # the outputs carry the patient: DICOM requires it (README table)
        assert str(pydicom.dcmread(path).PatientName) == "Doe^Jane"
