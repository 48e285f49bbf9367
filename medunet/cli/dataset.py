"""``medunet check``, ``medunet fingerprint`` and ``medunet datalist``: dataset sub-commands."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from medunet.data.check import check_dataset, format_problems
from medunet.data.fingerprint import compute_fingerprint
from medunet.data.layouts import LAYOUTS, load_dataset
from medunet.data.splits import kfold, split_cases
from medunet.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)

_LAYOUT_HELP = "dataset layout (default: auto-detect): " + "; ".join(
    f"{name} = {layout.description}" for name, layout in LAYOUTS.items()
)


def _add_dataset_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="dataset folder, its dataset.json, or a CSV file")
    parser.add_argument("--layout", choices=["auto", *LAYOUTS], default="auto", help=_LAYOUT_HELP)
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="label names (labels.json/labels.txt) for folders/csv layouts",
    )
    parser.add_argument("--modality", default="CT", help="modality of folders/csv datasets (default CT)")


def _load(args: argparse.Namespace):  # noqa: ANN202 - returns a Datalist
    return load_dataset(args.dataset, layout=args.layout, labels=args.labels, modality=args.modality)


def _cmd_check(args: argparse.Namespace) -> int:
    datalist = _load(args)
    problems = check_dataset(datalist, tolerance_mm=args.tolerance_mm)
    n_files = sum(len(c.images) + (c.label is not None) for c in datalist.cases)
    if problems:
        sys.stdout.write(format_problems(problems, root=datalist.root))
        n_bad = len({p.case_id for p in problems})
        sys.stdout.write(
            f"\n{len(problems)} problem(s) in {n_bad} of {len(datalist.cases)} cases ({n_files} files checked)\n"
        )
        return 1
    sys.stdout.write(
        f"{datalist.name}: {datalist.layout} layout, {len(datalist.training)} training + "
        f"{len(datalist.test)} test cases, {n_files} files: no problems\n"
    )
    return 0


def _cmd_fingerprint(args: argparse.Namespace) -> int:
    datalist = _load(args)
    fp = compute_fingerprint(datalist, samples_per_case=args.samples_per_case, seed=args.seed)
    if args.output is None:
        sys.stdout.write(json.dumps(fp.to_dict(), indent=2) + "\n")
        return 0
    fp.save(args.output)
    sp = ", ".join(f"{x:.3g}" for x in fp.median_spacing)
    sz = ", ".join(f"{x:.0f}" for x in fp.median_size)
    lines = [
        f"cases            {fp.n_cases}  (hash {fp.dataset_hash})",
        f"median spacing   ({sp}) mm  R,A,S   anisotropy {fp.anisotropy:.2f}",
        f"median size      ({sz}) voxels",
    ]
    for channel, stats in fp.intensity.items():
        lines.append(
            f"channel {channel} ({fp.modalities.get(channel, '?')})  foreground mean {stats['mean']:.1f} "
            f"std {stats['std']:.1f}  p0.5..p99.5 [{stats['p00_5']:.1f}, {stats['p99_5']:.1f}]"
        )
    width = max((len(n) for n in fp.class_fraction), default=5)
    lines.append(f"{'organ':<{width}}  voxel fraction  present in")
    for name, frac in fp.class_fraction.items():
        lines.append(f"{name:<{width}}  {frac:14.5f}  {fp.class_presence[name]:9.0%}")
    lines.append(f"written to {args.output}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def _cmd_datalist(args: argparse.Namespace) -> int:
    datalist = _load(args)
    if args.folds:
        split = kfold(datalist.training, args.folds, args.fold, seed=args.seed)
    else:
        split = split_cases(
            datalist.training,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
        )
    out = {
        "name": datalist.name,
        "labels": {str(k): v for k, v in datalist.labels.items()},
        "modality": {str(k): v for k, v in datalist.modalities.items()},
        "training": datalist.to_monai(split.train),
        "validation": datalist.to_monai(split.val),
        "testing": datalist.to_monai(split.test + datalist.test),
    }
    atomic_write_text(args.output, json.dumps(out, indent=2) + "\n")
    sys.stdout.write(
        f"{len(split.train)} train, {len(split.val)} validation, {len(split.test) + len(datalist.test)} test "
        f"cases written to {args.output}\n"
    )
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``check``, ``fingerprint`` and ``datalist`` to the ``medunet`` command."""
    p = subparsers.add_parser(
        "check",
        help="validate every image/label pair of a dataset and list all problems",
        description="Read every file once and report all problems (case, file, problem). Exit 1 if any.",
    )
    _add_dataset_args(p)
    p.add_argument("--tolerance-mm", type=float, default=0.01, help="image/label grid tolerance (mm)")
    p.set_defaults(func=_cmd_check)

    p = subparsers.add_parser(
        "fingerprint",
        help="dataset statistics (spacing, size, foreground intensity, classes) as JSON",
        description="Compute the dataset fingerprint that plans (target spacing, patch, CT window) come from.",
    )
    _add_dataset_args(p)
    p.add_argument("-o", "--output", type=Path, default=None, help="write JSON here (default: stdout)")
    p.add_argument("--samples-per-case", type=int, default=10_000, help="foreground voxels sampled per case")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_fingerprint)

    p = subparsers.add_parser(
        "datalist",
        help="write a MONAI datalist JSON with a stable train/validation(/test) split or a k-fold fold",
        description="Cases are placed by a hash of (seed, case id): adding cases never moves existing ones.",
    )
    _add_dataset_args(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="datalist JSON to write")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--folds", type=int, default=0, help="k for k-fold cross-validation (0: plain split)")
    p.add_argument("--fold", type=int, default=0, help="which fold is validation (with --folds)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_datalist)
