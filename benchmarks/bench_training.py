"""Time to a validation Dice on the synthetic CT dataset: stock MONAI recipe vs medunet's default path.

Stock is the model-zoo ``spleen_ct_segmentation`` train.json recipe: a ``CacheDataset`` (cache rate
1, as the model zoo) of ``LoadImaged``, ``EnsureChannelFirstd``, ``Orientationd``, ``Spacingd``,
``ScaleIntensityRanged``, ``CropForegroundd``, (``SpatialPadd`` to the patch,) then
``RandCropByPosNegLabeld`` (+ ``EnsureTyped``) on every step in a torch ``DataLoader``, training a 3D
UNet on 3D patches (the CPU patch budget of ``make_plans(spatial_dims=3)``). ``--stock-uncached`` gives
the plain ``Dataset`` of earlier versions of this benchmark.

Two rows, each against that stock run:

* ``default``: what the ``ct_organs`` bundle does by default on this machine, built from the training
  engineer's public functions: ``make_plans`` (2D axial slices on CPU), ``train_loader`` (cached
  deterministic head, class-balanced random tail, ``ThreadDataLoader``), ``build_model``;
* ``equal``: medunet's data path and training step with stock's plans (3D, same patch, same network)
  and stock's fp32, so only the pipeline differs;
* ``equal_bf16``: the same with medunet's default precision, bf16 autocast where the CPU has native
  bf16 (``medunet.training.training_network``; fp32 elsewhere, where the row equals ``equal``).

The default row trains in medunet's default precision too (bf16 where native).

Same for both: the dataset split, the registry UNet at the same size, the loss (``build_loss("dicece")``),
the optimiser (the bundle's AdamW, lr 3e-3, wd 1e-5, constant), the seed, the target spacing and CT
window (so both validate on the identical preprocessed cases), and the validation itself
(``Validator``: sliding-window inference, mean foreground Dice over organs via
``medunet.metrics``). The clock covers set-up (medunet's cache fill) and training steps; validation
runs every ``--val-every-s`` seconds of that clock and is not timed. Each run stops at ``--target``
or after ``--max-minutes``. A run that never reaches the target is reported as ``> cap`` and the
ratio as a lower bound.

Run from the repository root::

    python -m benchmarks.bench_training                  # target mean Dice 0.8, 8 min cap each
    python -m benchmarks.bench_training --smoke          # 2 iterations each, checks it runs (CI)
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import HEADER, Row, add_cache_dir_argument, bench_cache_dir, print_row, write_results

REPO = Path(__file__).resolve().parents[1]

logger = logging.getLogger("benchmarks.bench_training")


def stock_loader(
    train: list[dict[str, str]], plans: Any, batch: int, workers: int, cached: bool = True
) -> Any:
    """The spleen train.json data path: ``CacheDataset`` of the deterministic head (the model zoo's
    ``cache_rate`` 1.0), the random crop on every step in worker processes."""
    from monai.data import CacheDataset, DataLoader, Dataset
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
    ds = CacheDataset(train, tf, cache_rate=1.0, progress=False) if cached else Dataset(train, tf)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers)


def _setup(args: argparse.Namespace, cache: Path) -> dict[str, Any]:
    """Dataset, split, fingerprint, environment and the two plans (medunet default 2D, stock 3D)."""
    from medunet.data.synthetic import ensure_synthetic_dataset
    from medunet.training import (
        fingerprint_for,
        make_plans,
        make_split,
        resolve_dataset,
        setup_environment,
        val_dataset,
    )

    if args.smoke:
        ds_dir = cache / "synthetic_ct_smoke"
        ensure_synthetic_dataset(ds_dir, cases=4, test_cases=1, size=48)
    else:
        ds_dir = REPO / "data" / "synthetic_ct"
        ensure_synthetic_dataset(ds_dir)  # the bundle's default dataset
    out_dir = Path(args.work_dir or cache / f"training_{ds_dir.name}")
    env = setup_environment("cpu", seed=args.seed)
    datalist = resolve_dataset(ds_dir)
    split = make_split(datalist, out_dir, val_fraction=0.2, seed=args.seed)
    fp = fingerprint_for(datalist, out_dir)
    medunet_plans = make_plans(datalist, fp, env, network_size=args.size)  # "auto": 2D on CPU
    stock_plans = make_plans(
        datalist, fp, env, spatial_dims=3, network_size=args.size, target_spacing=medunet_plans.target_spacing
    )
    assert stock_plans.intensity == medunet_plans.intensity  # same preprocessing => same val cases
    val = list(val_dataset(split.val, medunet_plans, env))
    return {
        "env": env,
        "split": split,
        "fp": fp,
        "plans": {"stock": stock_plans, "medunet": medunet_plans},
        "val": val,
    }


def _validate(net: torch.nn.Module, val: list, plans: Any) -> float:
    from medunet.training import Validator

    table = Validator(val, plans, "cpu", overlap=0.25).run(net)
    return float(table.summary()["mean"]["val_dice_mean"])


def _endless(loader: Any) -> Iterator[dict[str, Any]]:
    """Batches of epoch after epoch (the DistributedSampler of ``train_loader`` reshuffles per epoch)."""
    epoch = 0
    while True:
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def train(kind: str, args: argparse.Namespace, setup: dict[str, Any]) -> dict[str, Any]:
    from monai.utils import set_determinism

    from medunet.losses import build_loss
    from medunet.training import build_model, make_augmentation, train_loader, training_network

    env, split = setup["env"], setup["split"]
    # equal*: medunet's path, stock's plans; equal also stock's fp32
    plans = setup["plans"]["stock" if kind.startswith("equal") else kind]
    set_determinism(args.seed)
    net = build_model(plans, env)
    step_net = training_network(net, env, amp=kind in ("medunet", "equal_bf16"))
    loss_fn = build_loss("dicece")
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-5)
    t_setup = time.perf_counter()
    if kind == "stock":
        loader = stock_loader(
            [c.to_monai() for c in split.train], plans, args.batch, args.workers, not args.stock_uncached
        )
    else:
        loader = train_loader(
            split.train,
            plans,
            env,
            setup["fp"].median_physical_size_mm,
            batch_size=args.batch,
            augmentation=make_augmentation(plans),
            cache_ram_gb=8.0,
        )
    setup_s = time.perf_counter() - t_setup  # the cache fill (both, by default): counted in the wall time
    cap_s = args.max_minutes * 60
    clock, it, dice, reached, next_val = setup_s, 0, 0.0, None, setup_s + args.val_every_s
    history: list[tuple[int, float, float]] = []
    # One iterator across validations: pausing for validation must not restart the stock workers
    # (and throw away their prefetched batches) or the medunet loader's thread.
    batches = _endless(loader)
    t0 = time.perf_counter()
    while True:
        batch = next(batches)
        x, y = batch["image"], batch["label"]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(step_net(x), y)
        loss.backward()
        opt.step()
        it += 1
        now = clock + time.perf_counter() - t0
        if it >= args.max_iters or now >= cap_s or now >= next_val:
            clock = now
            dice = _validate(net, setup["val"], plans)  # not timed
            history.append((it, round(clock, 2), round(dice, 4)))
            logger.warning("%s: %d it, %.1f s, mean Dice %.4f", kind, it, clock, dice)
            next_val = clock + args.val_every_s
            if dice >= args.target:
                reached = clock
            if reached is not None or it >= args.max_iters or clock >= cap_s:
                break
            t0 = time.perf_counter()
    return {
        "bf16": step_net is not net,
        "spatial_dims": plans.spatial_dims,
        "patch_size": list(plans.patch_size),
        "target_spacing": list(plans.target_spacing),
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
    ap.add_argument("--smoke", action="store_true", help="2 iterations each on a tiny dataset (CI)")
    ap.add_argument("--target", type=float, default=0.8, help="validation mean foreground Dice to reach")
    ap.add_argument("--max-minutes", type=float, default=8.0, help="cap per pipeline (training clock)")
    ap.add_argument("--max-iters", type=int, default=1_000_000)
    ap.add_argument("--val-every-s", type=float, default=20.0, help="validate every N s of training clock")
    ap.add_argument("--batch", type=int, default=2, help="cases per batch (both; patches per case: defaults)")
    ap.add_argument("--workers", type=int, default=2, help="stock DataLoader worker processes")
    ap.add_argument("--size", default="small", help="network size preset (the bundle default: small)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--only",
        choices=("stock", "medunet", "equal", "equal_bf16"),
        default=None,
        help="run one pipeline (e.g. a longer cap)",
    )
    ap.add_argument(
        "--stock-uncached", action="store_true", help="stock with a plain Dataset (no CacheDataset)"
    )
    ap.add_argument("--work-dir", default=None, help="split/fingerprint folder (default: in the cache dir)")
    ap.add_argument("--out", default=None)
    add_cache_dir_argument(ap)
    args = ap.parse_args(argv)
    if args.smoke:
        args.max_iters, args.workers, args.size, args.val_every_s = 2, 0, "tiny", 1e9
    with bench_cache_dir(args.cache_dir, args.smoke) as cache:
        return _bench(args, cache)


def _bench(args: argparse.Namespace, cache: Path) -> list[Row]:
    """Both pipelines; the smoke dataset and the split/fingerprint folder live under ``cache``."""
    setup = _setup(args, cache)
    if args.only:
        r = train(args.only, args, setup)
        print(
            f"{args.only}: time to Dice {args.target}: {r['time_to_target_s']}, {r['its_per_s']:.2f} it/s, {r}"
        )
        return []
    res = {k: train(k, args, setup) for k in ("medunet", "equal", "equal_bf16", "stock")}
    s = res["stock"]
    cap_s = args.max_minutes * 60
    rows = []
    for key, settings in (("medunet", "default"), ("equal", "equal"), ("equal_bf16", "equal_bf16")):
        m = res[key]
        # Time to target; a run that never got there counts as its whole clock (a bound on the ratio).
        stock_t = s["time_to_target_s"] or max(s["train_s"], cap_s)
        med_t = m["time_to_target_s"] or max(m["train_s"], cap_s)
        row = Row(
            f"training_time_to_dice_{args.target:g}_{settings}",
            stock_t,
            med_t,
            m["final_dice"],
            "medunet_dice",
        )
        row.extra = {
            "settings": settings,
            "target": args.target,
            "cap_s": cap_s,
            "stock_cached": not args.stock_uncached,
            "stock_reached": s["time_to_target_s"] is not None,
            "medunet_reached": m["time_to_target_s"] is not None,
            "ratio_is_lower_bound": s["time_to_target_s"] is None and m["time_to_target_s"] is not None,
            "ratio_is_upper_bound": m["time_to_target_s"] is None and s["time_to_target_s"] is not None,
            "its_per_s_stock": s["its_per_s"],
            "its_per_s_medunet": m["its_per_s"],
            "stock_final_dice": s["final_dice"],
            "stock": s,
            "medunet": m,
            "val_cases": len(setup["val"]),
        }
        rows.append(row)
    print(HEADER)
    for row in rows:
        print_row(row)
        if row.extra["ratio_is_lower_bound"]:
            print(
                f"  stock did not reach Dice {args.target} within the {cap_s:.0f} s cap: ratio is a lower bound"
            )
        if row.extra["ratio_is_upper_bound"]:
            print(
                f"  medunet did not reach Dice {args.target} within the {cap_s:.0f} s cap: ratio is an upper bound"
            )
    for k, r in res.items():
        ttt = f"{r['time_to_target_s']:.1f} s" if r["time_to_target_s"] else f"> {cap_s:.0f} s (cap)"
        print(
            f"{k}: {r['spatial_dims']}D {'bf16' if r['bf16'] else 'fp32'} patch {r['patch_size']}, {r['iterations']} it, {r['its_per_s']:.2f} it/s, "
            f"setup {r['setup_s']:.1f} s, time to Dice {args.target}: {ttt}, final Dice {r['final_dice']:.3f}"
        )
    if not args.smoke or args.out:
        print("results:", write_results("training_smoke" if args.smoke else "training", rows, out=args.out))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
