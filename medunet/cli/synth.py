"""``medunet synth ct|mri``: generate the synthetic phantom dataset (Decathlon layout)."""

from __future__ import annotations

import argparse
import logging
import time

logger = logging.getLogger(__name__)

_MODALITY = {"ct": "CT", "mri": "MR", "mr": "MR"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    p = subparsers.add_parser(
        "synth",
        help="generate synthetic abdominal CT/MRI phantoms (liver, spleen, kidneys, aorta)",
        description=(
            "Write a Decathlon-layout dataset of synthetic abdominal phantoms with labels 1 liver, "
            "2 spleen, 3 left_kidney, 4 right_kidney, 5 aorta. Reuses DIR when it already holds a dataset "
            "made with the same parameters (use --force to regenerate)."
        ),
    )
    p.add_argument("modality", choices=sorted(_MODALITY), help="ct (int16 HU) or mri (float32, bias field)")
    p.add_argument("--out", required=True, help="output dataset directory")
    p.add_argument("--cases", type=int, default=24, help="training cases (default 24)")
    p.add_argument("--test-cases", type=int, default=4, help="test cases (default 4)")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    p.add_argument("--size", type=int, default=160, help="in-plane matrix size in voxels (default 160)")
    p.add_argument("--dicom", action="store_true", help="also write each case as a DICOM series in dicom/")
    p.add_argument("--force", action="store_true", help="regenerate even if an identical dataset exists")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from medunet.data.synthetic import ensure_synthetic_dataset, generate_dataset

    modality = _MODALITY[args.modality]
    start = time.perf_counter()
    if args.force:
        path = generate_dataset(
            args.out, modality, args.cases, args.test_cases, args.seed, args.size, dicom=args.dicom
        )
    else:
        path = ensure_synthetic_dataset(
            args.out,
            modality=modality,
            cases=args.cases,
            test_cases=args.test_cases,
            seed=args.seed,
            size=args.size,
            dicom=args.dicom,
        )
    logger.info("dataset ready: %s (%.1f s)", path, time.perf_counter() - start)
    return 0
