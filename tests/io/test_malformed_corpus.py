"""A generated corpus of >=100 malformed inputs: every one fails with a typed error naming file and problem.

Each case builds its bad input in ``tmp_path`` and returns ``(path, keyword)``; the test reads it through
:func:`medunet.io.read_image` (NIfTI files and DICOM folders alike), expects a :class:`MedunetError` whose
message names the path and matches the keyword, under a hard timeout, and checks that ``medunet convert``
leaves no output file behind.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from medunet.cli import main as cli_main
from medunet.errors import MedunetError
from medunet.io import read_image, write_nifti
from medunet.io.dicom_write import write_dicom_series
from medunet.io.volume import Volume

SHAPE = (8, 8, 6)
Case = Callable[[Path], tuple[Path, str]]
CASES: dict[str, Case] = {}


def good_nifti(path: Path, dtype: type = np.int16) -> Path:
    data = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(dtype)
    return write_nifti(path, data, np.diag([1.0, 1.5, 2.0, 1.0]))


def good_series(directory: Path, **kwargs: object) -> list[Path]:
    data = np.arange(np.prod(SHAPE)).reshape(SHAPE).astype(np.int16)
    return write_dicom_series(Volume(data, np.diag([0.8, 0.8, 2.0, 1.0])), directory, **kwargs)  # type: ignore[arg-type]


def raw_header(path: Path) -> bytearray:
    return bytearray(path.read_bytes())


# --- NIfTI: truncation and zero-byte files -----------------------------------------------------------
for suffix in (".nii", ".nii.gz"):
    for frac in (0.0, 0.01, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99):

        def _trunc(tmp: Path, frac: float = frac, suffix: str = suffix) -> tuple[Path, str]:
            src = good_nifti(tmp / f"good{suffix}")
            data = src.read_bytes()
            out = tmp / f"trunc{suffix}"
            out.write_bytes(data[: int(len(data) * frac)])
            return out, "empty|truncated|corrupt|not a readable"

        CASES[f"nifti-truncated-{frac}{suffix}"] = _trunc

    for n in (1, 4, 100, 347):

        def _hdr_only(tmp: Path, n: int = n, suffix: str = suffix) -> tuple[Path, str]:
            src = good_nifti(tmp / "good.nii")
            out = tmp / f"short{suffix}"
            raw = src.read_bytes()[:n]
            out.write_bytes(gzip.compress(raw) if suffix == ".gz" or suffix.endswith("gz") else raw)
            return out, "truncated|corrupt|not a readable"

        CASES[f"nifti-header-cut-{n}{suffix}"] = _hdr_only

# --- NIfTI: wrong magic, garbage, corrupt gzip -------------------------------------------------------
for name, payload in {
    "text": b"hello, I am not an image\n" * 20,
    "png": b"\x89PNG\r\n\x1a\n" + b"\0" * 400,
    "zeros": b"\0" * 2000,
    "random": np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes(),
}.items():
    for suffix in (".nii", ".nii.gz"):

        def _garbage(tmp: Path, payload: bytes = payload, suffix: str = suffix) -> tuple[Path, str]:
            out = tmp / f"garbage{suffix}"
            out.write_bytes(payload)
            return out, "not a readable|magic|truncated|corrupt"

        CASES[f"nifti-garbage-{name}{suffix}"] = _garbage


def _wrong_magic(tmp: Path) -> tuple[Path, str]:
    raw = raw_header(good_nifti(tmp / "g.nii"))
    raw[344:348] = b"xyz\0"
    out = tmp / "magic.nii"
    out.write_bytes(bytes(raw))
    return out, "magic|not a readable"


CASES["nifti-wrong-magic"] = _wrong_magic

for pos in (10, 200, 300, -30, -8):

    def _corrupt_gz(tmp: Path, pos: int = pos) -> tuple[Path, str]:
        raw = raw_header(good_nifti(tmp / "g.nii.gz"))
        for k in range(6):
            raw[pos + k] ^= 0xFF
        out = tmp / "corrupt.nii.gz"
        out.write_bytes(bytes(raw))
        return out, "corrupt|truncated|not a readable|lying"

    CASES[f"nifti-corrupt-gzip-{pos}"] = _corrupt_gz


# --- NIfTI: lying headers ------------------------------------------------------------------------------
def _patch_nii(tmp: Path, fmt: str, offset: int, values: tuple, suffix: str = ".nii") -> Path:
    raw = raw_header(good_nifti(tmp / "g.nii"))
    struct.pack_into(fmt, raw, offset, *values)
    out = tmp / f"patched{suffix}"
    out.write_bytes(gzip.compress(bytes(raw)) if suffix == ".nii.gz" else bytes(raw))
    return out


for suffix in (".nii", ".nii.gz"):
    for label, fmt, off, vals, kw in [
        ("dims-too-big", "<8h", 40, (3, 800, 800, 600, 1, 1, 1, 1), "truncated|lying|exceed"),
        ("dims-huge", "<8h", 40, (3, 32767, 32767, 32767, 1, 1, 1, 1), "lying|exceed"),
        ("dims-negative", "<8h", 40, (3, -8, 8, 6, 1, 1, 1, 1), "lying|non-positive|not a readable"),
        ("dims-zero", "<8h", 40, (3, 8, 0, 6, 1, 1, 1, 1), "lying|non-positive|not a readable"),
        ("ndim-bad", "<h", 40, (9,), "lying|not a readable"),
        ("datatype-bad", "<h", 70, (999,), "datatype|not a readable"),
        ("bitpix-mismatch", "<h", 72, (32,), "bitpix"),
        ("datatype-bigger", "<2h", 70, (64, 64), "truncated|lying"),
        ("2d", "<8h", 40, (2, 8, 48, 1, 1, 1, 1, 1), "2D|3D"),
        ("4d", "<8h", 40, (4, 8, 8, 3, 2, 1, 1, 1), "4D"),
        ("5d", "<8h", 40, (5, 8, 8, 3, 1, 2, 1, 1), "5D"),
    ]:

        def _lying(tmp: Path, fmt=fmt, off=off, vals=vals, kw=kw, suffix=suffix) -> tuple[Path, str]:  # noqa: ANN001
            return _patch_nii(tmp, fmt, off, vals, suffix), kw

        CASES[f"nifti-{label}{suffix}"] = _lying


# --- NIfTI: values and geometry --------------------------------------------------------------------------
for bad in (np.nan, np.inf, -np.inf):
    for suffix in (".nii", ".nii.gz"):

        def _nonfinite(tmp: Path, bad: float = bad, suffix: str = suffix) -> tuple[Path, str]:
            data = np.zeros(SHAPE, np.float32)
            data[1, 2, 3] = bad
            return write_nifti(tmp / f"nf{suffix}", data, np.eye(4)), "NaN/Inf"

        CASES[f"nifti-nonfinite-{bad}{suffix}"] = _nonfinite

for shear in (0.05, 0.3, 1.0):
    for suffix in (".nii", ".nii.gz"):

        def _sheared(tmp: Path, shear: float = shear, suffix: str = suffix) -> tuple[Path, str]:
            aff = np.eye(4)
            aff[0, 1] = shear
            img = nib.Nifti1Image(np.zeros(SHAPE, np.int16), aff)
            img.set_sform(aff, code=1)
            out = tmp / f"shear{suffix}"
            nib.save(img, out)
            return out, "shear"

        CASES[f"nifti-sheared-{shear}{suffix}"] = _sheared


def _singular(tmp: Path) -> tuple[Path, str]:
    raw = raw_header(good_nifti(tmp / "g.nii"))
    struct.pack_into("<4f", raw, 312, 0.0, 0.0, 0.0, 0.0)  # srow_z = 0: the sform is singular
    struct.pack_into("<h", raw, 252, 0)  # no qform to fall back on
    (tmp / "sing.nii").write_bytes(bytes(raw))
    return tmp / "sing.nii", "singular"


CASES["nifti-singular-sform"] = _singular


def _dims_2d_real(tmp: Path) -> tuple[Path, str]:
    nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), tmp / "flat.nii.gz")
    return tmp / "flat.nii.gz", "2D"


CASES["nifti-real-2d"] = _dims_2d_real


def _dims_4d_real(tmp: Path) -> tuple[Path, str]:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), tmp / "four.nii.gz")
    return tmp / "four.nii.gz", "4D"


CASES["nifti-real-4d"] = _dims_4d_real


# --- DICOM: broken tags --------------------------------------------------------------------------------
def _edit_series(
    tmp: Path, edit: Callable[[int, pydicom.Dataset], None], kw: str, **kwargs: object
) -> tuple[Path, str]:
    directory = tmp / "series"
    for n, f in enumerate(good_series(directory, **kwargs)):
        ds = pydicom.dcmread(f)
        edit(n, ds)
        ds.save_as(f)
    return directory, kw


def _delete(keyword: str, which: int | None = None) -> Callable[[int, pydicom.Dataset], None]:
    def edit(n: int, ds: pydicom.Dataset) -> None:
        if which is None or n == which:
            delattr(ds, keyword)

    return edit


def _set(keyword: str, value: object, which: int | None = None) -> Callable[[int, pydicom.Dataset], None]:
    def edit(n: int, ds: pydicom.Dataset) -> None:
        if which is None or n == which:
            elem = ds[keyword]
            elem._value = value  # bypass validation: we want garbage on disk
            ds[keyword] = elem

    return edit


for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "PixelData"):
    for which in (None, 2):
        CASES[f"dicom-missing-{keyword}-{which}"] = lambda tmp, k=keyword, w=which: _edit_series(
            tmp, _delete(k, w), f"missing {k}"
        )

for keyword, value in [
    ("ImagePositionPatient", ["a", "b", "c"]),
    ("ImagePositionPatient", ["1", "2"]),
    ("ImagePositionPatient", ["nan", "0", "0"]),
    ("ImageOrientationPatient", ["1", "0", "0", "1", "0", "0"]),
    ("ImageOrientationPatient", ["x"] * 6),
    ("ImageOrientationPatient", ["2", "0", "0", "0", "1", "0"]),
    ("PixelSpacing", ["0", "0"]),
    ("PixelSpacing", ["-1", "1"]),
    ("PixelSpacing", ["abc"]),
    ("RescaleSlope", "slope"),
    ("RescaleIntercept", "inf"),
]:
    CASES[f"dicom-garbage-{keyword}-{value}"] = lambda tmp, k=keyword, v=value: _edit_series(
        tmp, _set(k, v, 3), f"garbage value in {k}"
    )


def _bad_pixel_len(n: int, ds: pydicom.Dataset) -> None:
    if n == 1:
        ds.PixelData = ds.PixelData[:-20]


CASES["dicom-bad-pixeldata-length"] = lambda tmp: _edit_series(tmp, _bad_pixel_len, "pixel data")


def _bad_rows(n: int, ds: pydicom.Dataset) -> None:
    if n == 1:
        ds.Rows = 9


CASES["dicom-rows-lie"] = lambda tmp: _edit_series(tmp, _bad_rows, "pixel data|mixed image sizes")


# --- DICOM: series-level geometry ----------------------------------------------------------------------
def _shift(dz: Callable[[int], float], dx: Callable[[int], float] = lambda n: 0.0) -> Callable:
    def edit(n: int, ds: pydicom.Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x + dx(n), y, z + dz(n)]

    return edit


CASES["dicom-gap"] = lambda tmp: _edit_series(tmp, _shift(lambda n: 2.0 if n >= 3 else 0.0), "missing slices")
CASES["dicom-two-gaps"] = lambda tmp: _edit_series(
    tmp, _shift(lambda n: 2.0 * (n >= 2) + 2.0 * (n >= 4)), "missing slices"
)
CASES["dicom-nonuniform"] = lambda tmp: _edit_series(
    tmp, _shift(lambda n: 0.7 if n >= 3 else 0.0), "non-uniform"
)
CASES["dicom-duplicate-position"] = lambda tmp: _edit_series(
    tmp, _shift(lambda n: -2.0 if n == 3 else 0.0), "duplicate slice"
)
for tilt in (0.1, 0.5, 2.0):
    CASES[f"dicom-tilt-{tilt}"] = lambda tmp, t=tilt: _edit_series(
        tmp, _shift(lambda n: 0.0, lambda n: t * n), "tilt"
    )


def _mixed_orientation(n: int, ds: pydicom.Dataset) -> None:
    if n == 2:
        ds.ImageOrientationPatient = [0, 1, 0, 1, 0, 0]


CASES["dicom-mixed-orientation"] = lambda tmp: _edit_series(
    tmp, _mixed_orientation, "mixed orientations|mixes"
)


def _mixed_spacing(n: int, ds: pydicom.Dataset) -> None:
    if n == 2:
        ds.PixelSpacing = [0.9, 0.9]


CASES["dicom-mixed-pixel-spacing"] = lambda tmp: _edit_series(tmp, _mixed_spacing, "mixed pixel spacings")


def _mixed_sizes(tmp: Path) -> tuple[Path, str]:
    directory = tmp / "series"
    good_series(directory, series_instance_uid="1.2.826.0.1.5")
    small = Volume(np.zeros((4, 4, 1), np.int16), np.diag([0.8, 0.8, 2.0, 1.0]) @ _translate(0, 0, 20))
    write_dicom_series(small, directory, series_instance_uid="1.2.826.0.1.5", file_prefix="X")
    return directory, "mix"


def _translate(x: float, y: float, z: float) -> np.ndarray:
    t = np.eye(4)
    t[:3, 3] = [x, y, z]
    return t


CASES["dicom-mixed-sizes"] = _mixed_sizes


def _duplicate_file(tmp: Path) -> tuple[Path, str]:
    directory = tmp / "series"
    files = good_series(directory)
    shutil.copy(files[2], directory / "copy.dcm")
    return directory, "duplicate slice"


CASES["dicom-duplicate-file"] = _duplicate_file


def _two_series(tmp: Path) -> tuple[Path, str]:
    good_series(tmp / "s" / "a")
    good_series(tmp / "s" / "b")
    return tmp / "s", "2 series"


CASES["dicom-multiple-series-unselected"] = _two_series


def _incomplete_4d(tmp: Path) -> tuple[Path, str]:
    directory = tmp / "series"
    files = good_series(directory, series_instance_uid="1.2.826.0.1.6")
    for f in files[:3]:
        ds = pydicom.dcmread(f)
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
        ds.AcquisitionNumber = 2
        ds.save_as(directory / f"t2_{f.name}")
    return directory, "duplicate slice"


CASES["dicom-incomplete-4d"] = _incomplete_4d


def _complete_4d(tmp: Path) -> tuple[Path, str]:
    directory = tmp / "series"
    for t in range(2):
        for f in good_series(directory, series_instance_uid="1.2.826.0.1.7", file_prefix=f"T{t}"):
            ds = pydicom.dcmread(f)
            ds.AcquisitionNumber = t + 1
            ds.save_as(f)
    return directory, "4D acquisition"


CASES["dicom-4d-unselected"] = _complete_4d


def _mosaic_no_csa(tmp: Path) -> tuple[Path, str]:
    return _edit_series(
        tmp, lambda n, ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "MOSAIC"]), "mosaic"
    )


CASES["dicom-mosaic-without-csa"] = _mosaic_no_csa


def _not_dicom(tmp: Path) -> tuple[Path, str]:
    directory = tmp / "series"
    directory.mkdir()
    (directory / "a.dcm").write_bytes(b"\0" * 300)
    (directory / "README.txt").write_text("hello")
    return directory, "no DICOM files"


CASES["dicom-no-dicom-files"] = _not_dicom


def _empty_dir(tmp: Path) -> tuple[Path, str]:
    (tmp / "empty").mkdir()
    return tmp / "empty", "no DICOM files"


CASES["dicom-empty-dir"] = _empty_dir


def _truncated_dicom(tmp: Path) -> tuple[Path, str]:
    directory = tmp / "series"
    files = good_series(directory)
    data = files[2].read_bytes()
    files[2].write_bytes(data[: len(data) - 50])
    return directory, "pixel data|unreadable"


CASES["dicom-truncated-file"] = _truncated_dicom


def _missing_decoder(tmp: Path) -> tuple[Path, str]:
    # A transfer syntax pydicom has no decoder for at all (MPEG2 video) on an ordinary image.
    def edit(n: int, ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])

    directory, _ = _edit_series(tmp, edit, "")
    return directory, "decoder"


CASES["dicom-missing-decoder"] = _missing_decoder


#: The corpus size the README states ("a generated corpus of N malformed inputs"): a case added or
#: removed must update both.
CORPUS_SIZE = 115


def test_corpus_size_is_the_documented_one() -> None:
    assert len(CASES) == CORPUS_SIZE, len(CASES)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_input_raises_typed_error(name: str, tmp_path: Path) -> None:
    bad, keyword = CASES[name](tmp_path)
    with pytest.raises(MedunetError, match=keyword) as info:
        read_image(bad)
    assert info.value.path is not None
    assert str(bad) in str(info.value) or str(info.value.path).startswith(str(bad))
    # ``medunet convert`` fails and leaves nothing behind
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert cli_main(["convert", str(bad), str(out_dir / "x.nii.gz")]) == 1
    assert list(out_dir.iterdir()) == []


@pytest.mark.timeout(60)
def test_batch_convert_good_complete_bad_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = ["nifti-truncated-0.5.nii", "dicom-gap", "nifti-4d.nii.gz", "dicom-missing-PixelSpacing-None"]
    inputs: list[Path] = []
    bad: list[Path] = []
    for n, name in enumerate(names):
        case_dir = tmp_path / f"bad{n}"
        case_dir.mkdir()
        path, _ = CASES[name](case_dir)
        bad.append(path)
        inputs += [good_nifti(tmp_path / f"good{n}.nii.gz"), path]
    good_series(tmp_path / "good_dicom")
    inputs.append(tmp_path / "good_dicom")
    out = tmp_path / "out"
    assert cli_main(["convert", *map(str, inputs), str(out)]) == 1
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"case_{i:03d}.nii.gz" for i in (1, 3, 5, 7, 9)]
    log = capsys.readouterr().err
    for path in bad:
        assert str(path) in log
    assert "4 of 9 inputs failed" in log
