"""read_nifti / write_nifti: round trip, ITK's sform/qform rule checked against SimpleITK, squeezing."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medunet.errors import GeometryError
from medunet.io.itk_io import read_itk
from medunet.io.nifti import read_nifti, write_nifti


def rotated(theta: float, spacing=(1.0, 2.0, 3.0), origin=(5.0, -7.0, 11.0)) -> np.ndarray:
    aff = np.eye(4)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff[:3, :3] = rot @ np.diag(spacing)
    aff[:3, 3] = origin
    return aff


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_round_trip_and_itk_agree(tmp_path: Path, rng: np.random.Generator, suffix: str) -> None:
    data = rng.integers(-5, 5, (6, 5, 4)).astype(np.int16)
    path = write_nifti(tmp_path / f"a{suffix}", data, rotated(0.3))
    vol = read_nifti(path)
    np.testing.assert_array_equal(vol.array, data)
    np.testing.assert_allclose(vol.affine, rotated(0.3), atol=1e-5)
    itk = read_itk(path)  # a second library places it identically
    np.testing.assert_allclose(itk.affine, vol.affine, atol=1e-4)
    np.testing.assert_array_equal(itk.array, data)
    hdr = nib.load(path).header
    assert hdr["descrip"].item() == b"" and hdr["aux_file"].item() == b"" and hdr["intent_name"].item() == b""


@pytest.mark.parametrize(("q_code", "s_code"), [(1, 1), (1, 2), (2, 4), (0, 2), (1, 0)])
def test_form_choice_matches_simpleitk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, q_code: int, s_code: int
) -> None:
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), rotated(0.0))
    img.set_qform(rotated(0.0), code=q_code)
    img.set_sform(rotated(0.2, origin=(9.0, 0.0, 0.0)), code=s_code)
    nib.save(img, tmp_path / "x.nii")
    with caplog.at_level(logging.WARNING):
        vol = read_nifti(tmp_path / "x.nii")
    assert ("disagree" in caplog.text) == bool(q_code and s_code)
    np.testing.assert_allclose(read_itk(tmp_path / "x.nii").affine, vol.affine, atol=1e-4)
    expected = rotated(0.2, origin=(9.0, 0.0, 0.0)) if s_code == 1 or not q_code else rotated(0.0)
    np.testing.assert_allclose(vol.affine, expected, atol=1e-5)


def test_qform_used_when_sform_absent(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.uint8), rotated(0.5))
    img.set_qform(rotated(0.5), code=1)
    img.set_sform(np.eye(4), code=0)
    nib.save(img, tmp_path / "q.nii.gz")
    np.testing.assert_allclose(read_nifti(tmp_path / "q.nii.gz").affine, rotated(0.5), atol=1e-5)


def test_sheared_sform_refused(tmp_path: Path) -> None:
    aff = rotated(0.1)
    aff[1, 2] = 0.4
    img = nib.Nifti1Image(np.zeros((3, 3, 3), np.int16), aff)
    img.set_sform(aff, code=1)
    nib.save(img, tmp_path / "s.nii")
    with pytest.raises(GeometryError, match="s.nii.*sheared"):
        read_nifti(tmp_path / "s.nii")


def test_singleton_4th_dim_squeezed(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.float32), np.eye(4)), tmp_path / "t.nii.gz")
    assert read_nifti(tmp_path / "t.nii.gz").array.shape == (3, 4, 5)


def test_nan_allowed_when_unchecked(tmp_path: Path) -> None:
    data = np.zeros((3, 3, 3), np.float32)
    data[0, 0, 0] = np.nan
    path = write_nifti(tmp_path / "n.nii.gz", data, np.eye(4))
    assert np.isnan(read_nifti(path, check_finite=False).array[0, 0, 0])
