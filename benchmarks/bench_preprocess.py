"""Read + reorient + resample a CT: stock MONAI transforms vs medunet's path; plus gzip I/O rows.

Stock: ``LoadImaged`` -> ``EnsureChannelFirstd`` -> ``Orientationd("RAS")`` -> ``Spacingd(1.5, 1.5, 2.0,
bilinear)`` -> ``ScaleIntensityRanged``. medunet: ``read_nifti`` (ISA-L/zlib-ng inflate via
``medunet.io.fast_gzip``) -> ``Predictor.preprocess`` (transpose + flips, separable linear resampling
that reproduces ``Spacing``, the same window). A wide window (-1024..3071 HU) keeps the compared
volumes' full range. The volume is stored LPS (``--orientation``) so reorientation does work.
Agreement: max abs difference (HU) and correlation of the two resampled volumes.

The I/O rows time the gzip layer alone: inflating the CT (``gzip`` = what nibabel uses vs ISA-L and
zlib-ng) and deflating a uint8 mask of the same grid at level 1 (nibabel's default) and 6.

Run from the repository root::

    python -m benchmarks.bench_preprocess            # 512x512x300 int16, LPS
    python -m benchmarks.bench_preprocess --smoke    # tiny, seconds (CI)
"""

from __future__ import annotations

import argparse
import gzip
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (
    HEADER,
    Row,
    add_cache_dir_argument,
    bench_cache_dir,
    print_row,
    timeit,
    write_results,
)
from benchmarks.synthetic_ct import synthetic_ct_path

SPACING = (1.5, 1.5, 2.0)
#: A wide intensity window (HU), so the compared volumes keep their full dynamic range.
WINDOW = (-1024.0, 3071.0)


def stock_pipeline(spacing: Sequence[float] = SPACING) -> Callable[[str], torch.Tensor]:
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        ScaleIntensityRanged,
        Spacingd,
    )

    pre = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=tuple(spacing), mode="bilinear"),
            ScaleIntensityRanged("image", a_min=WINDOW[0], a_max=WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        ]
    )
    return lambda path: pre({"image": path})["image"].as_tensor()


def medunet_pipeline(spacing: Sequence[float] = SPACING) -> Callable[[str], torch.Tensor]:
    """``read_nifti`` + ``Predictor.preprocess`` (exactly what ``medunet predict`` runs before the network)."""
    from medunet.inference import Predictor
    from medunet.io.nifti import read_nifti
    from medunet.plans import Intensity, Plans

    plans = Plans(
        labels={0: "background", 1: "organ"},
        target_spacing=tuple(spacing),  # type: ignore[arg-type]
        patch_size=(96, 96, 96),
        intensity=Intensity("ct_window", *WINDOW),
    )
    predictor = Predictor(torch.nn.Identity(), plans, device="cpu")
    return lambda path: predictor.preprocess(read_nifti(path))[0][0]


def _agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: stock {tuple(a.shape)} vs medunet {tuple(b.shape)}")
    diff = float((a - b).abs().max()) * (WINDOW[1] - WINDOW[0])  # back to HU
    x, y = a.flatten().double(), b.flatten().double()
    corr = float(torch.corrcoef(torch.stack([x, y]))[0, 1])
    return diff, corr


def io_rows(path: Path, repeats: int) -> list[Row]:
    from isal import igzip
    from zlib_ng import gzip_ng

    rows = []
    blob = path.read_bytes()
    ref = gzip.decompress(blob)
    for name, fn in (("isal", igzip.decompress), ("zlib-ng", gzip_ng.decompress)):
        t_std, _ = timeit(lambda: gzip.decompress(blob), repeats=repeats)
        t_new, out = timeit(lambda fn=fn: fn(blob), repeats=repeats)
        rows.append(Row(f"inflate_ct_{name}", t_std.min_s, t_new.min_s, float(out == ref), "identical_bytes"))
    import nibabel as nib

    shape = nib.load(path).shape
    mask = np.zeros(shape, np.uint8)
    sl = tuple(slice(s // 5, 3 * s // 5) for s in shape)
    mask[sl] = 1
    mask[tuple(slice(s // 2, 4 * s // 5) for s in shape)] = 2
    data = mask.tobytes()
    for level in (1, 6):
        for name, fn in (
            ("isal", lambda d, lv: igzip.compress(d, compresslevel=min(lv, 3) if lv > 1 else 1, mtime=0)),
            ("zlib-ng", lambda d, lv: gzip_ng.compress(d, compresslevel=lv, mtime=0)),
        ):
            t_std, ref_c = timeit(
                lambda lv=level: gzip.compress(data, compresslevel=lv, mtime=0), repeats=repeats
            )
            t_new, out_c = timeit(lambda fn=fn, lv=level: fn(data, lv), repeats=repeats)
            rows.append(
                Row(
                    f"deflate_mask_L{level}_{name}",
                    t_std.min_s,
                    t_new.min_s,
                    float(gzip.decompress(out_c) == data),
                    "round_trip",
                    extra={"stock_mb": len(ref_c) / 1e6, "medunet_mb": len(out_c) / 1e6},
                )
            )
    return rows


def main(argv: Sequence[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    ap.add_argument("--orientation", default="LPS")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    add_cache_dir_argument(ap)
    args = ap.parse_args(argv)
    with bench_cache_dir(args.cache_dir, args.smoke) as cache:
        return _bench(args, cache)


def _bench(args: argparse.Namespace, cache: Path) -> list[Row]:
    """The benchmark proper, on a synthetic CT generated into (or reused from) ``cache``."""
    if args.smoke:
        path = synthetic_ct_path((40, 36, 24), (1.0, 1.2, 3.0), "PLI", cache_dir=cache)
        repeats = 1
    else:
        path = synthetic_ct_path(tuple(args.shape), orientation=args.orientation, cache_dir=cache)
        repeats = args.repeats

    stock, ours = stock_pipeline(), medunet_pipeline()
    t_stock, a = timeit(lambda: stock(str(path)), repeats=repeats, warmup=1 if not args.smoke else 0)
    t_ours, b = timeit(lambda: ours(str(path)), repeats=repeats, warmup=1 if not args.smoke else 0)
    diff, corr = _agreement(a, b)
    rows = [
        Row(
            f"preprocess_{'smoke' if args.smoke else 'x'.join(map(str, args.shape))}",
            t_stock.min_s,
            t_ours.min_s,
            diff,
            "max_abs_diff_HU",
            extra={
                "correlation": corr,
                "out_shape": tuple(b.shape),
                "stock_median_s": t_stock.median_s,
                "medunet_median_s": t_ours.median_s,
                "repeats": repeats,
            },
        )
    ]
    rows += io_rows(path, repeats)
    print(HEADER)
    for r in rows:
        print_row(r)
    print(f"resampled {tuple(b.shape)}, correlation {corr:.8f}")
    if not args.smoke or args.out:
        print("results:", write_results("preprocess", rows, out=args.out))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
