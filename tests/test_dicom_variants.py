"""Real-world header variants: each gives a valid SEG and RTSTRUCT that match the mask, or a typed error.

The series are written with pydicom alone (tests/dicom_variants.py). For every variant: medunet's reader
builds the volume, the label map is recovered from the pixel values (HU = 100 * label), and the SEG and
RTSTRUCT writers run. Valid outputs must reproduce the mask in source pixel space slice by slice (SEG frames
read back with highdicom; RTSTRUCT contours rasterised by tests/dicom_checks.py), reference the source
instances by their file-meta UIDs, carry the expected Patient/Study values and pass dciodvfy. Variants that
cannot give a valid object must raise DicomHeaderError naming the series and the attribute, and leave no
output file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from dicom_checks import DCIODVFY, dciodvfy_errors, dice, rasterise_rtstruct
from dicom_variants import (
    LABELS,
    PATIENT_NAME,
    VARIANTS,
    Variant,
    ct_series,
    reference_masks,
    save_series,
    write_variant,
)

from medunet.errors import DicomHeaderError
from medunet.export.dicom_seg import write_dicom_seg
from medunet.export.rtstruct import write_rtstruct
from medunet.io.dicom import read_dicom_series
from medunet.io.volume import Volume


def test_corpus_has_at_least_30_variants_of_both_kinds() -> None:
    names = [v.name for v in VARIANTS]
    assert len(names) == len(set(names)) >= 30
    assert sum(v.error is None for v in VARIANTS) >= 20
    assert {v.error for v in VARIANTS} >= {
        "SOPClassUID",
        "SOPInstanceUID",
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
    }


def _read_labels(folder: Path) -> tuple[Volume, np.ndarray]:
    volume = read_dicom_series(folder)
    labels = np.rint(volume.array / 100.0).astype(np.uint8)
    return volume, labels


def _series_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).get("SeriesInstanceUID", "") or "")


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: v.name)
def test_variant_gives_valid_outputs_or_a_named_error(variant: Variant, tmp_path: Path) -> None:
    masks = reference_masks()
    files, uids = write_variant(variant, tmp_path / "series", masks)
    volume, labels = _read_labels(tmp_path / "series")
    assert (
        np.bincount(labels.ravel(), minlength=3).tolist() == np.bincount(masks.ravel(), minlength=3).tolist()
    )
    seg_path, rt_path = tmp_path / "seg.dcm", tmp_path / "rtstruct.dcm"
    args = (labels, volume.affine, volume.meta["source_files"], LABELS)

    if variant.error is not None:
        for writer, path in ((write_dicom_seg, seg_path), (write_rtstruct, rt_path)):
            with pytest.raises(DicomHeaderError) as info:
                writer(path, *args)
            err = info.value
            assert err.attribute == variant.error
            assert variant.error in str(err)
            series = _series_uid(files) or "(no SeriesInstanceUID)"
            assert err.series == series and series in str(err)
            assert str(tmp_path / "series") in str(err)  # the folder, so a user finds the series
            assert "Test^Patient" not in str(err)
            assert not path.exists()
        return

    write_dicom_seg(seg_path, *args)
    write_rtstruct(rt_path, *args)
    sources = {uid: pydicom.dcmread(f, stop_before_pixels=True) for uid, f in zip(uids, files, strict=True)}
    source = sources[uids[0]]

    # SEG: one frame per source slice and segment, equal to the mask in source pixel space
    seg = hd.seg.segread(str(seg_path))
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == set(uids)
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=[1, 2], assert_missing_frames_are_empty=True
    )
    assert pixels.shape == (len(uids), *masks.shape[1:], 2)
    for number in (1, 2):
        np.testing.assert_array_equal(pixels[..., number - 1], masks == number)

    # RTSTRUCT: contours rasterised on the source grid give the mask back
    rt = pydicom.dcmread(rt_path)
    rasters = rasterise_rtstruct(rt, sources, uids)
    for number in (1, 2):
        assert dice(rasters[LABELS[number]], masks == number) >= 0.95
    contour_images = {
        str(item.ReferencedSOPInstanceUID)
        for item in rt.ReferencedFrameOfReferenceSequence[0]
        .RTReferencedStudySequence[0]
        .RTReferencedSeriesSequence[0]
        .ContourImageSequence
    }
    assert contour_images == set(uids)

    for out in (pydicom.dcmread(seg_path), rt):
        assert out.StudyInstanceUID == source.StudyInstanceUID
        assert out.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert "Private" not in repr(out) and not any(e.tag.is_private for e in out)
        for keyword, value in variant.expect.items():
            actual = out.get(keyword, "")
            if isinstance(actual, pydicom.multival.MultiValue):
                actual = "\\".join(map(str, actual))
            actual = str(actual)
            assert actual == value, f"{keyword}: {actual!r} != {value!r}"
        if DCIODVFY is not None:
            path = seg_path if out.Modality == "SEG" else rt_path
            assert dciodvfy_errors(path) == [], f"{out.Modality} of {variant.name}"


def test_source_files_are_not_modified(tmp_path: Path) -> None:
    variant = next(v for v in VARIANTS if v.name == "sop_class_uid_empty")
    files, _ = write_variant(variant, tmp_path / "series")
    before = [f.read_bytes() for f in files]
    volume, labels = _read_labels(tmp_path / "series")
    write_dicom_seg(tmp_path / "seg.dcm", labels, volume.affine, volume.meta["source_files"], LABELS)
    assert [f.read_bytes() for f in files] == before


def test_predict_batch_writes_good_series_and_names_the_bad_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``medunet predict --rtstruct`` over three series: the two repairable ones are written in full, the
    third is refused by name, and no non-DICOM output carries the patient's identity."""
    import torch

    from medunet.cli import main
    from medunet.inference import Predictor
    from medunet.plans import Intensity, Plans

    class BandNet(torch.nn.Module):  # class k where the normalised intensity is near k / 2 (HU = 50 * label)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            centers = torch.tensor([0.0, 0.5, 1.0]).view(1, -1, *([1] * (x.ndim - 2)))
            return -20.0 * (x - centers) ** 2

    plans = Plans(
        labels=LABELS,
        target_spacing=(0.7, 0.8, 2.5),
        patch_size=(16, 16, 4),
        intensity=Intensity("ct_window", 0.0, 100.0),
    )

    def from_checkpoint(cls, path, **kw):  # noqa: ANN001, ANN202
        kw.pop("engine", None), kw.pop("engine_model", None)  # known-answer net runs eagerly (tests/engines)
        p = cls([BandNet()], plans, **kw)
        p.checkpoint, p.checkpoints, p.checkpoint_sha256 = Path(path[0]), [Path(path[0])], "0" * 64
        return p

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(from_checkpoint))
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"weights")
    masks = reference_masks()
    inputs = tmp_path / "in"
    for name, mutate in (
        ("a_empty_sop_class", lambda ds: setattr(ds, "SOPClassUID", "")),
        ("b_no_frame_of_reference", lambda ds: delattr(ds, "FrameOfReferenceUID")),
        ("c_no_patient_name", lambda ds: delattr(ds, "PatientName")),
    ):
        datasets = ct_series(masks, hu_per_label=50, series_description=name)
        for ds in datasets:
            mutate(ds)
        save_series(datasets, inputs / name)
    out = tmp_path / "out"
    folders = [str(p) for p in sorted(inputs.iterdir())]
    args = ["predict", "--checkpoint", str(ckpt), "--input", *folders, "--output", str(out)]
    rc = main([*args, "--rtstruct", "--device", "cpu", "--no-crop", "--no-tta", "--no-postprocess"])
    assert rc == 1
    cases = sorted(p.name for p in out.iterdir())
    assert len(cases) == 2 and cases[0].startswith("a_empty_sop_class") and cases[1].startswith("c_")
    for case in cases:
        files = {p.name for p in (out / case).iterdir()}
        assert {"segmentation.nii.gz", "segmentation.dcm", "rtstruct.dcm", "case.json"} <= files
        seg = pydicom.dcmread(out / case / "segmentation.dcm")
        assert len(seg.SegmentSequence) == 2
        rt = pydicom.dcmread(out / case / "rtstruct.dcm")
        assert [str(r.ROIName) for r in rt.StructureSetROISequence] == ["liver", "left_kidney"]
    err = capsys.readouterr().err
    assert "1 failure" in err
    failure = next(
        line for line in err.splitlines() if "b_no_frame_of_reference" in line and "series" in line
    )
    assert "FrameOfReferenceUID" in failure
    assert not list(out.glob(".*"))  # nothing half-written for the refused series

    # patient data: SEG and RTSTRUCT carry the Patient/Study modules (DICOM requires it); no other output
    # file, file name or log line carries the planted identity (README "Patient data" table)
    needles = [PATIENT_NAME, "Test", "PID0001", "19700101", "ACC0001", "Referring^Doctor", "Referring"]
    for case in cases:
        for path in (out / case).rglob("*"):
            assert not any(n in path.name for n in needles)
            if path.suffix == ".dcm":
                ds = pydicom.dcmread(path)
                assert (ds.PatientID, ds.AccessionNumber) == ("PID0001", "ACC0001")
                continue
            data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
            for needle in needles:
                assert needle.encode() not in data, f"{needle!r} in {path.name}"
    assert str(pydicom.dcmread(out / cases[0] / "rtstruct.dcm").PatientName) == PATIENT_NAME
    assert not any(n in err for n in needles)
