"""Fingerprint values against a hand computation; RAS ordering; JSON schema; cache; CLI; OpenKBP."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import medunet.data.fingerprint as fpmod
from medunet.cli import main
from medunet.data.fingerprint import Fingerprint, compute_fingerprint, load_or_compute_fingerprint
from medunet.data.layouts import load_dataset
from medunet.errors import DatasetError
from medunet.io import write_nifti

# Case A is stored P-L-I with voxel sizes (2, 3, 4) mm along its storage axes i, j, k:
# i runs toward P (the A axis) at 2 mm, j toward L (the R axis) at 3 mm, k toward I (the S axis) at 4 mm.
# In R, A, S order its spacing is (3, 2, 4) and its shape (4, 6, 8) becomes (6, 4, 8).
PLI_AFFINE = np.array([[0.0, -3.0, 0.0, 10.0], [-2.0, 0.0, 0.0, 20.0], [0.0, 0.0, -4.0, 30.0], [0, 0, 0, 1]])
RAS_AFFINE = np.diag([1.0, 2.0, 5.0, 1.0])
LABELS = {"0": "background", "1": "liver", "2": "spleen"}


def _case_a() -> tuple[np.ndarray, np.ndarray]:
    image = np.arange(4 * 6 * 8, dtype=np.int16).reshape(4, 6, 8) - 50
    label = np.zeros((4, 6, 8), np.uint8)
    label[1:3, 1:3, 1:4] = 1  # 12 voxels
    label[3, 5, 6:8] = 2  # 2 voxels
    return image, label


def _case_b() -> tuple[np.ndarray, np.ndarray]:
    image = (np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7) * 3 + 7).astype(np.int16)
    label = np.zeros((5, 6, 7), np.uint8)
    label[0:2, 0:2, 0:2] = 1  # 8 voxels, no spleen
    return image, label


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for name, (image, label), affine in (("a", _case_a(), PLI_AFFINE), ("b", _case_b(), RAS_AFFINE)):
        write_nifti(root / "imagesTr" / f"{name}.nii.gz", image, affine)
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", label, affine)
    meta = {
        "modality": {"0": "CT"},
        "labels": LABELS,
        "training": [{"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"} for n in "ab"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_fingerprint_matches_hand_computation(tiny: Path) -> None:
    fp = compute_fingerprint(load_dataset(tiny), show_progress=False)
    assert fp.n_cases == 2
    # spacing in R, A, S: A -> (3, 2, 4), B -> (1, 2, 5)
    np.testing.assert_allclose(fp.spacing["median"], [2.0, 2.0, 4.5])
    np.testing.assert_allclose(fp.spacing["min"], [1.0, 2.0, 4.0])
    np.testing.assert_allclose(fp.spacing["max"], [3.0, 2.0, 5.0])
    np.testing.assert_allclose(fp.spacing["p10"], [1.2, 2.0, 4.1])
    np.testing.assert_allclose(fp.spacing["p90"], [2.8, 2.0, 4.9])
    assert fp.median_spacing == pytest.approx((2.0, 2.0, 4.5))
    # size in R, A, S: A (4, 6, 8) -> (6, 4, 8), B (5, 6, 7)
    np.testing.assert_allclose(fp.size["median"], [5.5, 5.0, 7.5])
    assert fp.anisotropy == pytest.approx(4.5 / 2.0)
    # foreground intensities (fewer than samples_per_case, so every one is used)
    (ia, la), (ib, lb) = _case_a(), _case_b()
    fg = np.concatenate([ia[la > 0], ib[lb > 0]]).astype(np.float64)
    assert fg.size == 22
    stats = fp.intensity["0"]
    assert stats["mean"] == pytest.approx(fg.mean())
    assert stats["std"] == pytest.approx(fg.std())
    assert stats["median"] == pytest.approx(np.median(fg))
    assert stats["p00_5"] == pytest.approx(np.percentile(fg, 0.5))
    assert stats["p99_5"] == pytest.approx(np.percentile(fg, 99.5))
    assert (stats["min"], stats["max"]) == (fg.min(), fg.max())
    assert fp.ct_window == pytest.approx((np.percentile(fg, 0.5), np.percentile(fg, 99.5)))
    total = ia.size + ib.size
    assert fp.class_fraction == pytest.approx({"liver": 20 / total, "spleen": 2 / total})
    assert fp.class_presence == {"liver": 1.0, "spleen": 0.5}
    assert fp.labels == LABELS and fp.modalities == {"0": "CT"} and fp.is_ct


def test_sampling_is_seeded_and_min_max_exact(tiny: Path) -> None:
    dl = load_dataset(tiny)
    a = compute_fingerprint(dl, samples_per_case=5, seed=1, show_progress=False)
    b = compute_fingerprint(dl, samples_per_case=5, seed=1, show_progress=False)
    c = compute_fingerprint(dl, samples_per_case=5, seed=2, show_progress=False)
    assert a.intensity == b.intensity
    assert a.intensity["0"]["mean"] != c.intensity["0"]["mean"]
    (ia, la), (ib, lb) = _case_a(), _case_b()
    assert a.intensity["0"]["min"] == min(ia[la > 0].min(), ib[lb > 0].min())
    assert a.intensity["0"]["max"] == max(ia[la > 0].max(), ib[lb > 0].max())


def test_json_schema_and_round_trip(tiny: Path, tmp_path: Path) -> None:
    fp = compute_fingerprint(load_dataset(tiny), show_progress=False)
    out = fp.save(tmp_path / "fp.json")
    d = json.loads(out.read_text())
    assert set(d) >= {
        "n_cases",
        "dataset_hash",
        "modalities",
        "labels",
        "spacing",
        "size",
        "intensity",
        "class_fraction",
        "class_presence",
        "anisotropy",
    }
    assert set(d["spacing"]) == {"median", "p10", "p90", "min", "max"}
    assert set(d["size"]) == {"median", "p10", "p90"}
    assert set(d["intensity"]["0"]) == {"mean", "std", "median", "p00_5", "p99_5", "min", "max"}
    assert Fingerprint.load(out) == fp
    del d["spacing"]
    (tmp_path / "bad.json").write_text(json.dumps(d))
    with pytest.raises(DatasetError, match="missing key.*spacing") as exc:
        Fingerprint.load(tmp_path / "bad.json")
    assert exc.value.path == str(tmp_path / "bad.json")


def test_cache_reused_until_the_data_changes(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache" / "fingerprint.json"
    first = load_or_compute_fingerprint(load_dataset(tiny), cache)
    assert cache.is_file()
    calls: list[int] = []
    real = fpmod.compute_fingerprint

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(fpmod, "compute_fingerprint", counting)
    assert load_or_compute_fingerprint(load_dataset(tiny), cache) == first
    assert calls == []  # cache hit
    image, label = _case_b()
    label[4, 5, 6] = 2  # spleen now in both cases
    write_nifti(tiny / "labelsTr" / "b.nii.gz", label, RAS_AFFINE)
    second = load_or_compute_fingerprint(load_dataset(tiny), cache)
    assert calls == [1] and second.class_presence["spleen"] == 1.0
    assert second.dataset_hash != first.dataset_hash
    cache.write_text("{broken")  # damaged cache: recomputed, not trusted
    assert load_or_compute_fingerprint(load_dataset(tiny), cache) == second


def test_cli_fingerprint_writes_json(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fp.json"
    assert main(["fingerprint", str(tiny), "-o", str(out)]) == 0
    assert Fingerprint.load(out).median_spacing == pytest.approx((2.0, 2.0, 4.5))
    text = capsys.readouterr().out
    assert "liver" in text and "(2, 2, 4.5) mm" in text


@pytest.mark.realdata
def test_openkbp_fingerprint(openkbp_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's OpenKBP numbers, and every file read exactly once (what keeps it fast; no clock)."""
    reads: list[str] = []
    real_read = fpmod.read_image

    def counting_read(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        reads.append(str(path))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(fpmod, "read_image", counting_read)
    datalist = load_dataset(openkbp_dir)
    fp = compute_fingerprint(datalist, show_progress=False)
    assert fp.n_cases == 34
    files = [str(p) for c in datalist.training for p in (*c.images, c.label)]
    assert sorted(reads) == sorted(files) and len(reads) == 68  # 34 images + 34 labels, once each
    # README: "median spacing (4.69, 4.69, 2.5) mm, CT window (-994, 1540) HU"
    assert fp.median_spacing == pytest.approx((4.69, 4.69, 2.5), abs=0.005)  # 4.688 in-plane
    assert fp.ct_window == pytest.approx((-994.0, 1540.0), abs=0.5)
    assert fp.size["median"] == [128.0, 128.0, 128.0]
    assert set(fp.class_presence.values()) == {1.0}  # only patients with all 7 organs were kept
    assert len(fp.class_fraction) == 7
