"""Fixtures for the engine tests: small UNets trained for seconds on a left/right-asymmetric phantom.

The phantom (``tests/training/tiny_data.py``) has a liver on one side and two kidneys of the same HU
on both sides, so a flipped or transposed axis in an engine changes the answer. Models are trained
once per session (3D and 2D registry ``tiny`` UNets, 40 and 100 steps), saved as medunet checkpoints,
and their PyTorch predictions of a held-out volume are the reference every engine must reproduce.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

from tiny_data import make_tiny_ct_dataset  # noqa: E402

from medunet.io import read_image  # noqa: E402
from medunet.plans import Intensity, Plans  # noqa: E402

LABELS = {0: "background", 1: "liver", 2: "left_kidney", 3: "right_kidney"}
WINDOW = (-100.0, 250.0)


@dataclass
class TrainedModel:
    """A trained checkpoint, its plans, a test volume and PyTorch's labels for it."""

    checkpoint: Path
    plans: Plans
    volume_path: Path
    reference: np.ndarray


def plans_for(dims: int) -> Plans:
    return Plans(
        labels=LABELS,
        target_spacing=(2.0, 2.0, 3.0),
        patch_size=(32, 32, 16) if dims == 3 else (32, 32),
        spatial_dims=dims,
        intensity=Intensity("ct_window", *WINDOW),
        network="unet",
        network_kwargs={"size": "tiny"},
    )


def train_tiny(dataset: Path, dims: int, out: Path, steps: int) -> Path:
    """Train a registry tiny UNet on random patches of the dataset (already on the plans' grid)."""
    from medunet.losses import build_loss
    from medunet.networks import build_network
    from medunet.training.checkpoint import save_checkpoint

    plans = plans_for(dims)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images, labels = [], []
    for i in range(3):
        img = read_image(dataset / "imagesTr" / f"case_{i:03d}.nii.gz").array.astype(np.float32)
        images.append(np.clip((img - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1))
        labels.append(read_image(dataset / "labelsTr" / f"case_{i:03d}.nii.gz").array.astype(np.int64))
    net = build_network("unet", dims, 1, len(LABELS), size="tiny")
    loss_fn = build_loss("dicece")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    patch = plans.patch_size
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for _b in range(2):
            k = int(rng.integers(len(images)))
            img, lab = images[k], labels[k]
            if dims == 2:
                z = int(rng.integers(img.shape[2]))
                img, lab = img[..., z], lab[..., z]
            lo = [int(rng.integers(n - p + 1)) for n, p in zip(img.shape, patch, strict=True)]
            sl = tuple(slice(a, a + p) for a, p in zip(lo, patch, strict=True))
            xs.append(torch.from_numpy(img[sl].copy())[None])
            ys.append(torch.from_numpy(lab[sl].copy())[None])
        opt.zero_grad()
        loss = loss_fn(net(torch.stack(xs)), torch.stack(ys))
        loss.backward()
        opt.step()
    net.eval()
    return save_checkpoint(out, {"model": net.state_dict(), "plans": plans.to_dict()})


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread for these tiny models (ONNX Runtime follows ``torch.get_num_threads()``).

    With two threads on a loaded 2-core machine, OpenMP spin-waits made an eager 2D prediction 40x
    slower (8-20 s instead of 0.25 s); one thread keeps the suite fast and its timing steady.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four labelled cases (three to train on, the fourth held out for prediction)."""
    return make_tiny_ct_dataset(tmp_path_factory.mktemp("engines") / "tiny_ct", n_cases=4)


def _trained(tiny_ct: Path, tmp: Path, dims: int) -> TrainedModel:
    from medunet.inference import Predictor

    ckpt = train_tiny(tiny_ct, dims, tmp / f"unet{dims}d" / "best.pt", steps=40 if dims == 3 else 100)
    volume_path = tiny_ct / "imagesTr" / "case_003.nii.gz"
    reference = (
        Predictor.from_checkpoint(ckpt, device="cpu", amp=False).predict(read_image(volume_path)).labels
    )
    return TrainedModel(ckpt, plans_for(dims), volume_path, reference)


@pytest.fixture(scope="session")
def model3d(tiny_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return _trained(tiny_ct, tmp_path_factory.mktemp("model3d"), 3)


@pytest.fixture(scope="session")
def model2d(tiny_ct: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    return _trained(tiny_ct, tmp_path_factory.mktemp("model2d"), 2)
