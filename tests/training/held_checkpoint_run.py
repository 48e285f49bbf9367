"""Crash tests only: ``python -m monai.bundle`` with one checkpoint write held open, to SIGKILL it there.

Usage::

    python tests/training/held_checkpoint_run.py MODE FILE SECONDS MARKER -- <monai.bundle arguments>

The hold is monkeypatched into ``medunet.training.checkpoint`` in this process (nothing of it ships in
medunet). When the write of checkpoint ``FILE`` (e.g. ``epoch_0003.pt``) reaches the hold point,
``MARKER`` is created and the write pauses ``SECONDS`` before going on as normal:

* ``before-checksum``: the payload is complete and renamed into place, its ``.sha256`` not yet written;
* ``torn-payload``: half the payload is in the temporary file next to ``FILE`` (flushed to disk), the
  rest not yet written and the file not yet renamed.
"""

from __future__ import annotations

import os
import runpy
import sys
import time
from pathlib import Path

import medunet.training.checkpoint as checkpoint
from medunet.io.atomic import atomic_path

MODES = ("before-checksum", "torn-payload")


def hold(mode: str, name: str, seconds: float, marker: Path) -> None:
    """Patch ``checkpoint``'s writers so the write of ``name`` pauses at the ``mode`` point."""
    if mode not in MODES:
        raise SystemExit(f"mode must be one of {MODES}, got {mode!r}")
    write_bytes, write_text = checkpoint.atomic_write_bytes, checkpoint.atomic_write_text

    def pause() -> None:
        marker.write_text(f"{mode} {name}\n")
        time.sleep(seconds)

    def held_text(target: str | Path, text: str) -> Path:
        if mode == "before-checksum" and Path(target).name == f"{name}.sha256":
            pause()
        return write_text(target, text)

    def held_bytes(target: str | Path, data: bytes) -> Path:
        if mode != "torn-payload" or Path(target).name != name:
            return write_bytes(target, data)
        with atomic_path(target) as tmp, open(tmp, "wb") as fh:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            pause()
            fh.write(data[len(data) // 2 :])
        return Path(target)

    checkpoint.atomic_write_bytes = held_bytes
    checkpoint.atomic_write_text = held_text


def main(argv: list[str]) -> None:
    mode, name, seconds, marker, separator, *bundle_args = argv
    if separator != "--":
        raise SystemExit(__doc__)
    hold(mode, name, float(seconds), Path(marker))
    sys.argv = ["monai.bundle", *bundle_args]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
