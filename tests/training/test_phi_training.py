"""Identity planted in DICOM headers never leaves DICOM: a bundle training on DICOM series (MLflow on)
and ``medunet predict`` with the trained checkpoint leave no byte of it in any non-DICOM output, in the
MLflow store, or in the logs.

The images of the training set are DICOM series directories whose headers carry a patient name, ID, birth
date, accession number, institution and referring physician; labels are NIfTI. The training goes through
the bundle's own ``train.json`` wiring (``LoadImaged``, caching, validation previews, MLflow params,
metrics, artifacts and the logged model), so any path by which header values could reach an output is
exercised, not bypassed.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from tiny_data import BUNDLE, bundle_cli_args, make_tiny_ct_dataset

from medunet.io.dicom_write import write_dicom_series
from medunet.io.volume import Volume

PLANTED = {
    "PatientName": "Plantedname^Josephine",
    "PatientID": "PID-73914",
    "PatientBirthDate": "19230405",
    "AccessionNumber": "ACC98765",
    "InstitutionName": "Hospital Of Planted Secrets",
    "ReferringPhysicianName": "Referrerdoc^Albert",
}
#: Every planted value, and the distinctive parts a component could render on its own.
NEEDLES = (*PLANTED.values(), "Plantedname", "Josephine", "73914", "1923-04-05", "Secrets", "Referrerdoc")


def plant_dicom_dataset(root: Path, n_cases: int = 4) -> Path:
    """The tiny CT dataset with each image replaced by a DICOM series carrying ``PLANTED`` identity."""
    make_tiny_ct_dataset(root, n_cases=n_cases)
    meta = json.loads((root / "dataset.json").read_text())
    for entry in meta["training"]:
        nifti = root / entry["image"]
        img = nib.load(nifti)
        series = root / "dicom" / nifti.name.removesuffix(".nii.gz")
        files = write_dicom_series(
            Volume(np.asarray(img.dataobj, dtype=np.int16), img.affine),
            series,
            patient_name=PLANTED["PatientName"],
            patient_id=PLANTED["PatientID"],
            patient_birth_date=PLANTED["PatientBirthDate"],
        )
        for file in files:
            ds = pydicom.dcmread(file)
            for keyword in ("AccessionNumber", "InstitutionName", "ReferringPhysicianName"):
                setattr(ds, keyword, PLANTED[keyword])
            ds.save_as(file)
        (root / "reference").mkdir(exist_ok=True)
        nifti.rename(root / "reference" / nifti.name)  # out of the dataset, kept to compare
        entry["image"] = f"./dicom/{series.name}"
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


def _blobs(path: Path) -> Iterator[bytes]:
    """The bytes of ``path``, and its decompressed content (gzip, zip members such as a torch checkpoint)."""
    data = path.read_bytes()
    yield data
    if data[:2] == b"\x1f\x8b":
        yield gzip.decompress(data)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                yield name.encode()
                yield archive.read(name)


def leaks(paths: list[Path]) -> list[str]:
    found = []
    for path in paths:
        found += [f"{n!r} in {path}" for n in NEEDLES if n in path.as_posix()]
        for blob in _blobs(path):
            found += [f"{n!r} in {path}" for n in NEEDLES if n.encode() in blob]
    return sorted(set(found))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """(dataset, run folder, every output line) of a 2-epoch ``python -m monai.bundle run training`` on
    the planted series, MLflow recording into the run folder. A subprocess, as a user runs it: the bundle's
    logging.conf replaces the handlers of the process, and stdout/stderr then hold every log line."""
    root = tmp_path_factory.mktemp("phi")
    dataset = plant_dicom_dataset(root / "dataset")
    out = root / "run"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(BUNDLE / "train.json"),
        "--meta_file",
        str(BUNDLE / "metadata.json"),
        "--logging_file",
        str(BUNDLE / "logging.conf"),
        *bundle_cli_args(dataset, out, max_epochs=2, **{"mlflow_tracker#enabled": True}),
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dataset, out, (proc.stdout + proc.stderr).splitlines()


def test_the_planted_values_are_in_the_source_series(trained: tuple[Path, Path, list[str]]) -> None:
    """Control: the scan below finds each value where it is (the DICOM inputs)."""
    dataset = trained[0]
    source = b"".join(p.read_bytes() for p in (dataset / "dicom").rglob("*") if p.is_file())
    missing = [n for n in PLANTED.values() if n.encode() not in source]
    assert not missing


def test_training_on_dicom_series_reads_the_dicom_images(trained: tuple[Path, Path, list[str]]) -> None:
    """The run trained on the series (not on nothing): fingerprint spacing from DICOM, validation scored."""
    _, out, _ = trained
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert fingerprint["n_cases"] == 4
    assert np.allclose(fingerprint["spacing"]["median"], [2.0, 2.0, 3.0])
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # header + 2 epochs
    assert (out / "best.pt").is_file() and (out / "mlflow.db").is_file()


def test_no_planted_identity_in_any_training_output_or_the_mlflow_store(
    trained: tuple[Path, Path, list[str]],
) -> None:
    _, out, _ = trained
    outputs = [p for p in out.rglob("*") if p.is_file()]
    assert (out / "mlflow.db") in outputs
    assert len([p for p in outputs if "mlartifacts" in p.parts]) >= 10  # params, metrics, model, previews
    assert leaks(outputs) == []


def test_no_planted_identity_in_training_logs(trained: tuple[Path, Path, list[str]]) -> None:
    lines = trained[2]
    assert any("validation epoch 2" in line for line in lines)  # the handler saw the whole run
    assert [line for line in lines if any(n in line for n in NEEDLES)] == []


def test_predict_with_the_trained_model_keeps_identity_in_dicom_outputs_only(
    trained: tuple[Path, Path, list[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``medunet predict --rtstruct`` on a planted series: SEG and RTSTRUCT carry it; nothing else does."""
    from medunet.cli import main

    dataset, run, _ = trained
    out = tmp_path / "pred"
    with caplog.at_level(logging.DEBUG):
        rc = main(
            [
                "predict",
                "--checkpoint",
                str(run / "best.pt"),
                "--input",
                str(dataset / "dicom" / "case_000"),
                "--output",
                str(out),
                "--rtstruct",
                "--device",
                "cpu",
            ]
        )
    assert rc == 0
    files = [p for p in out.rglob("*") if p.is_file()]
    dicom = [p for p in files if p.suffix == ".dcm"]
    assert {p.name for p in dicom} == {"segmentation.dcm", "rtstruct.dcm"}
    for path in dicom:  # DICOM requires the Patient and Study modules of the source
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == PLANTED["PatientName"] and ds.PatientID == PLANTED["PatientID"]
        assert ds.AccessionNumber == PLANTED["AccessionNumber"]
    others = [p for p in files if p not in dicom]
    assert {"segmentation.nii.gz", "case.json", "volumes.csv", "labels.txt"} <= {p.name for p in others}
    assert leaks(others) == []
    assert [n for n in NEEDLES if n in caplog.text] == []


def test_the_bundle_loader_reads_a_series_like_its_nifti_with_geometry_only(
    trained: tuple[Path, Path, list[str]],
) -> None:
    """Known answer: the loader's DICOM series equals the NIfTI it was written from (voxels, RAS affine),
    and the tensor's metadata holds no header value of the series."""
    from monai.transforms import Compose

    from medunet.plans import Plans
    from medunet.transforms import preprocessing

    dataset, run, _ = trained
    plans = Plans.load(run / "plans.json")
    load = Compose(preprocessing(plans, keys=("image",), crop_foreground=False)[:1])
    from_dicom = load({"image": str(dataset / "dicom" / "case_001")})["image"]
    from_nifti = load({"image": str(dataset / "reference" / "case_001.nii.gz")})["image"]
    np.testing.assert_array_equal(np.asarray(from_dicom), np.asarray(from_nifti))
    np.testing.assert_allclose(np.asarray(from_dicom.affine), np.asarray(from_nifti.affine), atol=1e-4)
    meta = repr(dict(from_dicom.meta))
    assert [n for n in NEEDLES if n in meta] == []


def test_dataset_hash_covers_the_files_of_a_series_folder(
    trained: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """A changed slice of a series changes the dataset hash (a resumed run then refuses the changed data)."""
    import shutil

    from medunet.data.layouts import dataset_hash, load_dataset

    copy = tmp_path / "copy"
    shutil.copytree(trained[0], copy)
    before = dataset_hash(load_dataset(copy))
    assert dataset_hash(load_dataset(copy)) == before
    slice_file = sorted((copy / "dicom" / "case_002").iterdir())[3]
    data = bytearray(slice_file.read_bytes())
    data[-1] ^= 0xFF  # one pixel byte
    slice_file.write_bytes(bytes(data))
    assert dataset_hash(load_dataset(copy)) != before


def test_bundle_inference_writes_seg_and_rtstruct_for_dicom_series(
    trained: tuple[Path, Path, list[str]], tmp_path: Path
) -> None:
    """``monai.bundle run inference ... --rtstruct true`` on a folder of series: per series a NIfTI mask,
    a DICOM SEG and an RTSTRUCT referencing that series, valid for dciodvfy where it is installed."""
    from dicom_checks import DCIODVFY, dciodvfy_errors

    dataset, run, _ = trained
    out = tmp_path / "pred"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "inference",
        "--config_file",
        str(BUNDLE / "inference.json"),
        "--meta_file",
        str(BUNDLE / "metadata.json"),
        "--checkpoint",
        str(run / "best.pt"),
        "--input",
        str(dataset / "dicom"),
        "--output_dir",
        str(out),
        "--device",
        "cpu",
        "--rtstruct",
        "true",
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = [f"case_{i:03d}" for i in range(4)]
    expected = {f"{c}_{kind}" for c in cases for kind in ("seg.nii.gz", "seg.dcm", "rtstruct.dcm")}
    assert {p.name for p in out.iterdir()} == expected
    for case in cases:
        source = pydicom.dcmread(next((dataset / "dicom" / case).iterdir()), stop_before_pixels=True)
        seg = pydicom.dcmread(out / f"{case}_seg.dcm")
        rt = pydicom.dcmread(out / f"{case}_rtstruct.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
        frame = rt.ReferencedFrameOfReferenceSequence[0]
        assert frame.FrameOfReferenceUID == source.FrameOfReferenceUID
        series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        rois = {r.ROIName for r in rt.StructureSetROISequence}
        assert rois and rois <= {"liver", "left_kidney", "right_kidney"}
        assert seg.PatientID == rt.PatientID == PLANTED["PatientID"]
        if DCIODVFY is not None:
            assert dciodvfy_errors(out / f"{case}_seg.dcm") == []
            assert dciodvfy_errors(out / f"{case}_rtstruct.dcm") == []
