"""Per-organ Dice + HD95 (mm): stock MONAI metrics vs ``medunet.metrics.organ_metrics``.

Stock is what a MONAI user writes: one-hot ``(1, C, H, W, D)`` float tensors (``monai.networks.utils.
one_hot``), ``DiceMetric(include_background=False)`` and ``HausdorffDistanceMetric(percentile=95,
include_background=False)`` with ``spacing`` passed. Building the one-hot tensors is NOT counted in the
stock time (a conservative ratio). With many labels the one-hot tensors do not fit in memory at once,
so stock runs over chunks of ``--chunk`` labels (still counted as stock time).

Run from the repository root::

    python -m benchmarks.bench_metrics            # 512x512x200, 5 and 50 labels
    python -m benchmarks.bench_metrics --smoke    # tiny, seconds
"""

from __future__ import annotations

import argparse
import logging
import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from benchmarks.common import HEADER, Row, print_row, timeit, write_results
from medunet.metrics import available_cpus, organ_metrics

SPACING = (0.8, 0.8, 2.0)


def _bumpy_ellipsoid(
    rng: np.random.Generator, shape: tuple[int, ...], center: np.ndarray, radii: np.ndarray, bump: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """A smooth, irregular blob: an ellipsoid whose radius is modulated by low-frequency noise."""
    lo = np.maximum(np.floor(center - radii * (1 + bump) - 1), 0).astype(int)
    hi = np.minimum(np.ceil(center + radii * (1 + bump) + 2), shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grids = np.ogrid[box]
    q = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    coarse = rng.standard_normal((4, 4, 4))
    noise = ndimage.zoom(
        coarse, [(b - a) / 4 for a, b in zip(lo, hi, strict=True)], order=1, grid_mode=True, mode="nearest"
    )
    noise = noise[tuple(slice(0, b - a) for a, b in zip(lo, hi, strict=True))]
    noise = np.pad(
        noise, [(0, (b - a) - n) for a, b, n in zip(lo, hi, noise.shape, strict=True)], mode="edge"
    )
    return box, q < (1.0 + bump * noise) ** 2


def make_phantom(
    shape: Sequence[int], n_labels: int, seed: int = 0, spacing: Sequence[float] = SPACING
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and prediction label maps (uint8) with ``n_labels`` organ-like blobs.

    Organ radii are log-uniform between ~6 and ~70 mm (scaled down for volumes under 400 mm) (a few large ones when ``n_labels`` is small);
    the prediction moves each centre by ~2 voxels, scales its radii by up to 10 % and re-draws the
    surface noise, so Dice lands around 0.8-0.95 and HD95 at a few mm, as for a decent model.
    """
    rng = np.random.default_rng(seed)
    shape_t = tuple(int(s) for s in shape)
    sp = np.asarray(spacing, dtype=float)
    ref = np.zeros(shape_t, np.uint8)
    pred = np.zeros(shape_t, np.uint8)
    lo_mm, hi_mm = (25.0, 70.0) if n_labels <= 8 else (6.0, 45.0)
    scale = min(1.0, float(np.min(np.asarray(shape_t) * sp)) / 400.0)  # smaller organs in small volumes
    lo_mm, hi_mm = lo_mm * scale, hi_mm * scale
    for lab in range(1, n_labels + 1):
        r_mm = np.exp(rng.uniform(np.log(lo_mm), np.log(hi_mm))) * rng.uniform(0.7, 1.3, size=3)
        radii = np.maximum(r_mm / sp, 2.0)
        center = np.array(
            [
                rng.uniform(r + 2, s - r - 2) if s > 2 * r + 4 else s / 2
                for r, s in zip(radii, shape_t, strict=True)
            ]
        )
        box, m = _bumpy_ellipsoid(rng, shape_t, center, radii, 0.12)
        ref[box][m] = lab
        c2 = center + rng.normal(0, 2.0, size=3)
        box, m = _bumpy_ellipsoid(rng, shape_t, c2, radii * rng.uniform(0.9, 1.1, size=3), 0.12)
        pred[box][m] = lab
    return ref, pred


def stock_monai(
    pred: np.ndarray, ref: np.ndarray, labels: Sequence[int], spacing: Sequence[float], chunk: int
) -> tuple[float, float, dict[int, tuple[float, float]]]:
    """MONAI DiceMetric + HausdorffDistanceMetric per chunk of labels.

    Returns (metric seconds, one-hot building seconds, {label: (dice, hd95)}).
    """
    import time

    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    out: dict[int, tuple[float, float]] = {}
    total = onehot_s = 0.0
    p_t, r_t = torch.from_numpy(pred), torch.from_numpy(ref)
    for i in range(0, len(labels), chunk):
        labs = list(labels[i : i + chunk])
        t0 = time.perf_counter()
        # one-hot: channel 0 = background (ignored), then one channel per label of the chunk
        yp = torch.stack([p_t == 0] + [p_t == lab for lab in labs])[None].float()
        yr = torch.stack([r_t == 0] + [r_t == lab for lab in labs])[None].float()
        onehot_s += time.perf_counter() - t0
        dice_m = DiceMetric(include_background=False, reduction="none")
        hd_m = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            d = dice_m(yp, yr)[0]
            h = hd_m(yp, yr, spacing=list(spacing))[0]
        total += time.perf_counter() - t0
        for j, lab in enumerate(labs):
            out[lab] = (float(d[j]), float(h[j]))
        del yp, yr
    return total, onehot_s, out


def run_case(
    shape: Sequence[int], n_labels: int, *, chunk: int, repeats: int, stock_repeats: int, threads: int | None
) -> Row:
    """Time MONAI vs ``organ_metrics`` (its default threads, or ``threads``) and, for reference, 1 thread."""
    ref, pred = make_phantom(shape, n_labels)
    labels = {k: f"organ_{k:02d}" for k in range(1, n_labels + 1)}
    timing, ours = timeit(lambda: organ_metrics(pred, ref, labels, SPACING, threads=threads), repeats=repeats)
    timing_1, ours_1 = timeit(lambda: organ_metrics(pred, ref, labels, SPACING, threads=1), repeats=repeats)
    if ours_1 != ours:
        raise AssertionError("organ_metrics results depend on the thread count")
    stock_times, onehot_times = [], []
    for _ in range(stock_repeats):
        t, t_onehot, stock = stock_monai(pred, ref, list(labels), SPACING, chunk)
        stock_times.append(t)
        onehot_times.append(t_onehot)
    d_dice = max(abs(ours[labels[k]].dice - stock[k][0]) for k in labels)
    d_hd = max(abs(ours[labels[k]].hd95 - stock[k][1]) for k in labels)
    name = f"dice+hd95 {'x'.join(map(str, shape))} {n_labels} labels"
    return Row(
        name,
        min(stock_times),
        timing.min_s,
        agreement=max(d_dice, d_hd),
        agreement_label="max_abs_diff(dice,hd95_mm)",
        extra={
            "max_abs_diff_dice": d_dice,
            "max_abs_diff_hd95_mm": d_hd,
            "medunet_median_s": timing.median_s,
            "medunet_threads": threads if threads is not None else available_cpus(),
            "medunet_1thread_s": timing_1.min_s,
            "ratio_1thread": min(stock_times) / timing_1.min_s,
            "stock_onehot_build_s": min(onehot_times),
            "ratio_incl_onehot": (min(stock_times) + min(onehot_times)) / timing.min_s,
            "spacing_mm": SPACING,
            "mean_dice": float(np.mean([s.dice for s in ours.values()])),
            "mean_hd95_mm": float(np.mean([s.hd95 for s in ours.values()])),
            "nan_hd95": sum(math.isnan(s.hd95) for s in ours.values()),
        },
    )


def main(argv: Sequence[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny volumes, runs in seconds (used by the test)")
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 200))
    ap.add_argument("--labels", type=int, nargs="+", default=(5, 50))
    ap.add_argument("--chunk", type=int, default=5, help="labels per stock one-hot chunk (memory)")
    ap.add_argument("--repeats", type=int, default=3, help="medunet repeats (min is reported)")
    ap.add_argument("--stock-repeats", type=int, default=1)
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="medunet threads (default: organ_metrics' default, the CPUs available); 1 thread is also timed",
    )
    ap.add_argument("--out", default=None, help="results JSON (default runs/benchmarks/metrics.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    shape = (48, 40, 24) if args.smoke else tuple(args.shape)
    labels = (3, 12) if args.smoke else tuple(args.labels)
    warm_ref, warm_pred = make_phantom((24, 20, 12), 2)  # first MONAI call pays one-off set-up costs
    stock_monai(warm_pred, warm_ref, [1, 2], SPACING, args.chunk)
    print(HEADER)
    rows = []
    for n in labels:
        row = run_case(
            shape,
            n,
            chunk=args.chunk,
            repeats=args.repeats,
            stock_repeats=args.stock_repeats,
            threads=args.threads,
        )
        print_row(row)
        print(
            f"  medunet on {row.extra['medunet_threads']} thread(s); on 1 thread: "
            f"{row.extra['medunet_1thread_s']:.3f} s ({row.extra['ratio_1thread']:.1f}x)"
        )
        rows.append(row)
    path = write_results("metrics_smoke" if args.smoke else "metrics", rows, out=args.out, shape=shape)
    print(f"results: {path}")
    return rows


if __name__ == "__main__":
    main()
