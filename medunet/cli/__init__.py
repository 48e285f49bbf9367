"""``medunet`` command line: thin sub-commands that call the library.

Each sub-command group lives in its own module under ``medunet.cli`` and exposes
``register(subparsers)``, which adds its parsers and sets ``func`` to a handler returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from medunet import __version__
from medunet.errors import MedunetError
from medunet.progress import setup_logging

logger = logging.getLogger("medunet")

# Sub-command modules, each with ``register(subparsers)``. Missing ones are skipped so a partial
# install (no DICOM extra) still runs the rest.
COMMAND_MODULES = (
    "medunet.cli.synth",
    "medunet.cli.dataset",
    "medunet.cli.dicom",
    "medunet.cli.predict",
    "medunet.cli.engines",
    "medunet.cli.review",
    "medunet.cli.networks",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medunet", description="Organ segmentation for CT and MRI: data, training, inference, review."
    )
    parser.add_argument("--version", action="version", version=f"medunet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # not written yet / not shipped
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(logging.DEBUG if args.verbose else logging.INFO)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedunetError as exc:
        logger.error("%s", exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
