"""Export files: ITK-SNAP label file and workspace, volumes table, preview, DICOM SEG."""

from __future__ import annotations

import csv
import io
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medunet.export import (
    label_colors,
    organ_stats,
    preview_png,
    write_label_file,
    write_volumes_csv,
    write_workspace,
)
from medunet.io import Volume

LABELS = {0: "background", 1: "liver", 2: "left_kidney", 3: 'odd "name"'}


def parse_itksnap_label_file(text: str) -> dict[int, tuple[tuple[int, int, int], float, int, int, str]]:
    """ITK-SNAP's reading rules: skip '#' lines; 7 numbers then a double-quoted label per line."""
    out = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = re.fullmatch(
            r"\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+([0-9.]+)\s+([01])\s+([01])\s+\"([^\"]*)\"\s*", line
        )
        assert m, f"not an ITK-SNAP label line: {line!r}"
        idx, r, g, b = (int(m.group(i)) for i in range(1, 5))
        alpha, vis, msh = float(m.group(5)), int(m.group(6)), int(m.group(7))
        assert all(0 <= c <= 255 for c in (r, g, b)) and 0.0 <= alpha <= 1.0
        assert len(line.split('"')[0].split()) == 7  # 7 numeric fields + the quoted label = 8
        out[idx] = ((r, g, b), alpha, vis, msh, m.group(8))
    return out


def test_label_file_parses_by_itksnap_rules(tmp_path: Path) -> None:
    path = write_label_file(tmp_path / "labels.txt", LABELS)
    parsed = parse_itksnap_label_file(path.read_text())
    assert sorted(parsed) == [0, 1, 2, 3]
    assert parsed[0][4] == "Clear Label" and parsed[0][1] == 0.0
    assert parsed[1][4] == "liver" and parsed[2][4] == "left_kidney"
    assert parsed[3][4] == "odd 'name'"  # quotes cannot break the line
    colours = [parsed[i][0] for i in (1, 2, 3)]
    assert len(set(colours)) == 3 and (0, 0, 0) not in colours
    assert all(parsed[i][1:4] == (1.0, 1, 1) for i in (1, 2, 3))


def test_label_colors_are_distinct_for_many_labels() -> None:
    colours = label_colors({i: f"organ{i}" for i in range(0, 60)})
    assert len(colours) == 59 and len(set(colours.values())) == 59


def _registry_value(root: ET.Element, dotted: str) -> str | None:
    node = root
    *folders, key = dotted.split(".")
    for f in folders:
        node = node.find(f"folder[@key='{f}']")
        if node is None:
            return None
    entry = node.find(f"entry[@key='{key}']")
    return None if entry is None else entry.get("value")


def test_workspace_is_itksnap_registry_with_layers_labels_and_movable_paths(tmp_path: Path) -> None:
    case = tmp_path / "case"
    case.mkdir()
    for name in ("image.nii.gz", "segmentation.nii.gz"):
        (case / name).write_bytes(b"x")
    ws = write_workspace(
        case / "review.itksnap",
        save_location=case,
        main_image="image.nii.gz",
        segmentation="segmentation.nii.gz",
        labels=LABELS,
        dimensions=(10, 11, 12),
    )
    text = ws.read_text()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8" ?>')
    root = ET.fromstring(text)  # well-formed (DOCTYPE with internal subset is fine)
    assert root.tag == "registry"
    assert _registry_value(root, "Layers.Layer[000].Role") == "MainRole"
    assert _registry_value(root, "Layers.Layer[001].Role") == "SegmentationRole"
    assert _registry_value(root, "Layers.Layer[000].ProjectMetaData.Files.Grey.Dimensions") == "10 11 12"
    table = "Layers.Layer[000].ProjectMetaData.IRIS.LabelTable"
    assert _registry_value(root, f"{table}.NumberOfElements") == "3"
    names = {
        _registry_value(root, f"{table}.Element[{i}].Index"): _registry_value(
            root, f"{table}.Element[{i}].Label"
        )
        for i in range(3)
    }
    assert names == {"1": "liver", "2": "left_kidney", "3": "odd 'name'"}
    save = _registry_value(root, "SaveLocation")
    assert save == str(case.resolve())

    # ITK-SNAP's rule for a moved workspace: strip SaveLocation from each layer path, resolve the rest
    # against the workspace's new folder. Move the folder and check both layers resolve to real files.
    moved = shutil.move(str(case), str(tmp_path / "elsewhere"))
    for layer in ("000", "001"):
        path = _registry_value(root, f"Layers.Layer[{layer}].AbsolutePath")
        assert path is not None and path.startswith(save)
        relative = path[len(save) :].lstrip("/")
        assert not Path(relative).is_absolute() and ".." not in relative
        assert (Path(moved) / relative).is_file()


def test_organ_stats_and_volumes_csv(tmp_path: Path) -> None:
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:2, :5, :] = 1  # 100 voxels
    image = np.full(labels.shape, -50.0, np.float32)
    image[labels == 1] = 60.0
    affine = np.diag([-0.5, -0.5, 2.0, 1.0])  # 0.5 mm^3 voxels
    stats = organ_stats(labels, affine, LABELS, image=image)
    path = write_volumes_csv(tmp_path / "volumes.csv", stats)
    rows = list(csv.DictReader(path.open()))
    assert [r["organ"] for r in rows] == ["liver", "left_kidney", 'odd "name"']
    assert rows[0]["voxels"] == "100" and float(rows[0]["volume_ml"]) == pytest.approx(0.05)
    assert float(rows[0]["mean_intensity"]) == pytest.approx(60.0)
    assert rows[1]["voxels"] == "0" and rows[1]["mean_intensity"] == ""


def test_preview_shows_overlay_colours() -> None:
    labels = np.zeros((30, 30, 20), np.uint8)
    labels[5:15, 5:15, 5:15] = 1
    labels[18:26, 10:20, 6:14] = 2
    image = np.where(labels > 0, 80.0, -100.0).astype(np.float32)
    png = preview_png(image, labels, np.diag([1.0, 1.0, 2.0, 1.0]), LABELS, window=(-175, 250))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    colours = label_colors(LABELS)
    for value in (1, 2):
        target = np.array(colours[value])
        # blended 50/50 with grey: the colour shows as grey + (target - grey) / 2
        diff = rgb - rgb.mean(axis=-1, keepdims=True)
        want = target - target.mean()
        close = np.abs(diff - want / 2).sum(axis=-1) < 30
        assert close.sum() > 200, f"label {value} overlay not visible"
    assert np.ptp(rgb) > 100


@pytest.fixture
def ct_series(tmp_path: Path):
    from medunet.io.dicom_write import write_dicom_series

    shape = (24, 20, 8)
    affine = np.diag([-0.9, -0.9, 3.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, -100.0)
    image = np.full(shape, -200.0, np.float32)
    labels = np.zeros(shape, np.uint8)
    labels[4:12, 5:15, 2:6] = 1
    labels[14:20, 3:9, 1:7] = 2
    labels[15, 12, 7] = 3
    image[labels > 0] = 50.0
    files = write_dicom_series(
        Volume(image, affine), tmp_path / "dicom", modality="CT", patient_name="Doe^Jane"
    )
    return tmp_path / "dicom", files, labels


def test_dicom_seg_references_source_and_frames_align(ct_series, tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    from medunet.export.dicom_seg import write_dicom_seg
    from medunet.io.dicom import read_dicom_series

    folder, files, labels_src = ct_series
    vol = read_dicom_series(folder)
    # the reader's grid is the writer's grid (storage order i, j, k)
    assert vol.shape == labels_src.shape
    path = write_dicom_seg(
        tmp_path / "seg.dcm",
        labels_src,
        vol.affine,
        vol.meta["source_files"],
        LABELS,
        colors=label_colors(LABELS),
    )
    ds = pydicom.dcmread(str(path))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert "Doe" in str(ds.PatientName)  # patient module copied from the source, as DICOM requires
    sources = {str(pydicom.dcmread(str(f)).SOPInstanceUID): pydicom.dcmread(str(f)) for f in files}
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in ds.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced and referenced <= set(sources)
    segs = {int(s.SegmentNumber): s for s in ds.SegmentSequence}
    assert [segs[n].SegmentLabel for n in (1, 2, 3)] == ["liver", "left_kidney", 'odd "name"']
    assert segs[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED liver
    kidney = segs[2].SegmentedPropertyTypeCodeSequence[0]
    assert kidney.CodeValue == "64033007"
    assert kidney.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == "7771000"  # left
    assert segs[1].SegmentAlgorithmType == "AUTOMATIC"
    assert segs[1].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "medunet"

    pixels = ds.pixel_array.reshape(-1, ds.Rows, ds.Columns)
    for f, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ref_uid = str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        src = sources[ref_uid]
        ipp = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(ipp, [float(v) for v in src.ImagePositionPatient], atol=1e-3)
        k = [str(u) for u in vol.meta["sop_instance_uids"]].index(ref_uid)
        expected = (number == labels_src[:, :, k].T).astype(np.uint8)  # rows = j, cols = i
        np.testing.assert_array_equal(pixels[f], expected)

    seg = hd.seg.segread(str(path))
    assert list(seg.get_segment_numbers()) == [1, 2, 3]
    assert {uid for _, _, uid in seg.get_source_image_uids()} <= set(sources)


def test_dicom_seg_refuses_mask_on_another_grid(ct_series, tmp_path: Path) -> None:
    from medunet.errors import GeometryMismatchError
    from medunet.export.dicom_seg import write_dicom_seg
    from medunet.io.dicom import read_dicom_series

    folder, _, labels_src = ct_series
    vol = read_dicom_series(folder)
    shifted = vol.affine.copy()
    shifted[:3, 3] += 0.4  # not a whole voxel
    with pytest.raises(GeometryMismatchError):
        write_dicom_seg(tmp_path / "seg.dcm", labels_src, shifted, vol.meta["source_files"], LABELS)
    assert not (tmp_path / "seg.dcm").exists()


class _ValueNet(torch.nn.Module):
    """Known answer: class k where the window-normalised intensity is k / top (image = label value)."""

    def __init__(self, top: int) -> None:
        super().__init__()
        self.register_buffer("centers", torch.arange(top + 1, dtype=torch.float32) / top)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centers = self.centers.view(1, -1, *([1] * (x.ndim - 2)))
        return -1e6 * (x - centers) ** 2


@pytest.mark.parametrize(("top", "dtype"), [(255, np.uint8), (300, np.uint16)])
def test_segmentation_file_is_uint8_to_255_and_uint16_past_it_on_the_source_grid(
    tmp_path: Path, top: int, dtype: type
) -> None:
    """README: ``segmentation.nii.gz`` holds integer labels (uint8; uint16 past 255) on exactly the
    source grid, qform = sform, code 1. Predictor and case writer, with plans of ``top + 1`` classes."""
    import nibabel as nib

    from medunet.export.case import SEGMENTATION, write_case
    from medunet.inference import Predictor
    from medunet.plans import Intensity, Plans

    labels = {k: ("background" if k == 0 else f"organ{k}") for k in range(top + 1)}
    plans = Plans(
        labels=labels,
        target_spacing=(1.0, 1.5, 2.0),
        patch_size=(16, 16, 8),
        intensity=Intensity("ct_window", 0.0, float(top)),
    )
    lab = np.zeros((20, 18, 10), np.int16)
    lab[3:10, 4:12, 2:7] = 1
    lab[12:17, 3:8, 3:9] = top  # 300 does not fit uint8 (it would wrap to 44)
    lab[12:15, 12:16, 1:4] = 200
    affine = np.diag([-1.0, -1.5, 2.0, 1.0])  # LPS-like, anisotropic, non-zero origin
    affine[:3, 3] = (19.0, 25.5, -20.0)
    volume = Volume(lab, affine, source="ct.nii.gz")
    predictor = Predictor(_ValueNet(top), plans, device="cpu", crop_foreground=False)
    prediction = predictor.predict(volume)
    assert prediction.labels.dtype == dtype
    result = write_case(
        tmp_path / "out", "ct", volume, prediction, source=tmp_path / "ct.nii.gz", is_dicom=False
    )

    seg = nib.load(str(result.directory / SEGMENTATION))
    assert seg.get_data_dtype() == dtype
    values = np.asarray(seg.dataobj)
    np.testing.assert_array_equal(values, lab)  # values intact, 300 included
    assert int(values.max()) == top
    assert seg.shape == lab.shape
    qform, qcode = seg.get_qform(coded=True)
    sform, scode = seg.get_sform(coded=True)
    assert int(qcode) == int(scode) == 1
    np.testing.assert_allclose(qform, sform, atol=1e-6)
    np.testing.assert_allclose(sform, affine, atol=1e-6)
