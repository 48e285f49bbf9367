"""RTSTRUCT export: contours read back with pydicom and rasterised independently on the source grid.

Source series are written with pydicom alone (tests/dicom_variants.py, or below from a real OpenKBP case);
the rasteriser (tests/dicom_checks.py) places contour points with its own reading of each slice's
ImagePositionPatient / ImageOrientationPatient / PixelSpacing and fills them by the even-odd rule.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_checks import DCIODVFY, dciodvfy_errors, dice, rasterise_rtstruct, requires_dciodvfy
from dicom_variants import LABELS, Geometry, ct_series, reference_masks, rotated_iop, save_series
from matplotlib.path import Path as PolygonPath

from medunet.export.itksnap import label_colors
from medunet.export.rtstruct import RT_STRUCTURE_SET_STORAGE, mask_contours, write_rtstruct
from medunet.io.dicom import read_dicom_series


def _even_odd(contours: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    r, c = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    centres = np.column_stack([r.ravel(), c.ravel()]).astype(float)
    out = np.zeros(shape, bool)
    for contour in contours:
        out ^= PolygonPath(contour).contains_points(centres).reshape(shape)
    return out


def test_mask_contours_trace_holes_islands_and_borders_exactly() -> None:
    mask = np.zeros((12, 14), bool)
    mask[1:8, 1:8] = True
    mask[3:5, 3:6] = False  # hole
    mask[9:12, 10:14] = True  # island touching two image borders
    mask[0, 12] = True  # single-pixel island on the border
    contours = mask_contours(mask)
    assert len(contours) == 4  # outline, hole, two islands
    assert all(c.shape[1] == 2 and len(c) >= 3 for c in contours)
    assert not any(np.allclose(c[0], c[-1]) for c in contours)  # closing vertex not repeated
    # every vertex lies half-way between an inside and an outside pixel centre
    assert all(np.all(np.abs(np.round(c * 2) - c * 2) < 1e-9) for c in contours)
    np.testing.assert_array_equal(_even_odd(contours, mask.shape), mask)
    assert mask_contours(np.zeros((5, 5), bool)) == []


def _write_source(tmp_path: Path, geometry: Geometry, masks: np.ndarray) -> tuple[list[Path], list[str]]:
    datasets = ct_series(masks, geometry)
    for ds in datasets:
        ds.PatientName = "Rt^Patient"
        ds.PatientID = "RT0001"
    files = save_series(datasets, tmp_path / "series")
    return files, [str(ds.SOPInstanceUID) for ds in datasets]


GEOMETRIES = {
    "axial_lps": Geometry(),
    # rows run towards patient Right and columns towards Anterior: storage order of a RAS-oriented array
    "axial_ras_storage": Geometry(iop=(-1.0, 0.0, 0.0, 0.0, -1.0, 0.0), origin=(30.0, 40.0, -10.0)),
    "oblique_axial": Geometry(iop=rotated_iop(0.4), origin=(-12.5, 7.25, 3.0), row_spacing=0.9),
    "coronal": Geometry(iop=(1.0, 0.0, 0.0, 0.0, 0.0, -1.0), origin=(-15.0, 20.0, 60.0), slice_spacing=3.0),
}


@pytest.mark.parametrize("name", GEOMETRIES)
def test_rtstruct_contours_rasterise_back_to_the_mask(name: str, tmp_path: Path) -> None:
    masks = reference_masks()
    files, uids = _write_source(tmp_path, GEOMETRIES[name], masks)
    volume = read_dicom_series(tmp_path / "series")
    labels = np.rint(volume.array / 100.0).astype(np.uint8)
    colors = label_colors(LABELS)
    path = write_rtstruct(
        tmp_path / "rt.dcm", labels, volume.affine, volume.meta["source_files"], LABELS, colors=colors
    )
    rt = pydicom.dcmread(path)
    sources = {uid: pydicom.dcmread(f, stop_before_pixels=True) for uid, f in zip(uids, files, strict=True)}
    rasters = rasterise_rtstruct(rt, sources, uids)
    for value in (1, 2):
        assert dice(rasters[LABELS[value]], masks == value) >= 0.95, LABELS[value]
        np.testing.assert_array_equal(rasters[LABELS[value]], masks == value)  # exact on this grid

    # a flipped axis cannot pass: the contours read as RAS (x, y negated), or mirrored across the image's
    # columns (the organs are asymmetric), no longer match the mask
    first = sources[uids[0]]
    x_dir = np.array([float(v) for v in first.ImageOrientationPatient[:3]])
    centre = np.array([float(v) for v in first.ImagePositionPatient]) + x_dir * (
        (int(first.Columns) - 1) / 2 * float(first.PixelSpacing[1])
    )
    for mistake in ("lps_read_as_ras", "columns_flipped"):
        flipped = pydicom.dcmread(path)
        for roi in flipped.ROIContourSequence:
            for contour in roi.ContourSequence:
                p = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
                if mistake == "lps_read_as_ras":
                    p[:, :2] *= -1
                else:
                    p -= 2 * np.outer((p - centre) @ x_dir, x_dir)
                contour.ContourData = [f"{v:.4f}" for v in p.ravel()]
        try:
            wrong = rasterise_rtstruct(flipped, sources, uids)
        except AssertionError:  # contours left their slices' planes: also a failure
            continue
        assert max(dice(wrong[LABELS[v]], masks == v) for v in (1, 2)) < 0.5, mistake

    # references: frame of reference, study, series, every source instance; one ROI per organ
    assert rt.SOPClassUID == RT_STRUCTURE_SET_STORAGE and rt.Modality == "RTSTRUCT"
    src = sources[uids[0]]
    assert rt.StudyInstanceUID == src.StudyInstanceUID and rt.FrameOfReferenceUID == src.FrameOfReferenceUID
    (for_ref,) = rt.ReferencedFrameOfReferenceSequence
    assert for_ref.FrameOfReferenceUID == src.FrameOfReferenceUID
    (study_ref,) = for_ref.RTReferencedStudySequence
    assert study_ref.ReferencedSOPInstanceUID == src.StudyInstanceUID
    (series_ref,) = study_ref.RTReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert [str(i.ReferencedSOPInstanceUID) for i in series_ref.ContourImageSequence] == uids
    assert {str(i.ReferencedSOPClassUID) for i in series_ref.ContourImageSequence} == {str(src.SOPClassUID)}
    rois = {int(r.ROINumber): r for r in rt.StructureSetROISequence}
    assert {n: str(r.ROIName) for n, r in rois.items()} == {1: "liver", 2: "left_kidney"}
    assert all(r.ReferencedFrameOfReferenceUID == src.FrameOfReferenceUID for r in rois.values())
    assert all(r.ROIGenerationAlgorithm == "AUTOMATIC" for r in rois.values())
    by_roi = {int(c.ReferencedROINumber): c for c in rt.ROIContourSequence}
    assert [list(map(int, by_roi[n].ROIDisplayColor)) for n in (1, 2)] == [list(colors[1]), list(colors[2])]
    assert {int(o.ReferencedROINumber) for o in rt.RTROIObservationsSequence} == {1, 2}
    assert all(o.RTROIInterpretedType == "ORGAN" for o in rt.RTROIObservationsSequence)
    # the hole and the second island are separate contours on their slices
    per_slice = {
        n: [str(c.ContourImageSequence[0].ReferencedSOPInstanceUID) for c in by_roi[n].ContourSequence]
        for n in (1, 2)
    }
    assert per_slice[1].count(uids[2]) == 2 and per_slice[1].count(uids[1]) == 1
    assert per_slice[2].count(uids[2]) == 2 and per_slice[2].count(uids[4]) == 1
    assert uids[0] not in per_slice[1] + per_slice[2]
    # Patient and Study modules copied from the source
    assert str(rt.PatientName) == "Rt^Patient" and rt.PatientID == "RT0001"
    assert rt.StudyDate == src.StudyDate and rt.AccessionNumber == src.AccessionNumber
    assert all(len(str(v)) <= 16 for c in by_roi[1].ContourSequence for v in c.ContourData)


@requires_dciodvfy
def test_rtstruct_passes_dciodvfy(tmp_path: Path) -> None:
    masks = reference_masks()
    _write_source(tmp_path, GEOMETRIES["oblique_axial"], masks)
    volume = read_dicom_series(tmp_path / "series")
    labels = np.rint(volume.array / 100.0).astype(np.uint8)
    names = {**LABELS, 3: "spleen"}  # an organ without any contour is still a listed ROI
    path = write_rtstruct(tmp_path / "rt.dcm", labels, volume.affine, volume.meta["source_files"], names)
    assert len(pydicom.dcmread(path).StructureSetROISequence) == 3
    assert dciodvfy_errors(path) == []


def _lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """The test's own NIfTI (RAS) -> DICOM (LPS) mapping: column <-> i, row <-> j, file <-> k."""
    flip = np.diag([-1.0, -1.0, 1.0])
    a = flip @ affine[:3, :3]
    origin = flip @ affine[:3, 3]
    col_spacing, row_spacing = float(np.linalg.norm(a[:, 0])), float(np.linalg.norm(a[:, 1]))
    return origin, a[:, 0] / col_spacing, a[:, 1] / row_spacing, row_spacing, col_spacing


@pytest.mark.realdata
def test_openkbp_label_map_round_trips_through_rtstruct(openkbp_dir: Path, tmp_path: Path) -> None:
    """A real head-and-neck label map -> RTSTRUCT on a DICOM series of that case: Dice >= 0.95 per organ."""
    import nibabel as nib

    meta = json.loads((openkbp_dir / "dataset.json").read_text())
    case = meta["training"][0]
    image = nib.load(str(openkbp_dir / case["image"]))
    label_img = nib.load(str(openkbp_dir / case["label"]))
    affine = label_img.affine
    assert np.allclose(image.affine, affine, atol=1e-4)
    labels = np.asarray(label_img.dataobj).astype(np.uint8)
    hu = np.asarray(image.dataobj, dtype=np.float32)
    names = {int(k): v for k, v in meta["labels"].items()}

    origin, x_dir, y_dir, row_spacing, col_spacing = _lps_geometry(affine)
    slice_step = (np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3])[:, 2]
    geometry = Geometry(
        iop=(*x_dir, *y_dir),
        origin=tuple(origin),
        row_spacing=row_spacing,
        col_spacing=col_spacing,
        slice_spacing=float(np.linalg.norm(slice_step)),
    )
    assert np.allclose(np.cross(x_dir, y_dir) * geometry.slice_spacing, slice_step, atol=1e-4)
    slice_masks = np.transpose(labels, (2, 1, 0))  # (k, row = j, col = i)
    slice_hu = np.clip(np.rint(np.transpose(hu, (2, 1, 0))), -1024, 3000).astype(np.int32)
    datasets = ct_series(slice_masks, geometry, image=slice_hu, series_description="openkbp")
    for ds in datasets:  # the test's series carries no real identity
        ds.PatientName, ds.PatientID = "OpenKBP^Case", "OPENKBP"
    files = save_series(datasets, tmp_path / "series")
    uids = [str(ds.SOPInstanceUID) for ds in datasets]

    path = write_rtstruct(tmp_path / "rt.dcm", labels, affine, files, names)
    rt = pydicom.dcmread(path)
    sources = {uid: pydicom.dcmread(f, stop_before_pixels=True) for uid, f in zip(uids, files, strict=True)}
    rasters = rasterise_rtstruct(rt, sources, uids)
    present = [v for v in names if v and (slice_masks == v).any()]
    assert len(present) >= 5
    scores = {names[v]: dice(rasters[names[v]], slice_masks == v) for v in present}
    assert all(s >= 0.95 for s in scores.values()), scores
    # a left/right organ pair lands on its own side: the flipped assignment scores far lower
    if {"LeftParotid", "RightParotid"} <= set(scores):
        swapped = dice(rasters["LeftParotid"], slice_masks == 3)
        assert swapped < 0.5
    logging.getLogger(__name__).info("OpenKBP %s RTSTRUCT Dice: %s", case["label"], scores)
    if DCIODVFY is not None:
        assert dciodvfy_errors(path) == []
