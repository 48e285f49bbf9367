"""fast_gzip: streams interoperate with the stdlib both ways and corruption raises the stdlib's errors."""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pytest

from medunet.io import fast_gzip
from medunet.io.nifti import read_nifti, write_nifti


@pytest.fixture
def payload(rng: np.random.Generator) -> bytes:
    mask = np.zeros((64, 64, 40), np.uint8)
    mask[10:40, 12:50, 5:30] = rng.integers(0, 4, size=(30, 38, 25), dtype=np.uint8)
    return mask.tobytes()


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_round_trip_with_stdlib(payload: bytes, level: int) -> None:
    assert gzip.decompress(fast_gzip.compress(payload, level)) == payload
    assert fast_gzip.decompress(gzip.compress(payload, level)) == payload


def test_multi_member_stream(payload: bytes) -> None:
    assert fast_gzip.decompress(gzip.compress(payload) + fast_gzip.compress(payload)) == payload * 2


def test_bad_crc_raises_stdlib_error(payload: bytes) -> None:
    blob = bytearray(fast_gzip.compress(payload))
    blob[-8] ^= 0xFF  # CRC-32 of the trailer
    with pytest.raises((gzip.BadGzipFile, zlib.error)):
        fast_gzip.decompress(bytes(blob))


def test_truncated_raises_stdlib_error(payload: bytes) -> None:
    blob = fast_gzip.compress(payload)
    with pytest.raises((EOFError, gzip.BadGzipFile, zlib.error)):
        fast_gzip.decompress(blob[: len(blob) // 2])


def test_corrupt_deflate_raises_stdlib_error(payload: bytes) -> None:
    blob = bytearray(fast_gzip.compress(payload))
    blob[20:40] = b"\xff" * 20
    with pytest.raises((EOFError, gzip.BadGzipFile, zlib.error)):
        fast_gzip.decompress(bytes(blob))


def test_file_helpers(tmp_path, payload: bytes) -> None:
    path = fast_gzip.write_gzip(tmp_path / "x.gz", payload)
    assert gzip.decompress(path.read_bytes()) == payload
    assert fast_gzip.read_gzip(path) == payload


def test_nifti_written_with_fast_gzip_reads_back_everywhere(tmp_path, rng: np.random.Generator) -> None:
    import nibabel as nib

    labels = rng.integers(0, 5, size=(20, 18, 9), dtype=np.uint8)
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    path = write_nifti(tmp_path / "m.nii.gz", labels, affine)
    with gzip.open(path) as fh:  # a standard gzip stream
        assert fh.read(4) == (348).to_bytes(4, "little")
    img = nib.load(path)
    np.testing.assert_array_equal(np.asanyarray(img.dataobj), labels)
    np.testing.assert_allclose(img.affine, affine)
    vol = read_nifti(path)
    np.testing.assert_array_equal(vol.array, labels)
    assert fast_gzip.BACKEND in ("isal", "zlib-ng", "zlib")
