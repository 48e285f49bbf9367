"""Time to quality on the synthetic CT dataset: stock MONAI data pipeline vs medunet's training data path.

Stock is the model-zoo ``spleen_ct_segmentation`` train.json data path: a plain ``Dataset`` and a torch
``DataLoader`` running ``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``,
``ScaleIntensityRanged``, ``CropForegroundd``, (``SpatialPadd`` to the patch,) ``RandCropByPosNegLabeld`` (+ ``EnsureTyped``) on every
step. medunet is its training data path: ``train_cache_transforms`` (deterministic head, cached once
in a ``CacheDataset``) + ``train_random_transforms`` (class-balanced crops, light augmentation), fed
by a ``ThreadDataLoader``. Both train the same seeded registry UNet with the same loss (DiceCE) and
optimiser (Adam 1e-3) and the same batch (2 cases x 2 patches); the clock runs until the validation
mean foreground Dice (sliding window on the held-out cases, not timed) reaches ``--target`` or
``--max-minutes`` pass. Reported: iterations/s, wall time to target, final Dice.

Run from the repository root::

    python -m benchmarks.bench_training                  # target Dice 0.7, 8 min cap per pipeline
    python -m benchmarks.bench_training --smoke          # 2 iterations each, asserts it runs (CI)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import HEADER, Row, print_row, write_results

REPO = Path(__file__).resolve().parents[1]
DATA_CACHE = REPO / "runs" / "benchmarks" / "cache"


def _dataset(size: int, cases: int) -> tuple[list[dict[str, str]], list[dict[str, str]], dict[int, str]]:
    from medunet.data.synthetic import ensure_synthetic_dataset

    js = ensure_synthetic_dataset(
        DATA_CACHE / f"synthetic_ct_{size}_{cases}", cases=cases, test_cases=1, size=size
    )
    doc = json.loads(Path(js).read_text())
    root = Path(js).parent
    items = [{k: str(root / v) for k, v in d.items() if k in ("image", "label")} for d in doc["training"]]
    labels = {int(k): v for k, v in doc["labels"].items()}
    n_val = max(1, len(items) // 5)
    return items[n_val:], items[:n_val], labels


def _plans(labels: dict[int, str], patch: int, spacing: float, size: str) -> Any:
    from medunet.plans import Intensity, Plans

    return Plans(
        labels=labels,
        target_spacing=(spacing,) * 3,
        patch_size=(patch,) * 3,
        intensity=Intensity("ct_window", -175.0, 250.0),
        network="unet",
        network_kwargs={"size": size},
    )


def stock_loader(train: list[dict[str, str]], plans: Any, batch: int, workers: int) -> Any:
    from monai.data import DataLoader, Dataset
    from monai.transforms import (
        Compose,
        CropForegroundd,
        EnsureChannelFirstd,
        EnsureTyped,
        LoadImaged,
        Orientationd,
        RandCropByPosNegLabeld,
        ScaleIntensityRanged,
        Spacingd,
        SpatialPadd,
    )

    keys = ("image", "label")
    it = plans.intensity
    tf = Compose(
        [
            LoadImaged(keys),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=plans.target_spacing, mode=("bilinear", "nearest")),
            ScaleIntensityRanged("image", a_min=it.a_min, a_max=it.a_max, b_min=0.0, b_max=1.0, clip=True),
            CropForegroundd(keys, source_key="image", allow_smaller=True),
            SpatialPadd(keys, spatial_size=plans.patch_size),  # small cases: crops need the room
            RandCropByPosNegLabeld(
                keys,
                label_key="label",
                spatial_size=plans.patch_size,
                pos=1,
                neg=1,
                num_samples=2,
                image_key="image",
                image_threshold=0,
            ),
            EnsureTyped(keys, track_meta=False),
        ]
    )
    return DataLoader(Dataset(train, tf), batch_size=batch, shuffle=True, num_workers=workers)


def medunet_loader(train: list[dict[str, str]], plans: Any, batch: int) -> Any:
    from monai.data import CacheDataset, ThreadDataLoader
    from monai.transforms import Compose

    from medunet.transforms import Augmentation, train_cache_transforms, train_random_transforms

    tf = Compose(
        [
            *train_cache_transforms(plans).transforms,
            *train_random_transforms(plans, Augmentation()).transforms,
        ]
    )
    ds = CacheDataset(train, tf, progress=False)
    return ThreadDataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)


def _val_data(val: list[dict[str, str]], plans: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from medunet.transforms import val_transforms

    tf = val_transforms(plans)
    out = []
    for d in val:
        r = tf(dict(d))
        out.append((torch.as_tensor(r["image"])[None], torch.as_tensor(r["label"])[None]))
    return out


def _val_dice(net: torch.nn.Module, data: list, plans: Any) -> float:
    from monai.inferers import sliding_window_inference

    net.eval()
    scores = []
    with torch.inference_mode():
        for img, lab in data:
            pred = sliding_window_inference(img, plans.patch_size, 4, net, overlap=0.25).argmax(1)
            for k in range(1, plans.num_classes):
                a, b = pred == k, lab[:, 0] == k
                s = int(a.sum()) + int(b.sum())
                if s:
                    scores.append(2.0 * int((a & b).sum()) / s)
    net.train()
    return float(np.mean(scores)) if scores else 0.0


def train(kind: str, args: argparse.Namespace, data: tuple, plans: Any) -> dict[str, Any]:
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism

    from medunet.networks import build_network

    train_items, val_items, _ = data
    set_determinism(args.seed)
    net = build_network("unet", 3, 1, plans.num_classes, size=plans.network_kwargs["size"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    t_setup = time.perf_counter()
    loader = (
        stock_loader(train_items, plans, args.batch, args.workers)
        if kind == "stock"
        else medunet_loader(train_items, plans, args.batch)
    )
    setup_s = time.perf_counter() - t_setup  # medunet: the cache fill; counted in the wall time
    val = _val_data(val_items, plans)
    clock, it, dice, reached = setup_s, 0, 0.0, None
    history = []
    while it < args.max_iters and clock < args.max_minutes * 60 and reached is None:
        t0 = time.perf_counter()
        for batch in loader:
            x, y = batch["image"], batch["label"]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y.long() if kind == "medunet" else y)
            loss.backward()
            opt.step()
            it += 1
            if it >= args.max_iters or it % args.val_every == 0:
                break
        clock += time.perf_counter() - t0
        if it % args.val_every == 0 or it >= args.max_iters:
            dice = _val_dice(net, val, plans)
            history.append((it, round(clock, 2), round(dice, 4)))
            if dice >= args.target:
                reached = clock
    if not history or history[-1][0] != it:  # stopped by the time cap between validations
        dice = _val_dice(net, val, plans)
        history.append((it, round(clock, 2), round(dice, 4)))
    return {
        "iterations": it,
        "train_s": clock,
        "setup_s": setup_s,
        "its_per_s": it / max(clock - setup_s, 1e-9),
        "final_dice": dice,
        "time_to_target_s": reached,
        "history": history,
    }


def main(argv: Sequence[str] | None = None) -> list[Row]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--target", type=float, default=0.7)
    ap.add_argument("--max-minutes", type=float, default=8.0)
    ap.add_argument("--max-iters", type=int, default=100_000)
    ap.add_argument("--val-every", type=int, default=20)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="stock DataLoader workers")
    ap.add_argument("--size", type=int, default=96, help="synthetic case edge (voxels)")
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_iters, args.val_every, args.workers, args.size, args.cases = 2, 2, 0, 48, 4
        plans_args = (32, 2.0, "tiny")
    else:
        plans_args = (64, 3.0, "small")
    data = _dataset(args.size, args.cases)
    plans = _plans(data[2], *plans_args)
    res = {k: train(k, args, data, plans) for k in ("stock", "medunet")}
    s, m = res["stock"], res["medunet"]
    if s["time_to_target_s"] and m["time_to_target_s"]:
        row = Row(
            "training_time_to_dice", s["time_to_target_s"], m["time_to_target_s"], m["final_dice"], "dice"
        )
    else:  # target not reached within the cap: compare throughput
        row = Row("training_s_per_iteration", 1 / s["its_per_s"], 1 / m["its_per_s"], m["final_dice"], "dice")
    row.extra = {"target": args.target, "stock": s, "medunet": m, "stock_final_dice": s["final_dice"]}
    print(HEADER)
    print_row(row)
    for k, r in res.items():
        print(
            f"{k}: {r['iterations']} it, {r['its_per_s']:.2f} it/s, setup {r['setup_s']:.1f}s, "
            f"time to Dice {args.target}: {r['time_to_target_s']}, final Dice {r['final_dice']:.3f}"
        )
    if not args.smoke or args.out:
        print("results:", write_results("training", [row], out=args.out))
    return [row]


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
