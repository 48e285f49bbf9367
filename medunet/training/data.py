"""Training data: which dataset, which cases go where, cheap up-front checks, and the data loaders."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.data import CacheDataset, Dataset, PersistentDataset, ThreadDataLoader
from torch.utils.data.distributed import DistributedSampler

from medunet.data.datalist import Case, Datalist
from medunet.data.layouts import load_dataset
from medunet.data.splits import Split, case_hash, kfold, split_cases
from medunet.errors import ConfigError, DatasetError, GeometryMismatchError, InvalidImageError, MedunetError
from medunet.io.atomic import atomic_write_text
from medunet.io.monai_reader import header_grid
from medunet.io.nifti import is_nifti
from medunet.io.volume import lps_to_ras_affine, max_corner_distance
from medunet.plans import Plans
from medunet.training.environment import TrainingEnv
from medunet.transforms import Augmentation, train_cache_transforms, train_random_transforms, val_transforms

logger = logging.getLogger(__name__)

#: Where the synthetic CT dataset is generated when no dataset is given (relative to the working dir).
DEFAULT_SYNTHETIC_DIR = Path("data/synthetic_ct")


def resolve_dataset(
    dataset_dir: str | Path | None = None,
    modality: str | None = None,
    synthetic: Mapping[str, Any] | None = None,
) -> Datalist:
    """Load ``dataset_dir`` in any layout :func:`~medunet.data.layouts.load_dataset` reads.

    Without a dataset, the synthetic CT dataset is generated under ``data/synthetic_ct`` on first use
    (later runs reuse it). ``synthetic`` holds the generator's parameters (``cases``, ``test_cases``,
    ``size``, ``seed``: :func:`~medunet.data.synthetic.ensure_synthetic_dataset`; the bundle's
    ``synthetic`` key). ``modality`` names the modality of layouts that do not declare one.
    """
    if dataset_dir in (None, "", "None", "null"):
        from medunet.data.synthetic import ensure_synthetic_dataset

        params = dict(synthetic or {})
        unknown = sorted(set(params) - {"cases", "test_cases", "size", "seed"})
        if unknown:
            raise ConfigError(None, f"synthetic: unknown key(s) {unknown}; use cases, test_cases, size, seed")
        logger.info("no dataset_dir given: using the synthetic CT dataset in %s", DEFAULT_SYNTHETIC_DIR)
        dataset_dir = ensure_synthetic_dataset(
            DEFAULT_SYNTHETIC_DIR, **{k: int(v) for k, v in params.items()}
        )
    datalist = load_dataset(Path(str(dataset_dir)), modality=(modality or "CT").upper())
    labelled = [c for c in datalist.training if c.label is not None]
    if len(labelled) < 2:
        raise DatasetError(datalist.root, f"need at least 2 labelled training cases, found {len(labelled)}")
    logger.info(
        "dataset %s (%s layout): %d labelled training cases, %d test cases, organs: %s",
        datalist.root,
        datalist.layout,
        len(labelled),
        len(datalist.test),
        ", ".join(datalist.organ_names),
    )
    return datalist


def make_split(
    datalist: Datalist,
    output_dir: str | Path,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    seed: int = 0,
    check_files: bool = True,
    fold: int | str | None = None,
    folds: int = 5,
    max_val_cases: int | None = 12,
) -> Split:
    """Split the labelled cases into train/val/test, validate their files, save ``split.json``.

    The split depends only on the case ids and ``seed``, so evaluation can find the held-out cases of
    a run again from ``split.json``. Test-set cases the layout declares separately are added to the
    test split when they have labels. ``fold``/``folds`` (cross-validation) validate on fold
    ``fold`` of ``folds`` instead; folds never overlap and together cover every case once.
    ``max_val_cases`` caps a fractional validation split (the surplus trains): a validation pass
    costs wall time in every budgeted run, and past a dozen cases it changes the choice of the best
    checkpoint little while every case moved back is more training data.
    """
    labelled = [c for c in datalist.training if c.label is not None]
    if fold not in (None, "", "None", "null"):
        split = kfold(labelled, int(folds), int(fold), seed=seed)
        logger.info("cross-validation fold %d of %d", int(fold), int(folds))
    else:
        split = split_cases(labelled, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        if max_val_cases and len(split.val) > int(max_val_cases):
            order = sorted(split.val, key=lambda c: case_hash(c.case_id, seed))
            keep = {c.case_id for c in order[: int(max_val_cases)]}
            split = Split(
                [c for c in labelled if c.case_id not in keep and c not in split.test],
                [c for c in split.val if c.case_id in keep],
                split.test,
            )
    split = Split(split.train, split.val, [*split.test, *(c for c in datalist.test if c.label is not None)])
    if check_files:
        check_pairs([*split.train, *split.val])
    ids = split.ids()
    logger.info("split: %d train, %d val, %d test cases", len(split.train), len(split.val), len(split.test))
    out = Path(output_dir)
    record = {"dataset": str(datalist.root), "seed": seed, "fold": fold, "folds": folds, **ids}
    atomic_write_text(out / "split.json", json.dumps(record, indent=2) + "\n")
    return split


def read_split(output_dir: str | Path, datalist: Datalist, which: str = "test") -> list[Case]:
    """The cases of one part of a saved split (``split.json`` in a run's output directory)."""
    path = Path(output_dir) / "split.json"
    try:
        ids = json.loads(path.read_text())[which]
    except (OSError, json.JSONDecodeError, KeyError) as exc:
        raise DatasetError(path, f"cannot read the {which!r} cases of a split ({exc})") from None
    by_id = {c.case_id: c for c in datalist.cases}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DatasetError(path, f"split names cases the dataset does not have: {', '.join(missing[:5])}")
    return [by_id[i] for i in ids]


# --------------------------------------------------------------------------------- up-front checks


def _header_grid(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    """Shape and RAS affine from the file header only (no voxel data is read; a DICOM series is read)."""
    if path.is_dir():
        try:
            return header_grid(path)
        except MedunetError:
            raise
        except Exception as exc:  # pydicom raises many types for a broken file
            raise InvalidImageError(path, f"unreadable DICOM series ({type(exc).__name__}: {exc})") from None
    if not path.is_file():
        raise InvalidImageError(path, "file does not exist")
    try:
        if is_nifti(path):
            img = nib.load(str(path))
            shape = tuple(int(s) for s in img.shape)
            if len(shape) == 4 and shape[3] == 1:
                shape = shape[:3]
            return shape, np.asarray(img.affine, dtype=np.float64)
        import SimpleITK as sitk  # only for non-NIfTI formats (NRRD, MHA); keeps NIfTI-only setups free of it

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        shape = tuple(int(s) for s in reader.GetSize())
        affine = lps_to_ras_affine(
            np.array(reader.GetSpacing()), np.array(reader.GetOrigin()), np.array(reader.GetDirection())
        )
        return shape, affine
    except Exception as exc:  # nibabel and ITK raise many types for a bad header
        raise InvalidImageError(path, f"unreadable image header ({type(exc).__name__}: {exc})") from None


def check_pairs(cases: Sequence[Case], tolerance_mm: float = 0.01) -> None:
    """Fail before training when a file is unreadable or a label is not on its image's grid.

    Reads headers only (milliseconds per case). Every problem is collected; the error raised is of
    the first problem's type and lists all of them, each naming its case and file.
    """
    problems: list[MedunetError] = []
    for case in cases:
        try:
            grids = [(p, *_header_grid(p)) for p in [*case.images, *([case.label] if case.label else [])]]
        except MedunetError as exc:
            problems.append(type(exc)(exc.path, f"case {case.case_id}: {exc.problem}"))
            continue
        ref_path, ref_shape, ref_affine = grids[0]
        for path, shape, affine in grids[1:]:
            if len(shape) != 3 or shape != ref_shape:
                problems.append(
                    GeometryMismatchError(
                        path,
                        f"case {case.case_id}: shape {shape} differs from image {ref_path.name} {ref_shape}",
                    )
                )
                continue
            dist = max_corner_distance(affine, ref_affine, ref_shape)
            if dist > tolerance_mm:
                problems.append(
                    GeometryMismatchError(
                        path, f"case {case.case_id}: grid differs from image {ref_path.name} by {dist:.3g} mm"
                    )
                )
    if problems:
        first = problems[0]
        more = (
            ""
            if len(problems) == 1
            else f" (and {len(problems) - 1} more: " + "; ".join(str(p) for p in problems[1:6]) + ")"
        )
        raise type(first)(first.path, first.problem + more)


# --------------------------------------------------------------------------------------- datasets


def estimate_case_bytes(plans: Plans, median_physical_size_mm: Sequence[float]) -> int:
    """Rough cached size of one preprocessed case: float32 image + uint8 label + sampling indices."""
    voxels = math.prod(
        max(1.0, s / t) for s, t in zip(median_physical_size_mm, plans.target_spacing, strict=True)
    )
    return int(voxels * (4 * plans.in_channels + 1) + 8 * 200_000 * plans.num_classes)


def make_dataset(
    cases: Sequence[Case],
    transform: object,
    *,
    case_bytes: int,
    cache_ram_gb: float,
    cache_dir: str | Path | None,
    num_workers: int = 0,
    progress: bool = True,
    num_classes: int | None = None,
) -> Dataset:
    """``CacheDataset`` when the preprocessed cases fit ``cache_ram_gb``, else ``PersistentDataset``.

    With ``num_classes`` every item carries its case's ``annotated`` flags (partial labels).
    """
    data = [c.to_monai(num_classes) for c in cases]
    need_gb = case_bytes * len(data) / 1e9
    if need_gb <= cache_ram_gb or cache_dir is None:
        logger.info("caching %d preprocessed cases in RAM (~%.2f GB)", len(data), need_gb)
        return CacheDataset(data, transform, num_workers=num_workers or None, progress=progress)
    logger.info(
        "%d cases need ~%.1f GB > %.1f GB: caching on disk in %s", len(data), need_gb, cache_ram_gb, cache_dir
    )
    return PersistentDataset(data, transform, cache_dir=cache_dir)


def annotation_balanced_weights(cases: Sequence[Case], num_classes: int) -> tuple[float, ...]:
    """Patch-sampling weight per class: the number of cases over the number that annotate the class.

    With partially contoured data the class-balanced sampler can only centre a patch on an organ in the
    cases that contour it, so an organ contoured in 71 of 196 cases (the esophagus in the OpenKBP
    partial set) would be sampled about a third as often as the spinal cord (201). Weighting it by
    196 / 71 restores the balance. Fully contoured data gets all ones (nothing changes); background,
    annotated everywhere, keeps 1; a class no case annotates keeps 1 (it is never sampled anyway).
    """
    n = len(cases)
    counts = [sum(c.is_annotated(k) for c in cases) for k in range(num_classes)]
    return tuple(round(n / m, 4) if m else 1.0 for m in counts)


def train_loader(
    cases: Sequence[Case],
    plans: Plans,
    env: TrainingEnv,
    fingerprint_fov_mm: Sequence[float],
    batch_size: int = 2,
    augmentation: Augmentation | None = None,
    cache_ram_gb: float = 4.0,
    cache_dir: str | Path | None = None,
) -> ThreadDataLoader:
    """Shuffled patch loader; one epoch is one pass over the training cases.

    A ``DistributedSampler`` (one replica without DDP) reshuffles from ``(seed, epoch)``, so the order
    of any epoch is the same whether or not the run was resumed. Batches hold ``batch_size`` cases x
    ``num_samples`` patches. Augmentation runs in a background thread while the network trains.
    Patches are class-balanced over the whole dataset, partial contours included
    (:func:`annotation_balanced_weights`).
    """
    weights = annotation_balanced_weights(cases, plans.num_classes)
    if any(w != 1.0 for w in weights):
        logger.info(
            "partially contoured cases: patch-sampling weights %s",
            ", ".join(f"{plans.labels.get(k, k)} {w:.2f}" for k, w in enumerate(weights) if w != 1.0),
        )
    transform = _compose(
        train_cache_transforms(plans), train_random_transforms(plans, augmentation, class_weights=weights)
    )
    ds = make_dataset(
        cases,
        transform,
        case_bytes=estimate_case_bytes(plans, fingerprint_fov_mm),
        cache_ram_gb=cache_ram_gb,
        cache_dir=cache_dir,
        progress=env.is_main,
        num_classes=plans.num_classes,
    )
    sampler = DistributedSampler(ds, num_replicas=env.world_size, rank=env.rank, shuffle=True, seed=env.seed)
    return ThreadDataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=0, drop_last=False)


def val_dataset(cases: Sequence[Case], plans: Plans, env: TrainingEnv) -> Dataset:
    """Validation cases preprocessed once and kept in RAM (only the main process validates)."""
    if not env.is_main:
        return Dataset([], val_transforms(plans))
    return CacheDataset([c.to_monai(plans.num_classes) for c in cases], val_transforms(plans), progress=True)


def _compose(head: object, tail: object) -> object:
    from monai.transforms import Compose

    return Compose([*head.transforms, *tail.transforms])  # type: ignore[attr-defined]
