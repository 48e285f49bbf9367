"""write_dicom_series: geometry and voxels read back by a second library (SimpleITK) and by pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import ImplicitVRLittleEndian, JPEGLSLossless, RLELossless

from medunet.errors import GeometryError
from medunet.io.dicom_write import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, write_dicom_series
from medunet.io.volume import Volume, ras_affine_to_lps


def oblique_affine(theta: float = 0.3) -> np.ndarray:
    """An anisotropic, rotated, axis-permuted RAS affine (i -> ~A, j -> ~R, k -> S)."""
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.array([[0, -0.8, 0], [0.9, 0, 0], [0, 0, 2.5]])
    aff[:3, 3] = [10.0, -20.0, 30.0]
    return aff


def read_back_sitk(files: list[Path]) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    return reader.Execute()


@pytest.mark.parametrize("transfer_syntax", [None, ImplicitVRLittleEndian, JPEGLSLossless])
def test_series_matches_volume_in_simpleitk(
    tmp_path: Path, rng: np.random.Generator, transfer_syntax
) -> None:
    array = rng.integers(-1000, 2000, size=(8, 7, 6)).astype(np.int16)
    volume = Volume(array, oblique_affine())
    kwargs = {} if transfer_syntax is None else {"transfer_syntax": transfer_syntax}
    files = write_dicom_series(volume, tmp_path / "s", **kwargs)
    assert len(files) == 6 and all(f.is_file() for f in files)
    img = read_back_sitk(files)
    spacing, origin, direction = ras_affine_to_lps(volume.affine)
    np.testing.assert_allclose(img.GetSpacing(), spacing, atol=1e-5)
    np.testing.assert_allclose(img.GetOrigin(), origin, atol=1e-5)
    np.testing.assert_allclose(np.reshape(img.GetDirection(), (3, 3)), direction, atol=1e-6)
    np.testing.assert_array_equal(np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0)), array)


def test_row_column_mapping_in_headers(tmp_path: Path) -> None:
    array = np.zeros((5, 3, 2), dtype=np.int16)
    array[4, 0, 1] = 7  # last column, first row, second slice
    aff = np.diag([0.5, 2.0, 3.0, 1.0])  # RAS: i -> R, j -> A
    files = write_dicom_series(Volume(array, aff), tmp_path)
    ds = pydicom.dcmread(files[1])
    assert (ds.Rows, ds.Columns) == (3, 5)
    np.testing.assert_allclose([float(v) for v in ds.PixelSpacing], [2.0, 0.5])  # row spacing first
    np.testing.assert_allclose([float(v) for v in ds.ImageOrientationPatient], [-1, 0, 0, 0, -1, 0])
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], [0, 0, 3.0])
    assert ds.pixel_array[0, 4] == 7
    assert ds.InstanceNumber == 2 and ds.SOPClassUID == CT_IMAGE_STORAGE
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID


def test_float_values_with_rescale_and_mr(tmp_path: Path) -> None:
    array = np.linspace(-5.0, 5.0, 4 * 4 * 3).reshape(4, 4, 3)
    files = write_dicom_series(
        Volume(array, np.eye(4)), tmp_path, modality="MR", rescale_slope=0.01, rescale_intercept=-2.0
    )
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == MR_IMAGE_STORAGE and ds.Modality == "MR"
    real = ds.pixel_array.astype(float) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(real, array[:, :, 0].T, atol=0.005 + 1e-9)


def test_uint16_used_when_values_exceed_int16(tmp_path: Path) -> None:
    array = np.full((3, 3, 2), 60000, dtype=np.uint16)
    ds = pydicom.dcmread(write_dicom_series(Volume(array, np.eye(4)), tmp_path)[0])
    assert ds.PixelRepresentation == 0 and int(ds.pixel_array.max()) == 60000


def test_shared_uids_and_rle(tmp_path: Path) -> None:
    files = write_dicom_series(
        Volume(np.ones((4, 4, 3), np.int16), np.eye(4)),
        tmp_path,
        series_instance_uid="1.2.3.4",
        study_instance_uid="1.2.3",
        transfer_syntax=RLELossless,
    )
    headers = [pydicom.dcmread(f) for f in files]
    assert {h.SeriesInstanceUID for h in headers} == {"1.2.3.4"}
    assert len({h.SOPInstanceUID for h in headers}) == 3
    assert all((h.pixel_array == 1).all() for h in headers)


def test_sheared_volume_refused_and_nothing_written(tmp_path: Path) -> None:
    aff = np.eye(4)
    aff[0, 2] = 0.5  # slice axis leans along x
    with pytest.raises(GeometryError, match="sheared"):
        write_dicom_series(Volume(np.zeros((3, 3, 3)), aff), tmp_path / "out")
    assert not list((tmp_path / "out").glob("*.dcm"))
