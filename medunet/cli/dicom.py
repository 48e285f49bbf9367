"""``medunet dicom list DIR`` and ``medunet convert DICOM_DIR OUT.nii.gz [--series UID]``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from medunet.errors import MedunetError

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``dicom`` group and the ``convert`` command."""
    dicom = subparsers.add_parser("dicom", help="inspect DICOM folders")
    dsub = dicom.add_subparsers(dest="dicom_command", metavar="DICOM_COMMAND")
    lst = dsub.add_parser("list", help="list the series under a folder (headers only)")
    lst.add_argument("root", type=Path)
    lst.set_defaults(func=_cmd_list)

    conv = subparsers.add_parser(
        "convert", help="convert DICOM series (or other images) to NIfTI without identifying text"
    )
    conv.add_argument("inputs", type=Path, nargs="+", help="DICOM series folder(s) or image files")
    conv.add_argument("output", type=Path, help="OUT.nii.gz for one input, or a folder for several")
    conv.add_argument("--series", help="SeriesInstanceUID (or key from `dicom list`) to read")
    conv.add_argument("--volume", type=int, default=None, help="volume index in a 4D acquisition")
    conv.set_defaults(func=_cmd_convert)


def format_series_table(root: Path) -> str:
    """A plain-text table of the series under ``root``."""
    from medunet.io.dicom import list_series

    rows = [("KEY", "MODALITY", "FILES", "SLICES", "ROWSxCOLS", "DESCRIPTION", "DIRECTORY")]
    for s in list_series(root):
        rows.append(
            (
                s.key,
                s.modality,
                str(s.n_files),
                str(s.n_slices),
                f"{s.rows}x{s.cols}",
                s.description,
                str(s.directory),
            )
        )
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(r[c].ljust(widths[c]) for c in range(len(widths))) + "  " + r[-1] for r in rows
    )


def _cmd_list(args: argparse.Namespace) -> int:
    sys.stdout.write(format_series_table(args.root) + "\n")  # the command's output, not a log line
    return 0


def convert_one(source: Path, output: Path, *, series: str | None = None, volume: int | None = None) -> Path:
    """Read ``source`` (DICOM folder or image) and write ``output`` NIfTI atomically; return the path."""
    from medunet.io import read_image
    from medunet.io.dicom import read_dicom_series
    from medunet.io.nifti import write_nifti

    if source.is_dir() or series is not None or volume is not None:
        vol = read_dicom_series(source, series, volume_index=volume)
    else:
        vol = read_image(source)
    return write_nifti(output, vol.array, vol.affine)


def _cmd_convert(args: argparse.Namespace) -> int:
    inputs: list[Path] = args.inputs
    if len(inputs) == 1 and args.output.suffix in (".nii", ".gz"):
        convert_one(inputs[0], args.output, series=args.series, volume=args.volume)
        logger.info("wrote %s", args.output)
        return 0
    failures: list[MedunetError] = []
    for n, src in enumerate(inputs, start=1):
        out = args.output / f"case_{n:03d}.nii.gz"
        try:
            convert_one(src, out, series=args.series, volume=args.volume)
            logger.info("wrote %s", out)
        except MedunetError as exc:
            failures.append(exc)
            logger.error("%s", exc)
    if failures:
        logger.error("%d of %d inputs failed", len(failures), len(inputs))
        return 1
    return 0
