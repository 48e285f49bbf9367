"""PHI planted in DICOM headers never reaches NIfTI bytes, file names, Volume.meta or logs."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import numpy as np
import pytest

from medunet.cli import main as cli_main
from medunet.io.dicom import list_series, read_dicom_series
from medunet.io.dicom_write import write_dicom_series
from medunet.io.volume import Volume

PLANTED = ("PHI^Planted^Name", "PLANTED-ID-12345", "19010203", "19991231")
NEEDLES = (*PLANTED, "Planted", "PLANTED", "PHI")


@pytest.fixture
def phi_series(tmp_path: Path) -> Path:
    volume = Volume(np.arange(4 * 4 * 3, dtype=np.int16).reshape(4, 4, 3), np.eye(4))
    write_dicom_series(
        volume,
        tmp_path / "dicom",
        patient_name=PLANTED[0],
        patient_id=PLANTED[1],
        patient_birth_date=PLANTED[2],
        study_date=PLANTED[3],
        series_description="abdomen",
    )
    assert PLANTED[0].encode() in next((tmp_path / "dicom").iterdir()).read_bytes()  # the test can fail
    return tmp_path / "dicom"


def assert_clean(text: str) -> None:
    for needle in NEEDLES:
        assert needle not in text, f"PHI {needle!r} leaked"


def test_volume_meta_has_no_phi(phi_series: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        vol = read_dicom_series(phi_series)
        infos = list_series(phi_series)
    assert_clean(repr(vol.meta))
    assert_clean(repr(infos))
    assert_clean(caplog.text)
    assert set(vol.meta) >= {"modality", "series_instance_uid", "sop_instance_uids", "source_files"}


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_converted_nifti_has_no_phi(phi_series: Path, tmp_path: Path, suffix: str, capsys) -> None:
    out = tmp_path / "out" / f"case{suffix}"
    assert cli_main(["-v", "convert", str(phi_series), str(out)]) == 0
    raw = out.read_bytes()
    data = gzip.decompress(raw) if suffix == ".nii.gz" else raw
    for needle in NEEDLES:
        assert needle.encode() not in data
    assert_clean(" ".join(p.name for p in out.parent.rglob("*")))
    captured = capsys.readouterr()
    assert_clean(captured.out + captured.err)


def test_batch_names_and_listing_have_no_phi(phi_series: Path, tmp_path: Path, capsys) -> None:
    assert cli_main(["convert", str(phi_series), str(phi_series), str(tmp_path / "batch")]) == 0
    assert_clean(" ".join(p.name for p in (tmp_path / "batch").iterdir()))
    assert cli_main(["dicom", "list", str(phi_series)]) == 0
    captured = capsys.readouterr()
    assert "abdomen" in captured.out
    assert_clean(captured.out + captured.err)
