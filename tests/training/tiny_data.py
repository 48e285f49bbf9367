"""Tiny labelled CT datasets written to ``tmp_path`` (Decathlon layout), fast enough for training tests."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

LABELS = {"0": "background", "1": "liver", "2": "left_kidney", "3": "right_kidney"}


def make_tiny_ct_dataset(
    root: Path,
    n_cases: int = 5,
    shape: tuple[int, int, int] = (40, 40, 24),
    spacing: tuple[float, float, float] = (2.0, 2.0, 3.0),
    seed: int = 0,
) -> Path:
    """Ellipsoid 'organs' in a soft-tissue body, HU-like intensities plus noise, RAS affine."""
    rng = np.random.default_rng(seed)
    (root / "imagesTr").mkdir(parents=True, exist_ok=True)
    (root / "labelsTr").mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    centre = np.array(shape) / 2
    entries = []
    for i in range(n_cases):
        jitter = rng.uniform(-1.5, 1.5, 3)
        body = (((grid - centre) / (np.array(shape) * 0.45)) ** 2).sum(-1) < 1
        image = np.where(body, 40.0, -1000.0)
        label = np.zeros(shape, np.uint8)
        organs = [  # (label, centre offset in voxels, radii in voxels, HU)
            (1, (-8, 4, 0), (8, 7, 6), 120.0),  # liver on patient's right (low x in RAS = right... any side)
            (2, (9, -6, 0), (4, 4, 4), 200.0),
            (3, (-9, -6, 0), (4, 4, 4), 200.0),
        ]
        for value, offset, radii, hu in organs:
            c = centre + np.array(offset) + jitter
            inside = (((grid - c) / np.array(radii)) ** 2).sum(-1) < 1
            image[inside] = hu
            label[inside] = value
        image = image + rng.normal(0, 10, shape)
        affine = np.diag([*spacing, 1.0])
        name = f"case_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine), root / "imagesTr" / name)
        nib.save(nib.Nifti1Image(label, affine), root / "labelsTr" / name)
        entries.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {
        "name": "tiny",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": n_cases,
        "training": entries,
        "test": [],
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2))
    return root


REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "ct_organs"

#: Overrides that make a bundle run take seconds: tiny 3D U-Net, 32^3 patches, no MLflow.
TINY = {
    "network_size": "tiny",
    "spatial_dims": 3,
    "patch_size": [32, 32, 32],
    "batch_size": 2,
    "num_samples": 1,
    "val_interval": 1,
    "device": "cpu",
    "warmup_epochs": 0,
    "mlflow_tracker#enabled": False,
    "time_budget_min": 0,  # off (None would be dropped by monai.bundle.run as "not given")
    # fp32: these tests compare runs bit for bit (resume == uninterrupted); CPU bf16 autocast, the
    # default on CPUs with native bf16, is not bit-reproducible even run to run (oneDNN's bf16 kernels)
    "amp": False,
}


def run_bundle(
    dataset: Path, output_dir: Path, config_files: list[Path] | None = None, **overrides: object
) -> None:
    """Run the training entry in this process with the tiny overrides (plus ``overrides``)."""
    from monai.bundle import run

    files = [str(f) for f in (config_files or [BUNDLE / "train.json"])]
    run(
        "training",
        config_file=files if len(files) > 1 else files[0],
        meta_file=str(BUNDLE / "metadata.json"),
        logging_file=str(BUNDLE / "logging.conf"),
        **{"dataset_dir": str(dataset), "output_dir": str(output_dir), **TINY, **overrides},
    )


def bundle_cli_args(dataset: Path, output_dir: Path, **overrides: object) -> list[str]:
    """The same overrides as ``python -m monai.bundle run`` command-line arguments."""
    import json

    args: list[str] = []
    for key, value in {
        "dataset_dir": str(dataset),
        "output_dir": str(output_dir),
        **TINY,
        **overrides,
    }.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args
