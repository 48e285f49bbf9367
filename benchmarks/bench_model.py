"""A trained benchmark model: the registry UNet trained briefly on the synthetic CT phantom, cached.

The inference benchmark used to run a random UNet plus a fixed intensity prior, so agreement with stock
said little about a trained model. This trains the same network (3D registry UNet, ``small``, 96^3
patch, the CT window and 1.5 x 1.5 x 2 mm spacing the benchmark plans use) on random patches of
:func:`benchmarks.synthetic_ct.phantom_ct` rendered directly on the network grid with fresh noise per
step, labels from :func:`~benchmarks.synthetic_ct.phantom_labels` (liver, spleen, kidneys). It is a
benchmark model, not a medical one: it has seen the phantom's geometry. It is trained once (about
five minutes on 2 CPU cores) and cached as a medunet checkpoint under the benchmark cache folder, keyed by
its recipe; later runs reuse it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.synthetic_ct import CT_SHAPE, CT_SPACING, PHANTOM_LABELS, phantom_ct, phantom_labels

logger = logging.getLogger(__name__)

#: The recipe; its hash names the cached checkpoint, so a change retrains.
RECIPE = {
    "version": 1,
    "network": "unet",
    "size": "small",
    "patch": 96,
    "spacing": (1.5, 1.5, 2.0),
    "window": (-57.0, 164.0),
    "train_patch": 64,  # fully convolutional: trained on 64^3, run on 96^3 windows (5 s/step at 96^3)
    "batch": 2,
    "lr": 2e-3,
    "steps": 200,
    "seed": 0,
}


def network_grid_shape(spacing: tuple[float, ...] = RECIPE["spacing"]) -> tuple[int, int, int]:  # type: ignore[assignment]
    """The phantom's grid at ``spacing`` (what the benchmark's Predictor resamples the CT to)."""
    return tuple(int(round(n * s / t)) for n, s, t in zip(CT_SHAPE, CT_SPACING, spacing, strict=True))  # type: ignore[return-value]


def _plans(recipe: dict) -> object:
    from medunet.plans import Intensity, Plans

    return Plans(
        labels=dict(PHANTOM_LABELS),
        target_spacing=tuple(recipe["spacing"]),
        patch_size=(recipe["patch"],) * 3,
        intensity=Intensity("ct_window", *recipe["window"]),
        network=recipe["network"],
        network_kwargs={"size": recipe["size"]},
    )


def trained_checkpoint(cache_dir: str | Path, *, steps: int | None = None) -> Path:
    """Path of the cached trained checkpoint, training it first when absent (``steps`` overrides)."""
    recipe = dict(RECIPE, steps=steps or RECIPE["steps"])
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"bench_unet_{key}.pt"
    if path.is_file():
        return path
    from tqdm import tqdm

    from medunet.losses import build_loss
    from medunet.networks import build_network
    from medunet.training.checkpoint import save_checkpoint

    plans = _plans(recipe)
    torch.manual_seed(recipe["seed"])
    rng = np.random.default_rng(recipe["seed"])
    grid = network_grid_shape(tuple(recipe["spacing"]))
    labels = torch.from_numpy(phantom_labels(grid).astype(np.int64))
    fg = torch.nonzero(labels > 0)
    a_min, a_max = recipe["window"]
    net = build_network("unet", 3, 1, len(PHANTOM_LABELS), size=recipe["size"])
    loss_fn = build_loss("dicece")
    opt = torch.optim.AdamW(net.parameters(), lr=recipe["lr"], weight_decay=1e-5)
    p = recipe["train_patch"]
    t0 = time.perf_counter()
    images = [phantom_ct(grid, seed=s) for s in range(4)]  # 4 noise draws, same anatomy
    net.train()
    for _ in tqdm(range(recipe["steps"]), desc="training the benchmark model", unit="step"):
        xs, ys = [], []
        for _b in range(recipe["batch"]):
            if rng.random() < 0.67:  # centre on an organ voxel, as RandCropByPosNegLabeld
                c = fg[rng.integers(len(fg))].tolist()
            else:
                c = [int(rng.integers(n)) for n in grid]
            lo = [min(max(0, ci - p // 2), n - p) for ci, n in zip(c, grid, strict=True)]
            sl = tuple(slice(a, a + p) for a in lo)
            img = torch.from_numpy(images[int(rng.integers(len(images)))][sl].astype(np.float32))
            xs.append(((img - a_min) / (a_max - a_min)).clamp_(0, 1)[None])
            ys.append(labels[sl][None])
        x, y = torch.stack(xs), torch.stack(ys)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    logger.info(
        "benchmark model: %d steps in %.0f s, last loss %.3f",
        recipe["steps"],
        time.perf_counter() - t0,
        float(loss),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(path, {"model": net.state_dict(), "plans": plans.to_dict(), "recipe": recipe})
