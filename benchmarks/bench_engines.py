"""Inference engines on one model and one volume: PyTorch fp32 vs ONNX Runtime vs OpenVINO (fp32, int8).

Every engine runs inside the same :class:`medunet.inference.Predictor` (same preprocessing, sliding
window, blending, resampling of class scores and post-processing); only the network forward differs.
Per engine: the sliding-window seconds (``Prediction.timings["inference_s"]``), end-to-end seconds
(read the NIfTI, predict, write the mask), the export seconds and the per-label Dice of its mask
against PyTorch's. int8 rows are ONNX Runtime static quantization calibrated on two other phantom
CTs (different noise), run in ONNX Runtime and, converted, in OpenVINO.

The model is ``--checkpoint``, else the benchmark's trained UNet (``benchmarks.bench_model``, trained
and cached on first use); the volume is the synthetic CT (``--shape``; its spacing is scaled so the body
keeps the size of the 512x512x300 phantom the model was trained on) or, with ``--real``, the first
OpenKBP head-and-neck CT (needs a checkpoint trained on it). Run from the repository root::

    python -m benchmarks.bench_engines --shape 256 256 160        # table + runs/benchmarks/engines.json
    python -m benchmarks.bench_engines --smoke --out /tmp/e.json  # tiny volume, random tiny net, seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    Row,
    add_cache_dir_argument,
    bench_cache_dir,
    dice_per_label,
    timeit,
    write_results,
)

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
OPENKBP = REPO.parent / "shared" / "data" / "openkbp_hn_ct"
#: (row name, runtime, export format, int8)
VARIANTS = (
    ("torch", "torch", None, False),
    ("onnxruntime", "onnxruntime", "onnx", False),
    ("openvino", "openvino", "openvino", False),
    ("onnxruntime_int8", "onnxruntime", "onnx", True),
    ("openvino_int8", "openvino", "openvino", True),
)


def _smoke_checkpoint(folder: Path) -> Path:
    """A seeded random registry ``tiny`` UNet with 32^3 patches (seconds, not a trained model)."""
    import torch

    from benchmarks.synthetic_ct import PHANTOM_LABELS
    from medunet.networks import build_network
    from medunet.plans import Intensity, Plans
    from medunet.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    plans = Plans(
        labels=dict(PHANTOM_LABELS),
        target_spacing=(1.5, 1.5, 2.0),
        patch_size=(32, 32, 32),
        intensity=Intensity("ct_window", -57.0, 164.0),
        network="unet",
        network_kwargs={"size": "tiny"},
    )
    net = build_network("unet", 3, 1, len(PHANTOM_LABELS), size="tiny")
    return save_checkpoint(folder / "smoke_unet.pt", {"model": net.state_dict(), "plans": plans.to_dict()})


def _volumes(args: argparse.Namespace, cache: Path) -> tuple[Path, list[Path], str]:
    """(the volume to predict, calibration volumes, a name for the rows)."""
    if args.real:
        paths = sorted((OPENKBP / "imagesTr").glob("*.nii.gz"))
        if len(paths) < 3:
            raise SystemExit(f"--real needs at least 3 CTs under {OPENKBP}")
        return paths[0], paths[1:3], "real_openkbp"
    from benchmarks.synthetic_ct import CT_SHAPE, CT_SPACING, synthetic_ct_path

    shape = tuple(args.shape)
    spacing = tuple(CT_SPACING)
    if not args.smoke:  # the body keeps the physical size of the phantom the model was trained on
        spacing = tuple(s * n / m for s, n, m in zip(CT_SPACING, CT_SHAPE, shape, strict=True))
    volume = synthetic_ct_path(shape, spacing, cache_dir=cache, seed=0)
    calib = [synthetic_ct_path(shape, spacing, cache_dir=cache, seed=s) for s in (1, 2)]
    return volume, calib, "ct_{}".format("x".join(map(str, shape)))


def _run_variant(
    name: str, engine: str, fmt: str | None, int8: bool, ckpt: Path, volume: Path, calib_dir: Path,
    work: Path, repeats: int, warmup: int,
) -> dict[str, Any]:  # fmt: skip
    """Export (when needed), load, then time sliding window and end to end; returns the measurements."""
    from medunet.engines.export import export_checkpoint
    from medunet.inference import Predictor
    from medunet.io import read_image, write_nifti

    export_s = 0.0
    engine_model = None
    if fmt is not None:
        t0 = time.perf_counter()
        artifact = export_checkpoint(
            ckpt, fmt, work / name, int8=int8, calibration=calib_dir if int8 else None, calibration_cases=2
        )
        export_s = time.perf_counter() - t0
        engine_model = artifact.directory
    predictor = Predictor.from_checkpoint(ckpt, engine=engine, engine_model=engine_model, device="cpu")
    out = work / f"{name}_seg.nii.gz"

    sliding: list[float] = []

    def e2e() -> np.ndarray:
        vol = read_image(volume)
        pred = predictor.predict(vol)
        write_nifti(out, pred.labels, pred.affine, dtype=np.uint8)
        sliding.append(pred.timings["inference_s"])
        return pred.labels

    e2e_timing, labels = timeit(e2e, repeats=repeats, warmup=warmup)
    return {
        "labels": labels,
        "sliding_window_s": min(sliding[warmup:]),
        "e2e_s": e2e_timing.min_s,
        "e2e_median_s": e2e_timing.median_s,
        "export_s": export_s,
        "sw_batch_size": predictor.sw_batch_size,
        "overlap": predictor.overlap,
    }


def main(argv: list[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny volume and random tiny net (CI)")
    ap.add_argument("--real", action="store_true", help="an OpenKBP CT (needs --checkpoint)")
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 160], help="synthetic CT shape")
    ap.add_argument("--checkpoint", help="model to export (default: the benchmark's trained UNet)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per engine (min reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed runs per engine first")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 rows")
    ap.add_argument("--out", help="results JSON (default: runs/benchmarks/engines.json)")
    add_cache_dir_argument(ap)
    args = ap.parse_args(argv)
    import torch

    from medunet.engines import runtime_available

    if args.smoke:
        args.shape, args.repeats, args.warmup = [64, 64, 40], 1, 0
    with bench_cache_dir(args.cache_dir, args.smoke) as cache, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        # onnxruntime's native library drops a session-id file (.ses) into $TMPDIR when it loads: keep it
        # inside this run's temporary folder, which is removed at exit.
        os.environ["TMPDIR"] = tempfile.tempdir = str(work)
        if args.checkpoint:
            ckpt = Path(args.checkpoint)
        elif args.smoke:
            ckpt = _smoke_checkpoint(work)
        else:
            if args.real:
                raise SystemExit("--real needs --checkpoint (a model trained on the real data)")
            from benchmarks.bench_model import trained_checkpoint

            ckpt = trained_checkpoint(cache)
        volume, calib, case = _volumes(args, cache)
        calib_dir = work / "calibration"
        calib_dir.mkdir()
        for p in calib:
            (calib_dir / p.name).symlink_to(p.resolve())
        results: dict[str, dict[str, Any]] = {}
        for name, engine, fmt, int8 in VARIANTS:
            if int8 and args.no_int8:
                continue
            if not runtime_available(engine):
                logger.warning("%s: not installed, skipped", engine)
                continue
            logger.info("running %s", name)
            results[name] = _run_variant(
                name, engine, fmt, int8, ckpt, volume, calib_dir, work, args.repeats, args.warmup
            )
        from medunet.training.checkpoint import load_model

        _, plans = load_model(ckpt)
        organs = [k for k in sorted(plans.labels) if k != 0]
        ref = results["torch"]
        rows = []
        for name, r in results.items():
            dice = dice_per_label(r["labels"], ref["labels"], organs)
            rows.append(
                Row(
                    name=f"engines_{case}_{name}",
                    stock_s=ref["sliding_window_s"],
                    medunet_s=r["sliding_window_s"],
                    agreement=min([d for d in dice.values() if d is not None], default=1.0),
                    agreement_label="min_dice_vs_torch",
                    extra={
                        "engine": name,
                        "dice_vs_torch": {plans.labels[k]: d for k, d in dice.items()},
                        "e2e_s": r["e2e_s"],
                        "e2e_torch_s": ref["e2e_s"],
                        "e2e_ratio": ref["e2e_s"] / max(r["e2e_s"], 1e-9),
                        "export_s": r["export_s"],
                        "sw_batch_size": r["sw_batch_size"],
                        "overlap": r["overlap"],
                        "torch_threads": torch.get_num_threads(),
                        "voxels_per_label": {plans.labels[k]: int((r["labels"] == k).sum()) for k in organs},
                    },
                )
            )
    load = os.getloadavg()
    print(f"{'engine':<18} {'sliding_s':>9} {'torch_s':>8} {'ratio':>7} {'e2e_s':>7} {'e2e ratio':>9} "
          f"{'export_s':>8}  min Dice vs torch (per label)")  # fmt: skip
    for row in rows:
        e = row.extra
        per = ", ".join(
            f"{k}: {'absent' if v is None else f'{v:.4f}'}" for k, v in e["dice_vs_torch"].items()
        )
        print(
            f"{e['engine']:<18} {row.medunet_s:>9.2f} {row.stock_s:>8.2f} {row.ratio:>6.2f}x {e['e2e_s']:>7.2f} "
            f"{e['e2e_ratio']:>8.2f}x {e['export_s']:>8.1f}  {row.agreement:.4f} ({per})"
        )
    print(f"volume: {volume.name}; model: {ckpt.name}; threads {torch.get_num_threads()}; load {load}")
    if not args.smoke or args.out:
        meta = {"argv": list(sys.argv), "loadavg": load, "volume": str(volume), "checkpoint": str(ckpt)}
        print("results:", write_results("engines", rows, out=args.out, **meta))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    rows = main()
    print(json.dumps({row.name: {"ratio": row.ratio, "min_dice_vs_torch": row.agreement} for row in rows}))
