"""medunet.metrics against an independent numpy/scipy reference and against MONAI's metrics.

The reference here shares no code with medunet.metrics: surfaces come from shifted-slice neighbour
tests on a zero-padded volume, distances from ``scipy.ndimage.distance_transform_edt`` on the full
volume (no cropping), percentiles from ``numpy.percentile``.
"""

from __future__ import annotations

import csv
import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from medunet.errors import GeometryError, GeometryMismatchError, LabelError
from medunet.metrics import MetricsTable, OrganScore, from_onehot, organ_metrics

# ---------------------------------------------------------------- independent reference


def ref_surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (outside the image = outside)."""
    pad = np.pad(mask, 1)
    interior = pad.copy()
    for ax in range(mask.ndim):
        interior &= np.roll(pad, 1, axis=ax) & np.roll(pad, -1, axis=ax)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return mask & ~interior[inner]


def ref_distances(src: np.ndarray, dst: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from each surface voxel of ``src`` to the nearest surface voxel of ``dst``."""
    dist = ndimage.distance_transform_edt(~ref_surface(dst), sampling=spacing)
    return dist[ref_surface(src)]


def ref_scores(pred: np.ndarray, ref: np.ndarray, spacing, tol: float = 2.0, pct: float = 95.0):
    """(dice, hd, nsd) for two non-empty binary masks."""
    dice = 2 * np.sum(pred & ref) / (pred.sum() + ref.sum())
    a, b = ref_distances(pred, ref, spacing), ref_distances(ref, pred, spacing)
    hd = max(np.percentile(a, pct), np.percentile(b, pct))
    nsd = (np.sum(a <= tol) + np.sum(b <= tol)) / (a.size + b.size)
    return float(dice), float(hd), float(nsd)


def random_blobs(rng: np.random.Generator, shape, n_labels: int, sigma: float = 2.5) -> np.ndarray:
    """Smooth random label map with ``n_labels`` nested-threshold blobs."""
    field = ndimage.gaussian_filter(rng.random(shape), sigma)
    lab = np.zeros(shape, np.int16)
    for k, q in enumerate(np.linspace(0.6, 0.95, n_labels), start=1):
        lab[field > np.quantile(field, q)] = k
    return lab


def box(shape, lo, hi) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = True
    return m


# ---------------------------------------------------------------- planted cases


def test_shifted_cubes_exact_hausdorff_and_dice() -> None:
    """A 20^3 cube shifted by 3 slices along a 3 mm axis: HD100 = 9 mm, Dice = 17/20, exactly."""
    shape = (30, 30, 40)
    ref = box(shape, (5, 5, 10), (25, 25, 30)).astype(np.uint8)
    pred = box(shape, (5, 5, 13), (25, 25, 33)).astype(np.uint8)
    s = organ_metrics(pred, ref, {1: "cube"}, (0.7, 0.7, 3.0), percentile=100)["cube"]
    assert s.dice == pytest.approx(17 / 20)
    assert s.hd95 == pytest.approx(9.0, abs=1e-5)
    assert s.volume_ref_ml == pytest.approx(20**3 * 0.7 * 0.7 * 3.0 / 1000)
    s95 = organ_metrics(pred, ref, {1: "cube"}, (0.7, 0.7, 3.0))["cube"]
    _, hd, nsd = ref_scores(pred.astype(bool), ref.astype(bool), (0.7, 0.7, 3.0))
    assert s95.hd95 == pytest.approx(hd, abs=1e-4)
    assert s95.nsd == pytest.approx(nsd)


def test_concentric_spheres_hd_close_to_radius_gap() -> None:
    """Spheres of radius 10 and 13 voxels at 1 mm: every surface distance is ~3 mm."""
    g = np.indices((40, 40, 40)) - 20
    r = np.sqrt((g**2).sum(0))
    ref, pred = (r <= 10).astype(np.uint8), (r <= 13).astype(np.uint8)
    s = organ_metrics(pred, ref, {1: "ball"}, (1.0, 1.0, 1.0))["ball"]
    assert 2.0 <= s.hd95 <= 4.0
    assert s.dice == pytest.approx(2 * ref.sum() / (ref.sum() + pred.sum()))
    _, hd, nsd = ref_scores(pred.astype(bool), ref.astype(bool), (1.0, 1.0, 1.0))
    assert s.hd95 == pytest.approx(hd, abs=1e-4)
    assert s.nsd == pytest.approx(nsd)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 3.0), (2.5, 0.6, 1.1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_random_blobs_match_reference(spacing, seed) -> None:
    rng = np.random.default_rng(seed)
    pred, ref = random_blobs(rng, (36, 30, 20), 3), random_blobs(rng, (36, 30, 20), 3)
    out = organ_metrics(pred, ref, {1: "a", 2: "b", 3: "c"}, spacing, nsd_tolerance_mm=1.5)
    for lab, name in ((1, "a"), (2, "b"), (3, "c")):
        dice, hd, nsd = ref_scores(pred == lab, ref == lab, spacing, tol=1.5)
        assert out[name].dice == pytest.approx(dice, abs=1e-12)
        assert out[name].hd95 == pytest.approx(hd, abs=1e-4)
        assert out[name].nsd == pytest.approx(nsd, abs=1e-12)


def test_two_dimensional() -> None:
    rng = np.random.default_rng(3)
    pred, ref = random_blobs(rng, (64, 48), 2), random_blobs(rng, (64, 48), 2)
    out = organ_metrics(pred, ref, {1: "a", 2: "b"}, (0.8, 1.9))
    for lab, name in ((1, "a"), (2, "b")):
        dice, hd, nsd = ref_scores(pred == lab, ref == lab, (0.8, 1.9))
        assert (out[name].dice, out[name].nsd) == pytest.approx((dice, nsd))
        assert out[name].hd95 == pytest.approx(hd, abs=1e-4)


def test_organ_touching_the_border() -> None:
    """Voxels on the image border are surface voxels (outside the image counts as background)."""
    shape = (20, 20, 12)
    ref = box(shape, (0, 0, 0), (10, 20, 12)).astype(np.uint8)
    pred = box(shape, (0, 3, 0), (12, 20, 9)).astype(np.uint8)
    s = organ_metrics(pred, ref, {1: "o"}, (1.0, 0.8, 2.5))["o"]
    dice, hd, nsd = ref_scores(pred == 1, ref == 1, (1.0, 0.8, 2.5))
    assert (s.dice, s.nsd) == pytest.approx((dice, nsd))
    assert s.hd95 == pytest.approx(hd, abs=1e-4)
    # a full-image organ has every border voxel on its surface: identical masks -> hd 0, nsd 1
    full = np.ones(shape, np.uint8)
    s = organ_metrics(full, full, {1: "o"}, (1.0, 1.0, 1.0))["o"]
    assert (s.dice, s.hd95, s.nsd) == (1.0, 0.0, 1.0)


def test_single_voxel_organs() -> None:
    pred = np.zeros((10, 12, 8), np.uint8)
    ref = np.zeros_like(pred)
    pred[5, 5, 5] = 1
    ref[5, 8, 5] = 1  # 3 voxels away along a 0.7 mm axis: 2.1 mm
    s = organ_metrics(pred, ref, {1: "dot"}, (0.7, 0.7, 3.0))["dot"]
    assert s.dice == 0.0
    assert s.hd95 == pytest.approx(2.1, abs=1e-5)
    assert s.nsd == 0.0  # 2.1 mm > 2 mm tolerance
    s = organ_metrics(pred, ref, {1: "dot"}, (0.7, 0.7, 3.0), nsd_tolerance_mm=2.11)["dot"]
    assert s.nsd == 1.0


def test_empty_policy() -> None:
    shape = (16, 16, 10)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    ref[2:6, 2:6, 2:6] = 1  # organ 1: missed by the prediction
    pred[8:12, 8:12, 2:6] = 2  # organ 2: predicted but absent in ref
    # organ 3: absent in both
    out = organ_metrics(pred, ref, {0: "background", 1: "missed", 2: "spurious", 3: "absent"}, (1, 1, 2))
    assert set(out) == {"missed", "spurious", "absent"}  # background never scored
    m, sp, ab = out["missed"], out["spurious"], out["absent"]
    assert (m.dice, m.nsd, m.empty_ref, m.empty_pred) == (0.0, 0.0, False, True) and math.isnan(m.hd95)
    assert m.volume_ref_ml == pytest.approx(64 * 2 / 1000) and m.volume_pred_ml == 0.0
    assert (sp.dice, sp.nsd, sp.empty_ref, sp.empty_pred) == (0.0, 0.0, True, False) and math.isnan(sp.hd95)
    assert (ab.dice, ab.hd95, ab.nsd, ab.empty_ref, ab.empty_pred) == (1.0, 0.0, 1.0, True, True)


def test_torch_bool_and_numpy_inputs_agree() -> None:
    rng = np.random.default_rng(5)
    pred, ref = random_blobs(rng, (24, 24, 16), 1), random_blobs(rng, (24, 24, 16), 1)
    a = organ_metrics(pred, ref, {1: "o"}, (1.0, 1.0, 2.0))
    b = organ_metrics(torch.from_numpy(pred).long(), torch.from_numpy(ref), {1: "o"}, (1.0, 1.0, 2.0))
    c = organ_metrics(pred == 1, torch.from_numpy(ref == 1), {1: "o"}, (1.0, 1.0, 2.0))
    assert a == b == c


def test_hausdorff_off_gives_dice_only() -> None:
    rng = np.random.default_rng(6)
    pred, ref = random_blobs(rng, (24, 24, 16), 1), random_blobs(rng, (24, 24, 16), 1)
    s = organ_metrics(pred, ref, {1: "o"}, (1.0, 1.0, 1.0), hausdorff=False)["o"]
    assert s.dice == pytest.approx(ref_scores(pred == 1, ref == 1, (1, 1, 1))[0])
    assert math.isnan(s.hd95) and math.isnan(s.nsd)


def test_many_labels_and_labels_beyond_the_maps() -> None:
    rng = np.random.default_rng(7)
    pred, ref = random_blobs(rng, (40, 40, 20), 12, 1.5), random_blobs(rng, (40, 40, 20), 12, 1.5)
    labels = {k: f"l{k}" for k in range(1, 15)}  # 13, 14 occur in neither map
    out = organ_metrics(pred, ref, labels, (0.9, 0.9, 2.0))
    for k in range(1, 13):
        if (pred == k).any() and (ref == k).any():
            dice, hd, nsd = ref_scores(pred == k, ref == k, (0.9, 0.9, 2.0))
            assert out[f"l{k}"].hd95 == pytest.approx(hd, abs=1e-4)
            assert (out[f"l{k}"].dice, out[f"l{k}"].nsd) == pytest.approx((dice, nsd))
    assert out["l13"].empty_ref and out["l14"].empty_pred and out["l14"].dice == 1.0


def test_bad_inputs_fail_loudly() -> None:
    a = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(GeometryMismatchError):
        organ_metrics(a, np.zeros((8, 8, 7), np.uint8), {1: "o"}, (1, 1, 1))
    with pytest.raises(LabelError, match="integer"):
        organ_metrics(a.astype(np.float32), a, {1: "o"}, (1, 1, 1))
    with pytest.raises(LabelError, match="2D or 3D"):
        organ_metrics(a[None], a[None], {1: "o"}, (1, 1, 1, 1))
    with pytest.raises(GeometryError):
        organ_metrics(a, a, {1: "o"}, (1, 1))
    with pytest.raises(GeometryError):
        organ_metrics(a, a, {1: "o"}, (1, 0, 1))
    with pytest.raises(LabelError, match="positive"):
        organ_metrics(a, a, {-1: "o"}, (1, 1, 1))
    with pytest.raises(LabelError, match="unique"):
        organ_metrics(a, a, {1: "o", 2: "o"}, (1, 1, 1))


def test_from_onehot_roundtrip() -> None:
    rng = np.random.default_rng(8)
    lab = rng.integers(0, 4, size=(6, 7, 5))
    onehot = np.eye(4, dtype=np.float32)[lab].transpose(3, 0, 1, 2)  # (C, H, W, D)
    np.testing.assert_array_equal(from_onehot(onehot), lab)
    np.testing.assert_array_equal(from_onehot(torch.from_numpy(onehot)[None], channel_dim=1)[0], lab)


# ---------------------------------------------------------------- equality with MONAI


def _monai(pred: np.ndarray, ref: np.ndarray, n: int, spacing, tol: float):
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDiceMetric
    from monai.networks.utils import one_hot

    yp = one_hot(torch.from_numpy(pred).long()[None, None], n + 1)
    yr = one_hot(torch.from_numpy(ref).long()[None, None], n + 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = DiceMetric(include_background=False, reduction="none")(yp, yr)[0]
        hd = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            yp, yr, spacing=list(spacing)
        )[0]
        nsd = SurfaceDiceMetric([tol] * n, include_background=False, reduction="none")(
            yp, yr, spacing=list(spacing)
        )[0]
    return dice.numpy(), hd.numpy(), nsd.numpy()


@pytest.mark.parametrize(
    ("shape", "spacing", "n_labels", "seed"),
    [
        ((32, 28, 18), (1.0, 1.0, 1.0), 3, 0),
        ((32, 28, 18), (0.7, 0.7, 3.0), 3, 1),
        ((40, 24, 12), (1.5, 0.8, 2.2), 4, 2),
        ((20, 20, 20), (0.5, 0.5, 0.5), 2, 3),
        ((64, 56), (0.8, 1.3), 3, 4),
        ((48, 48), (1.0, 1.0), 5, 5),
    ],
)
def test_matches_monai(shape, spacing, n_labels, seed) -> None:
    rng = np.random.default_rng(seed)
    pred, ref = random_blobs(rng, shape, n_labels, 2.0), random_blobs(rng, shape, n_labels, 2.0)
    labels = {k: f"o{k}" for k in range(1, n_labels + 1)}
    ours = organ_metrics(pred, ref, labels, spacing, nsd_tolerance_mm=1.5)
    dice, hd, nsd = _monai(pred, ref, n_labels, spacing, 1.5)
    for k in labels:
        s = ours[f"o{k}"]
        assert not (s.empty_ref or s.empty_pred)
        assert s.dice == pytest.approx(float(dice[k - 1]), abs=1e-6)
        assert s.hd95 == pytest.approx(float(hd[k - 1]), abs=1e-3)
        assert s.nsd == pytest.approx(float(nsd[k - 1]), abs=1e-6)


# ---------------------------------------------------------------- aggregation


def _score(dice: float, hd: float, empty_ref: bool = False, empty_pred: bool = False) -> OrganScore:
    return OrganScore(dice, hd, 0.5, empty_ref, empty_pred, 1.0, 2.0)


def test_table_summary_counts_and_means() -> None:
    t = MetricsTable()
    t.add("c1", {"liver": _score(0.9, 2.0), "kidney": _score(0.8, 4.0)})
    t.add("c2", {"liver": _score(0.7, 6.0), "kidney": _score(0.0, math.nan, empty_pred=True)})
    t.add("c3", {"liver": _score(1.0, 0.0, True, True), "kidney": _score(0.0, math.nan, empty_ref=True)})
    s = t.summary()
    liver, kidney = s["liver"], s["kidney"]
    assert (liver["n"], liver["n_empty_ref"], liver["n_empty_pred"], liver["n_hd95_nan"]) == (3, 1, 1, 0)
    assert liver["dice_mean"] == pytest.approx((0.9 + 0.7 + 1.0) / 3)
    assert liver["hd95_mean"] == pytest.approx(8.0 / 3)
    assert liver["dice_median"] == pytest.approx(0.9)
    assert liver["dice_std"] == pytest.approx(np.std([0.9, 0.7, 1.0]))
    assert (kidney["n"], kidney["n_empty_ref"], kidney["n_empty_pred"], kidney["n_hd95_nan"]) == (3, 1, 1, 2)
    assert kidney["dice_mean"] == pytest.approx(0.8 / 3)  # empty cases enter Dice as 0
    assert kidney["hd95_mean"] == pytest.approx(4.0)  # finite values only; 2 NaN counted above
    assert s["mean"]["val_dice_mean"] == pytest.approx(((0.9 + 0.7 + 1.0) / 3 + 0.8 / 3) / 2)
    assert s["mean"]["val_hd95_mean"] == pytest.approx((8.0 / 3 + 4.0) / 2)
    assert len(t.rows()) == 6


def test_table_csv_and_json(tmp_path) -> None:
    t = MetricsTable()
    t.add("case_a", {"liver": _score(0.9, 2.5)})
    t.add("case_b", {"liver": _score(0.0, math.nan, empty_pred=True)})
    p = t.write_csv(tmp_path / "out" / "metrics.csv")
    with open(p, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["case_id"] for r in rows] == ["case_a", "case_b"]
    assert float(rows[0]["dice"]) == 0.9 and float(rows[0]["hd95"]) == 2.5
    assert math.isnan(float(rows[1]["hd95"])) and rows[1]["empty_pred"] == "True"
    assert float(rows[0]["volume_pred_ml"]) == 2.0
    j = json.loads(t.write_summary_json(tmp_path / "summary.json").read_text())
    assert j["liver"]["n_empty_pred"] == 1 and j["liver"]["hd95_mean"] == 2.5
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporaries


def test_table_rejects_reserved_organ_name() -> None:
    with pytest.raises(LabelError):
        MetricsTable().add("c", {"mean": _score(1.0, 0.0)})


@pytest.mark.parametrize("shape", [(17, 13, 9), (2, 9, 7), (21, 18), (1, 5)])
def test_surface_equals_binary_erosion(shape) -> None:
    """The shifted-AND surface is bit-identical to ``mask & ~binary_erosion(mask, border_value=0)``."""
    from medunet.metrics import _surface

    rng = np.random.default_rng(len(shape))
    for density in (0.3, 0.7, 0.95, 1.0):
        mask = rng.random(shape) < density
        np.testing.assert_array_equal(_surface(mask), ref_surface(mask))
        np.testing.assert_array_equal(_surface(mask), mask & ~ndimage.binary_erosion(mask, border_value=0))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_do_not_change_results(threads) -> None:
    rng = np.random.default_rng(7)
    ref = random_blobs(rng, (40, 36, 20), 4)
    pred = random_blobs(rng, (40, 36, 20), 4)
    labels = {k: f"o{k}" for k in range(1, 5)}
    assert organ_metrics(pred, ref, labels, (0.8, 0.8, 2.0), threads=threads) == organ_metrics(
        pred, ref, labels, (0.8, 0.8, 2.0), threads=1
    )


def test_unannotated_organs_are_counted_not_scored() -> None:
    from medunet.metrics import MetricsTable
    from medunet.training.validation import annotated_labels

    labels = {0: "background", 1: "a", 2: "b"}
    ref = np.zeros((6, 6, 6), np.uint8)
    ref[1:3, 1:3, 1:3] = 1
    pred = ref.copy()
    pred[4:6, 4:6, 4:6] = 2  # b predicted where b's reference is unknown
    table = MetricsTable()
    scored, unannotated = annotated_labels(labels, [1, 1, 0])
    assert scored == {0: "background", 1: "a"} and unannotated == ["b"]
    table.add("case1", organ_metrics(pred, ref, scored, (1, 1, 1)), unannotated=unannotated)
    table.add("case2", organ_metrics(ref, ref, labels, (1, 1, 1)))
    summary = table.summary()
    assert summary["b"]["n"] == 1 and summary["b"]["n_unannotated"] == 1
    assert summary["b"]["dice_mean"] == 1.0  # case1's unknown b is not a 0
    assert summary["a"]["n"] == 2 and summary["a"]["n_unannotated"] == 0
