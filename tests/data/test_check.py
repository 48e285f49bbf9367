"""``check_dataset`` catches every planted defect, names the file, and passes a clean dataset."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medunet.cli import main
from medunet.data.check import check_dataset, format_problems
from medunet.data.layouts import load_dataset
from medunet.io import write_nifti

AFFINE = np.diag([1.0, 1.0, 2.0, 1.0])
CASES = ("c0", "c1", "c2")


def _image(i: int) -> np.ndarray:
    # Noise compresses poorly, so halving a .nii.gz cuts into voxel data rather than the header.
    return np.random.default_rng(i).integers(-1000, 1000, size=(10, 10, 8)).astype(np.int16)


def _label() -> np.ndarray:
    lab = np.zeros((10, 10, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 1
    lab[6:8, 6:8, 4:6] = 2
    return lab


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    for i, c in enumerate(CASES):
        write_nifti(tmp_path / "imagesTr" / f"{c}.nii.gz", _image(i), AFFINE)
        write_nifti(tmp_path / "labelsTr" / f"{c}.nii.gz", _label(), AFFINE)
    meta = {
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in CASES],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    return tmp_path


def _corrupt_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 40):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _four_d(path: Path) -> None:
    write_nifti(path, np.stack([_image(1)] * 2, axis=-1), AFFINE)


def _label_shape(path: Path) -> None:
    write_nifti(path, np.zeros((10, 10, 7), np.uint8), AFFINE)


def _label_shift(path: Path) -> None:
    shifted = AFFINE.copy()
    shifted[:3, 3] = [0.3, 0.0, 0.4]  # 0.5 mm
    write_nifti(path, _label(), shifted)


def _undeclared(path: Path) -> None:
    lab = _label()
    lab[0, 0, 0] = 5
    lab[9, 9, 7] = 9
    write_nifti(path, lab, AFFINE)


def _fractional(path: Path) -> None:
    lab = _label().astype(np.float32)
    lab[3, 3, 3] = 0.5
    write_nifti(path, lab, AFFINE)


def _nan(path: Path) -> None:
    img = _image(1).astype(np.float32)
    img[1, 1, 1] = np.nan
    img[2, 2, 2] = np.inf
    write_nifti(path, img, AFFINE)


def _tiny_spacing(path: Path) -> None:
    write_nifti(path, _image(1), np.diag([0.05, 0.05, 0.05, 1.0]))


def _huge_spacing(path: Path) -> None:
    write_nifti(path, _image(1), np.diag([1.0, 1.0, 25.0, 1.0]))


def _zero_spacing(path: Path) -> None:
    img = nib.Nifti1Image(_image(1), None)
    img.header.set_sform(np.diag([1.0, 0.0, 2.0, 1.0]), code=1)  # a zero-length voxel axis
    img.header.set_qform(None, code=0)
    nib.save(img, str(path))


def _not_nifti(path: Path) -> None:
    path.write_bytes(b"this is not an image at all" * 20)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _missing(path: Path) -> None:
    path.unlink()


# (defect, which file of case c1, words the problem must contain)
DEFECTS: dict[str, tuple[Callable[[Path], None], str, tuple[str, ...]]] = {
    "missing": (_missing, "label", ("does not exist",)),
    "empty": (_empty, "image", ("empty",)),
    "not_nifti": (_not_nifti, "image", ("not",)),
    "truncated": (_truncate, "image", ("truncated",)),
    "corrupt_gzip": (_corrupt_bytes, "label", ("corrupt",)),
    "four_d": (_four_d, "image", ("4D",)),
    "shape_mismatch": (_label_shape, "label", ("shape (10, 10, 7)", "(10, 10, 8)")),
    "affine_mismatch": (_label_shift, "label", ("grid differs", "0.5 mm")),
    "undeclared_values": (_undeclared, "label", ("not declared", "5, 9")),
    "fractional_label": (_fractional, "label", ("non-integer",)),
    "nan_inf": (_nan, "image", ("2 NaN/Inf",)),
    "tiny_spacing": (_tiny_spacing, "image", ("spacing", "0.05")),
    "huge_spacing": (_huge_spacing, "image", ("spacing", "25")),
    "zero_spacing": (_zero_spacing, "image", ("singular",)),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_check_catches_each_defect_and_names_the_file(dataset: Path, defect: str) -> None:
    plant, which, words = DEFECTS[defect]
    datalist = load_dataset(dataset)  # load first: the layout is fine, the contents are not
    target = dataset / ("imagesTr" if which == "image" else "labelsTr") / "c1.nii.gz"
    plant(target)
    problems = check_dataset(datalist, show_progress=False)
    assert problems, f"{defect} not detected"
    assert {p.case_id for p in problems} == {"c1"}  # other cases stay clean
    assert any(p.file == target for p in problems), [str(p) for p in problems]
    text = " | ".join(p.problem for p in problems if p.file == target)
    for word in words:
        assert word in text, text


def test_clean_dataset_has_no_problems(dataset: Path) -> None:
    assert check_dataset(load_dataset(dataset), show_progress=False) == []


def test_all_problems_reported_together(dataset: Path) -> None:
    datalist = load_dataset(dataset)
    _truncate(dataset / "imagesTr" / "c0.nii.gz")
    _undeclared(dataset / "labelsTr" / "c1.nii.gz")
    _label_shift(dataset / "labelsTr" / "c2.nii.gz")
    problems = check_dataset(datalist, show_progress=False)
    assert {(p.case_id, p.file.name) for p in problems if p.file} == {
        ("c0", "c0.nii.gz"),
        ("c1", "c1.nii.gz"),
        ("c2", "c2.nii.gz"),
    }
    table = format_problems(problems, root=dataset)
    assert "imagesTr/c0.nii.gz" in table and "labelsTr/c2.nii.gz" in table


def test_tolerance_is_respected(dataset: Path) -> None:
    datalist = load_dataset(dataset)
    _label_shift(dataset / "labelsTr" / "c1.nii.gz")
    assert check_dataset(datalist, tolerance_mm=1.0, show_progress=False) == []
    assert len(check_dataset(datalist, tolerance_mm=0.1, show_progress=False)) == 1


def test_cli_check_exit_codes(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(dataset)]) == 0
    assert "no problems" in capsys.readouterr().out
    _undeclared(dataset / "labelsTr" / "c2.nii.gz")
    _nan(dataset / "imagesTr" / "c0.nii.gz")
    assert main(["check", str(dataset), "--layout", "decathlon"]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["case", "file", "problem"]
    assert "labelsTr/c2.nii.gz" in out and "imagesTr/c0.nii.gz" in out
    assert "2 problem(s) in 2 of 3 cases" in out


def test_cli_check_unloadable_dataset_exits_1(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text('{"labels": {}}')
    assert main(["check", str(tmp_path)]) == 1


@pytest.mark.realdata
def test_openkbp_is_clean(openkbp_dir: Path) -> None:
    datalist = load_dataset(openkbp_dir)
    assert check_dataset(datalist, show_progress=False) == []
