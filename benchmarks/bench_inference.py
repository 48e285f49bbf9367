"""End-to-end inference, file in -> mask file out: stock MONAI (model-zoo spleen style) vs medunet's Predictor.

Stock is the ``spleen_ct_segmentation`` inference recipe: ``LoadImaged``, ``EnsureChannelFirstd``,
``Orientationd("RAS")``, ``Spacingd(1.5, 1.5, 2.0)``, ``ScaleIntensityRanged(-57, 164 -> 0, 1, clip)``,
``SlidingWindowInferer(96^3, sw_batch_size=4, overlap=0.5)``, ``Activationsd(softmax)``, ``Invertd`` of
the probabilities to the source grid, ``AsDiscreted(argmax)``, ``SaveImaged`` (float32). medunet is
``read_nifti`` -> ``Predictor.predict`` (tensor preprocessing, argmax on the network grid, nearest label
resampling back) -> ``write_nifti`` (uint8). Both use the same network and weights: a UNet trained
briefly on the synthetic phantom and cached (``benchmarks.bench_model``), or ``--checkpoint``, or with
``--random-net`` a seeded random UNet plus an intensity prior. Stock keeps the model zoo's window settings
(overlap 0.5, ``--blend`` default ``constant``). medunet runs twice, and two rows are printed side by side:

* ``default``: the Predictor's defaults (CT foreground crop, overlap 0.25, gaussian blending; change them
  with ``--medunet-overlap`` / ``--medunet-blend`` / ``--no-crop``);
* ``equal``: stock's settings (same overlap, blending, no crop, fp32, same threads and window batch).

medunet's network runs in its default engine (``--medunet-engine auto``, as ``medunet predict``:
OpenVINO fp32 on a CPU where it is installed); with a trained checkpoint and an engine other than
PyTorch a third row, ``equal_torch``, runs the equal settings in PyTorch, so the engine's share of the
speed-up is visible. The one-off model setup (loading; an engine's first export into the cache) is
printed apart and not in the totals, as stock's model loading is not.

Each pipeline runs in its own spawned process so its peak RSS is its own. Agreement is Dice per
foreground label between the two mask files read back from disk (never a fraction of equal voxels,
which counts the air); the row's agreement is the lowest of them.

Run from the repository root::

    python -m benchmarks.bench_inference                 # synthetic 512x512x300 int16 CT (LPS)
    python -m benchmarks.bench_inference --real          # real 128^3 head-and-neck CTs (--max-cases)
    python -m benchmarks.bench_inference --device cuda   # GPU: adds GPU memory and TFLOP/s
    python -m benchmarks.bench_inference --smoke         # tiny volume, tiny net, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    HEADER,
    Row,
    add_cache_dir_argument,
    bench_cache_dir,
    dice_per_label,
    print_row,
    write_results,
)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
OPENKBP = REPO.parent / "shared" / "data" / "openkbp_hn_ct"
STAGES = ("load", "preprocess", "sliding_window", "postprocess", "save")


@dataclass(frozen=True)
class Setup:
    """Everything both pipelines share: network, plans-equivalent settings, device."""

    num_classes: int = 4
    net_size: str = "small"  # registry preset: channels (16, 32, 64, 128, 256), 2 residual units
    patch: int = 96
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0)
    a_min: float = -57.0
    a_max: float = 164.0
    sw_batch_size: int = 4
    overlap: float = 0.5
    blend: str = "constant"
    device: str = "cpu"
    seed: int = 0
    checkpoint: str | None = None
    amp: bool = False
    threads: int = 0  # 0 = torch default
    prior: bool = True  # add the smooth intensity prior (see PriorUNet) to the random UNet's logits
    random_net: bool = False  # no checkpoint: a seeded random UNet (+ prior) instead of the trained one
    # medunet's own settings; None = the Predictor's default (stock always runs overlap/blend above)
    medunet_overlap: float | None = None
    medunet_blend: str | None = None
    crop_foreground: bool | None = None
    medunet_sw_batch_size: int | None = None  # None: the Predictor's default (2 for 3D on CPU)
    # medunet's network runtime: "auto" is medunet predict's default (OpenVINO fp32 on a CPU where it is
    # installed); a random net (no checkpoint to export) always runs in PyTorch
    engine: str = "auto"


class PriorUNet:
    """Factory for a random UNet whose logits get a fixed, smooth intensity prior added.

    A random-weight UNet's argmax changes label every few voxels, so almost every voxel lies on a
    boundary and any two valid ways of going back to the source grid (stock: linear-resample the
    probabilities, then argmax; medunet: argmax, then nearest) disagree on a large fraction. Real models
    have organ-sized regions. The prior (3^3 mean of the windowed intensity, scored against class centres
    air / soft tissue / enhancing organ / bone) gives organ-like regions while the compute is exactly the
    UNet's. Off with ``--no-prior``.
    """

    CENTRES = (0.0, 0.44, 0.60, 1.0)  # in the [0, 1] window: air, ~40 HU, ~75 HU, bone

    @staticmethod
    def wrap(unet: Any, num_classes: int, strength: float = 200.0) -> Any:
        import torch

        centres = torch.linspace(0.0, 1.0, num_classes)
        if num_classes == len(PriorUNet.CENTRES):
            centres = torch.tensor(PriorUNet.CENTRES)

        class _Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.unet = unet
                self.register_buffer("centres", centres.view(1, -1, 1, 1, 1))

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                smooth = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1, count_include_pad=False)
                return 0.1 * self.unet(x) - strength * (smooth - self.centres) ** 2

        return _Net().eval()


def _build(setup: Setup) -> tuple[Any, Any]:
    """(network, plans) -- from the checkpoint, or a seeded random registry UNet."""
    import torch

    from medunet.networks import build_network
    from medunet.plans import Intensity, Plans

    if setup.checkpoint:
        from medunet.training.checkpoint import load_model

        net, plans = load_model(setup.checkpoint)
        return net.eval(), plans
    torch.manual_seed(setup.seed)
    kwargs = {"size": setup.net_size}
    net = build_network("unet", 3, 1, setup.num_classes, **kwargs).eval()
    if setup.prior:
        net = PriorUNet.wrap(net, setup.num_classes)
    plans = Plans(
        labels={i: ("background" if i == 0 else f"organ{i}") for i in range(setup.num_classes)},
        target_spacing=setup.spacing,
        patch_size=(setup.patch,) * 3,
        intensity=Intensity("ct_window", setup.a_min, setup.a_max),
        network="unet",
        network_kwargs=kwargs,
    )
    return net, plans


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _count_windows(shape: Sequence[int], roi: int, overlap: float) -> int:
    """Windows MONAI's sliding window visits on a grid of ``shape`` (its scan-interval rule)."""
    n = 1
    for s in shape:
        if s <= roi:
            continue
        interval = max(int(roi * (1 - overlap)), 1)
        n *= math.ceil((s - roi) / interval) + 1
    return n


def _gflop_per_window(net: Any, patch: int, device: str) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, patch, patch, patch, device=device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(x)
    return counter.get_total_flops() / 1e9


def _job(kind: str, setup: Setup, paths: list[str], out_dir: str) -> dict[str, Any]:
    """Run one pipeline over ``paths`` in this (fresh) process; return stage times and peak memory."""
    import torch

    if setup.threads:
        torch.set_num_threads(setup.threads)
    net, plans = _build(setup)
    net = net.to(setup.device)
    with torch.inference_mode():  # warm-up: oneDNN picks its kernels on the first call
        net(torch.zeros(setup.sw_batch_size, 1, *(setup.patch,) * 3, device=setup.device))
    runner = _stock_runner if kind == "stock" else _medunet_runner
    t_setup = time.perf_counter()
    run_one = runner(net, plans, setup, out_dir)
    setup_s = time.perf_counter() - t_setup
    baseline = _rss_mb()  # the model loaded (and compiled, for an engine): peaks are counted above it
    settings = getattr(
        run_one,
        "settings",
        {"overlap": setup.overlap, "mode": setup.blend, "sw_batch_size": setup.sw_batch_size, "amp": False},
    )
    stages = dict.fromkeys(STAGES, 0.0)
    outputs: list[str] = []
    grid_shapes: list[tuple[int, ...]] = []
    if setup.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for p in paths:
        out, times, grid_shape = run_one(p)
        outputs.append(out)
        grid_shapes.append(grid_shape)
        for k, v in times.items():
            stages[k] += v
    total = time.perf_counter() - t0
    res: dict[str, Any] = {
        "total_s": total,
        "stages_s": stages,
        "outputs": outputs,
        "grid_shapes": grid_shapes,
        "peak_rss_mb": _peak_rss_mb(),
        "baseline_rss_mb": baseline,
        "torch_threads": torch.get_num_threads(),
        "setup_s": setup_s,
        "crop_foreground": False,
        "engine": "torch",
        **settings,
    }
    if setup.device.startswith("cuda"):
        res["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return res


def _stock_runner(net: Any, plans: Any, setup: Setup, out_dir: str):  # noqa: ANN202
    import torch
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    load = Compose([LoadImaged("image", image_only=False), EnsureChannelFirstd("image")])
    pre = Compose(
        [
            LoadImaged("image"),
            EnsureChannelFirstd("image"),
            Orientationd("image", axcodes="RAS"),
            Spacingd("image", pixdim=setup.spacing, mode="bilinear"),
            ScaleIntensityRanged(
                "image", a_min=setup.a_min, a_max=setup.a_max, b_min=0.0, b_max=1.0, clip=True
            ),
        ]
    )
    inferer = SlidingWindowInferer(
        roi_size=(setup.patch,) * 3,
        sw_batch_size=setup.sw_batch_size,
        overlap=setup.overlap,
        mode=setup.blend,
    )
    post = Compose(
        [
            Activationsd("pred", softmax=True),
            Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
            AsDiscreted("pred", argmax=True),
        ]
    )
    save = SaveImaged(
        "pred",
        output_dir=out_dir,
        output_postfix="seg",
        output_ext=".nii.gz",
        resample=False,
        output_dtype=np.float32,
        separate_folder=False,
        print_log=False,
    )

    def run_one(path: str) -> tuple[str, dict[str, float], tuple[int, ...]]:
        t = {}
        t0 = time.perf_counter()
        d = load({"image": path})
        t1 = time.perf_counter()
        for tr in pre.transforms[2:]:  # the loading steps already ran (and are recorded) above
            d = tr(d)
        img = d["image"].to(setup.device)
        _sync(setup.device)
        t2 = time.perf_counter()
        with torch.inference_mode():
            pred = inferer(img[None], net)[0]
        _sync(setup.device)
        t3 = time.perf_counter()
        d["pred"] = pred.cpu() if setup.device != "cpu" else pred
        d["image"] = d["image"].cpu()
        d = post(d)
        t4 = time.perf_counter()
        save(d)
        t5 = time.perf_counter()
        t = {"load": t1 - t0, "preprocess": t2 - t1, "sliding_window": t3 - t2, "postprocess": t4 - t3}
        t["save"] = t5 - t4
        stem = Path(path).name.removesuffix(".nii.gz").removesuffix(".nii")
        return str(Path(out_dir) / f"{stem}_seg.nii.gz"), t, tuple(img.shape[1:])

    return run_one


def _medunet_runner(net: Any, plans: Any, setup: Setup, out_dir: str):  # noqa: ANN202
    import torch

    from medunet.inference import Predictor
    from medunet.io.nifti import read_nifti, write_nifti

    own: dict[str, Any] = {}  # medunet's defaults unless the command line overrides them
    if setup.medunet_overlap is not None:
        own["overlap"] = setup.medunet_overlap
    if setup.medunet_blend is not None:
        own["mode"] = setup.medunet_blend
    if setup.crop_foreground is not None:
        own["crop_foreground"] = setup.crop_foreground
    common = dict(device=setup.device, sw_batch_size=setup.medunet_sw_batch_size, amp=setup.amp, **own)
    if setup.checkpoint and setup.engine != "torch":
        # what medunet predict does: the engine export is cached per checkpoint (made now the first time;
        # setup_s in the results says how long that took)
        predictor = Predictor.from_checkpoint(setup.checkpoint, engine=setup.engine, **common)
    else:
        predictor = Predictor(net, plans, **common)
    if predictor.engine != "torch":  # warm-up, as _job does for the eager network
        with torch.inference_mode():
            predictor.net(torch.zeros(predictor.sw_batch_size, 1, *plans.patch_size))
    logger.info(
        "medunet Predictor: engine %s (%s), overlap %s, mode %s, crop_foreground %s",
        predictor.engine,
        predictor.engine_reason,
        predictor.overlap,
        predictor.mode,
        predictor.crop_foreground,
    )

    def run_one(path: str) -> tuple[str, dict[str, float], tuple[int, ...]]:
        t0 = time.perf_counter()
        vol = read_nifti(path)
        t1 = time.perf_counter()
        pred = predictor.predict(vol)
        t2 = time.perf_counter()
        stem = Path(path).name.removesuffix(".nii.gz").removesuffix(".nii")
        out = Path(out_dir) / f"{stem}_seg.nii.gz"
        write_nifti(out, pred.labels, pred.affine, dtype=np.uint8)
        t3 = time.perf_counter()
        tm = pred.timings
        times = {
            "load": t1 - t0,
            "preprocess": tm["preprocess_s"],
            "sliding_window": tm["inference_s"],
            "postprocess": (t2 - t1) - tm["preprocess_s"] - tm["inference_s"],
            "save": t3 - t2,
        }
        from medunet.inference.geometry import plan_grid

        grid = plan_grid(vol.shape, vol.affine, plans.target_spacing)
        box = pred.network_box  # the part of the grid the network ran on (foreground crop)
        shape = grid.resampled_shape if box is None else tuple(hi - lo for lo, hi in box)
        return str(out), times, shape

    run_one.settings = {  # type: ignore[attr-defined]
        "overlap": predictor.overlap,
        "mode": predictor.mode,
        "crop_foreground": predictor.crop_foreground,
        "sw_batch_size": predictor.sw_batch_size,
        "amp": predictor.amp,
        "engine": predictor.engine,
    }
    return run_one


def _run(kind: str, setup: Setup, paths: list[str], out_dir: str, isolate: bool) -> dict[str, Any]:
    if not isolate:
        return _job(kind, setup, paths, out_dir)
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_job, kind, setup, paths, out_dir).result()


def agreement(stock_path: str, medunet_path: str, num_classes: int) -> dict[str, Any]:
    """Dice per foreground label between two mask files (same grid required).

    A label absent from both masks is ``None`` ("absent"), never 1.0: agreement on nothing is no evidence.
    """
    import nibabel as nib

    a_img, b_img = nib.load(stock_path), nib.load(medunet_path)
    a = np.rint(np.asanyarray(a_img.dataobj)).astype(np.int32).squeeze()
    b = np.asanyarray(b_img.dataobj).astype(np.int32).squeeze()
    if a.shape != b.shape:
        raise AssertionError(f"mask shapes differ: stock {a.shape} vs medunet {b.shape}")
    return {
        "dice": dice_per_label(a, b, list(range(1, num_classes))),
        "voxels_stock": {lab: int((a == lab).sum()) for lab in range(1, num_classes)},
        "affine_max_diff": float(np.abs(a_img.affine - b_img.affine).max()),
        "shape": a.shape,
        "label_fractions": {int(k): float(v) for k, v in zip(*np.unique(b, return_counts=True), strict=True)},
    }


def _min_present(values: Any) -> float | None:
    """The lowest Dice over cases, ignoring cases where the label is absent from both masks."""
    present = [v for v in values if v is not None]
    return min(present) if present else None


def _smoke_volume(tmp: Path) -> Path:
    from benchmarks.synthetic_ct import synthetic_ct_path

    return synthetic_ct_path((32, 32, 20), (2.0, 2.0, 3.0), "PLI", cache_dir=tmp)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny volume and net, in-process (CI)")
    ap.add_argument("--real", action="store_true", help="the real 128^3 OpenKBP CTs instead of synthetic")
    ap.add_argument("--max-cases", type=int, default=2, help="with --real: how many cases")
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    ap.add_argument("--checkpoint", default=None, help="trained checkpoint instead of random weights")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--sw-batch-size", type=int, default=4)
    ap.add_argument("--blend", choices=("constant", "gaussian"), default="constant", help="stock blending")
    ap.add_argument("--medunet-overlap", type=float, default=None, help="default: the Predictor's")
    ap.add_argument("--medunet-blend", choices=("constant", "gaussian"), default=None)
    ap.add_argument("--no-crop", action="store_true", help="medunet: no foreground crop")
    ap.add_argument(
        "--medunet-sw-batch-size",
        type=int,
        default=None,
        help="medunet windows per forward (default: its own)",
    )
    ap.add_argument("--amp", action="store_true", help="medunet: bf16/fp16 autocast (stock stays fp32)")
    ap.add_argument(
        "--medunet-engine",
        default="auto",
        choices=("auto", "torch", "openvino", "onnxruntime", "torchscript"),
        help="medunet's network runtime in the default and equal rows (default: %(default)s, as medunet "
        "predict); an extra equal-settings row always runs PyTorch",
    )
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-prior", action="store_true", help="pure random UNet logits (see PriorUNet)")
    ap.add_argument(
        "--random-net",
        action="store_true",
        help="a seeded random UNet (+ prior) instead of the trained model",
    )
    ap.add_argument("--no-isolate", action="store_true", help="run both pipelines in this process")
    ap.add_argument("--out", default=None, help="results JSON (default runs/benchmarks/inference.json)")
    add_cache_dir_argument(ap)
    args = ap.parse_args(argv)
    # Both pipelines write their masks to a temporary folder that is removed at the end.
    with (
        tempfile.TemporaryDirectory(prefix="bench_inference_") as work,
        bench_cache_dir(args.cache_dir, args.smoke) as cache,
    ):
        return _bench(args, Path(work), cache)


def _bench(args: argparse.Namespace, tmp: Path, cache: Path) -> list[Row]:
    """The benchmark proper: outputs under ``tmp``, generated inputs (and the trained model) under ``cache``."""
    if args.smoke:  # a tiny random net: no training in CI
        setup = Setup(
            num_classes=3,
            net_size="tiny",
            patch=32,
            sw_batch_size=2,
            blend=args.blend,
            prior=not args.no_prior,
            random_net=True,
            medunet_overlap=args.medunet_overlap,
            # A tiny random net over 4 windows: gaussian vs constant weighting alone moves whole label
            # regions, so the smoke run blends like stock and checks the pipeline, not the weighting.
            medunet_blend=args.medunet_blend or args.blend,
            crop_foreground=False if args.no_crop else None,
        )
        paths = [str(_smoke_volume(cache))]
        isolate = False
    else:
        checkpoint = args.checkpoint
        if checkpoint is None and not args.random_net:
            from benchmarks.bench_model import trained_checkpoint

            checkpoint = str(trained_checkpoint(cache))
        setup = Setup(
            sw_batch_size=args.sw_batch_size,
            blend=args.blend,
            device=args.device,
            checkpoint=checkpoint,
            amp=args.amp,
            threads=args.threads,
            prior=not args.no_prior,
            random_net=checkpoint is None,
            medunet_overlap=args.medunet_overlap,
            medunet_blend=args.medunet_blend,
            crop_foreground=False if args.no_crop else None,
            medunet_sw_batch_size=args.medunet_sw_batch_size,
            engine=args.medunet_engine,
        )
        if args.real:
            paths = sorted(str(p) for p in (OPENKBP / "imagesTr").glob("*.nii.gz"))[: args.max_cases]
            if not paths:
                raise SystemExit(f"no real data under {OPENKBP}")
        else:
            from benchmarks.synthetic_ct import synthetic_ct_path

            paths = [str(synthetic_ct_path(tuple(args.shape), cache_dir=cache))]
        isolate = not args.no_isolate
    # The equal-settings run: stock's overlap and blending, no crop, fp32 (same threads and batch).
    equal_setup = replace(
        setup, medunet_overlap=setup.overlap, medunet_blend=setup.blend, crop_foreground=False, amp=False
    )
    net, plans = _build(setup)
    num_classes = plans.num_classes
    gflop = _gflop_per_window(net, setup.patch, "cpu")
    del net

    runs = {"stock": ("stock", setup), "default": ("medunet", setup), "equal": ("medunet", equal_setup)}
    if setup.checkpoint and setup.engine != "torch":  # the engine's share: the same settings in PyTorch
        runs["equal_torch"] = ("medunet", replace(equal_setup, engine="torch"))
    results: dict[str, dict[str, Any]] = {}
    for key, (kind, st) in runs.items():
        out_dir = tmp / key
        out_dir.mkdir()
        logger.info("running %s", key)
        results[key] = _run(kind, st, paths, str(out_dir), isolate)
    input_f32_mb = 0.0
    name = (
        "smoke"
        if args.smoke
        else ("real_openkbp" if args.real else "ct_{}".format("x".join(map(str, args.shape))))
    )
    stock = results["stock"]
    n_windows_stock = sum(_count_windows(g, setup.patch, setup.overlap) for g in stock["grid_shapes"])
    rows: list[Row] = []
    for key in [k for k in runs if k != "stock"]:
        med = results[key]
        agree = [agreement(a, b, num_classes) for a, b in zip(stock["outputs"], med["outputs"], strict=True)]
        dice = {lab: _min_present(a["dice"][lab] for a in agree) for lab in agree[0]["dice"]}
        present = [d for d in dice.values() if d is not None]
        input_f32_mb = sum(int(np.prod(a["shape"])) * 4 for a in agree) / len(agree) / 2**20
        n_windows = sum(_count_windows(g, setup.patch, med["overlap"]) for g in med["grid_shapes"])
        net_s, net_m = stock["stages_s"]["sliding_window"], med["stages_s"]["sliding_window"]
        rows.append(
            Row(
                name=f"inference_{name}_{key}",
                stock_s=stock["total_s"],
                medunet_s=med["total_s"],
                agreement=min(present) if present else float("nan"),
                agreement_label="min_fg_dice",
                extra={
                    "settings": key,
                    "dice_per_label_min_over_cases": dice,
                    "network_stage_s": {"stock": net_s, "medunet": net_m},
                    "network_stage_ratio": net_s / max(net_m, 1e-9),
                    "peak_rss_x_input": {
                        k: (r["peak_rss_mb"] - r["baseline_rss_mb"]) / input_f32_mb
                        for k, r in (("stock", stock), ("medunet", med))
                    },
                    "cases": len(paths),
                    "windows": n_windows,
                    "windows_stock": n_windows_stock,
                    "gflop_per_window": gflop,
                    "input_float32_mb": input_f32_mb,
                    "setup": runs[key][1].__dict__,
                    "model": "random UNet + prior" if setup.random_net else str(setup.checkpoint),
                    "stock": stock,
                    "medunet": med,
                    "agreement_per_case": agree,
                },
            )
        )
    _print(rows, results, setup)
    if not args.smoke or args.out:
        print("results:", write_results("inference", rows, out=args.out, argv=list(sys.argv)))
    return rows


def _print(rows: list[Row], results: dict[str, dict[str, Any]], setup: Setup) -> None:
    """The two rows side by side, then stages, memory and window counts."""
    print(HEADER)
    for row in rows:
        print_row(row)
    print(
        f"\n{'settings':<11} {'engine':>8} {'overlap':>7} {'blend':>9} {'crop':>5} {'net stock_s':>12} {'net medunet_s':>14} "
        f"{'net ratio':>9} {'windows s/m':>12} {'batch s/m':>9} {'RSS x input s/m':>16}  min Dice per label"
    )
    for row in rows:
        e, med = row.extra, row.extra["medunet"]
        net = e["network_stage_s"]
        rss = e["peak_rss_x_input"]
        dice = ", ".join(
            f"{lab}: {'absent' if d is None else f'{d:.4f}'}"
            for lab, d in e["dice_per_label_min_over_cases"].items()
        )
        print(
            f"{e['settings']:<11} {med['engine']:>8} {med['overlap']:>7} {med['mode']:>9} {str(med['crop_foreground']):>5} "
            f"{net['stock']:>12.2f} {net['medunet']:>14.2f} {e['network_stage_ratio']:>8.2f}x "
            f"{e['windows_stock']:>5}/{e['windows']:<6} "
            f"{e['stock']['sw_batch_size']:>5}/{med['sw_batch_size']:<3} {rss['stock']:>7.2f}/{rss['medunet']:<8.2f}  {dice}"
        )
    mine = [k for k in results if k != "stock"]
    print(f"\n{'stage':<16} {'stock_s':>9} " + " ".join(f"{k + '_s':>14}" for k in mine))
    for st in STAGES:
        vals = " ".join(f"{results[k]['stages_s'][st]:>14.3f}" for k in mine)
        print(f"{st:<16} {results['stock']['stages_s'][st]:>9.3f} {vals}")
    setups = " ".join(f"{results[k]['setup_s']:>14.3f}" for k in mine)
    print(f"{'model setup*':<16} {results['stock']['setup_s']:>9.3f} {setups}")
    print("* once per process, not in the totals (an engine's first use exports it into the cache)")
    e = rows[0].extra
    for k in ("stock", *mine):
        r = results[k]
        gpu = f", GPU peak {r['gpu_peak_mb']:.0f} MiB" if "gpu_peak_mb" in r else ""
        print(
            f"{k}: peak RSS {r['peak_rss_mb']:.0f} MiB (+{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f} MiB "
            f"over the loaded model; float32 input {e['input_float32_mb']:.0f} MiB){gpu}"
        )
        if setup.device.startswith("cuda"):
            n = (
                e["windows_stock"]
                if k == "stock"
                else next(x for x in rows if x.extra["settings"] == k).extra["windows"]
            )
            tflops = n * e["gflop_per_window"] / 1e3 / max(r["stages_s"]["sliding_window"], 1e-9)
            print(f"{k}: sliding window {tflops:.2f} TFLOP/s achieved")
    print(f"network: {e['model']}, {e['gflop_per_window']:.3g} GFLOP per {setup.patch}^3 window")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    rows = main()
    print(json.dumps({row.name: {"ratio": row.ratio, "min_fg_dice": row.agreement} for row in rows}))
