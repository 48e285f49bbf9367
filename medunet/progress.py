"""One progress helper for long work, and the CLI's logging set-up."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, disable: bool | None = None
) -> Iterator[T]:
    """Wrap ``iterable`` in a progress bar on stderr (hidden when stderr is not a terminal unless forced)."""
    if disable is None:
        disable = not sys.stderr.isatty()
    yield from tqdm(iterable, desc=desc, total=total, disable=disable, file=sys.stderr, dynamic_ncols=True)


def progress_bar(*, desc: str, total: int, unit: str = "it", disable: bool | None = None) -> tqdm:
    """A bar updated by hand (``bar.update(1)``, ``bar.set_postfix_str(...)``, ``bar.close()``), for work
    whose items finish out of order (e.g. cases on a pool of workers); same display rules as :func:`progress`."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return tqdm(desc=desc, total=total, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True)


def setup_logging(level: int | str = logging.INFO) -> None:
    """Configure root logging for command-line use (library code only creates module loggers)."""
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
