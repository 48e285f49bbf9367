"""``medunet review import``: add ITK-SNAP-corrected segmentations to a training dataset."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def run_import(args: argparse.Namespace) -> int:
    """Handler for ``medunet review import``."""
    from medunet.review import import_reviewed

    report = import_reviewed(Path(args.reviewed), Path(args.dataset), tolerance_mm=args.tolerance_mm)
    for name, cid in report.imported.items():
        logger.info("imported %s as %s", name, cid)
    for name, why in report.skipped.items():
        logger.info("skipped %s: %s", name, why)
    logger.info(
        "%d imported, %d skipped, %d failed -> %s",
        len(report.imported),
        len(report.skipped),
        len(report.failures),
        Path(args.dataset) / "dataset.json",
    )
    if report.failures:
        logger.error("%d case(s) not imported:", len(report.failures))
        for f in report.failures:
            logger.error("  %s", f)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("review", help="bring reviewed (corrected) segmentations back for training")
    sub = p.add_subparsers(dest="review_command", metavar="ACTION", required=True)
    imp = sub.add_parser(
        "import",
        help="check corrected masks and add them to a Decathlon dataset",
        description="Each case folder written by 'medunet predict' whose segmentation.nii.gz was corrected "
        "in ITK-SNAP is checked (same grid as its image, only declared labels) and copied into "
        "imagesTr/labelsTr with a new case id; dataset.json gets the training entries and provenance.",
    )
    imp.add_argument(
        "--reviewed", required=True, metavar="DIR", help="a case folder or the predict output folder"
    )
    imp.add_argument(
        "--dataset", required=True, metavar="DIR", help="Decathlon dataset folder (created if absent)"
    )
    imp.add_argument(
        "--tolerance-mm",
        type=float,
        default=0.01,
        help="largest allowed grid difference between mask and image (default: %(default)s mm)",
    )
    imp.set_defaults(func=run_import)
