"""What an archive run leaves besides case folders: which cases are done, ``failures.csv``, ``run.json``.

**Resume.** A case folder only appears complete (``write_case`` renames a hidden ``.<case>.partial-*``
folder into place), so a folder whose ``case.json`` names the same source, the same model
(``checkpoint_sha256``) and the same result options is done and is skipped on a re-run. A folder from
another model or other options is predicted again (and replaced atomically). Hidden partial folders are
what a killed worker or driver leaves behind; :func:`remove_stale_partials` clears them at the start of a
run (two runs must not write into the same output folder at once).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medunet.io.atomic import atomic_write_text

if TYPE_CHECKING:
    from medunet.cli.predict import CaseInput

logger = logging.getLogger(__name__)

FAILURES_FILE = "failures.csv"
RUN_FILE = "run.json"
RUN_FORMAT = "medunet-run/1"
#: Options that do not change a case's result: where the model files lie.
_PATH_OPTIONS = ("ensemble",)


def _result_options(options: Mapping[str, Any]) -> str:
    kept = {k: v for k, v in options.items() if k not in _PATH_OPTIONS}
    return json.dumps(kept, sort_keys=True, default=str)


def is_complete(
    case_dir: Path, source: str, checkpoint_sha256: str | None, options: Mapping[str, Any]
) -> bool:
    """Whether ``case_dir`` is a finished case of this source, model and options (see module docstring)."""
    from medunet.export.case import CASE_FILE, CASE_FORMAT  # (imports torch: only when needed)

    try:
        record = json.loads((case_dir / CASE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return (
        isinstance(record, dict)
        and record.get("format") == CASE_FORMAT
        and record.get("source") == source
        and checkpoint_sha256 is not None
        and record.get("checkpoint_sha256") == checkpoint_sha256
        and _result_options(record.get("options") or {}) == _result_options(options)
        and (case_dir / str(record.get("segmentation") or "segmentation.nii.gz")).is_file()
    )


def case_source(case: CaseInput) -> str:
    """What ``case.json`` records as the case's source (see ``medunet.export.case.write_case``)."""
    return case.source_uri or str(case.path.resolve())


def split_complete(
    cases: Sequence[CaseInput], output: Path, checkpoint_sha256: str | None, options: Mapping[str, Any]
) -> tuple[list[CaseInput], list[CaseInput]]:
    """``(to_do, already_done)``: cases whose folder under ``output`` is complete for this model go last."""
    todo: list[CaseInput] = []
    done: list[CaseInput] = []
    for case in cases:
        complete = is_complete(output / case.name, case_source(case), checkpoint_sha256, options)
        (done if complete else todo).append(case)
    return todo, done


def remove_stale_partials(output: Path, names: Iterable[str] | None = None) -> int:
    """Remove hidden ``.<case>.partial-*`` folders (all, or those of ``names``); returns how many."""
    if not output.is_dir():
        return 0
    patterns = [f".{n}.partial-*" for n in names] if names is not None else [".*.partial-*"]
    removed = 0
    for pattern in patterns:
        for folder in output.glob(pattern):
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
    return removed


def write_failures(output: Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    """Write ``failures.csv`` (``case,input,error``; header only when nothing failed), atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "input", "error"])
    writer.writerows(rows)
    return atomic_write_text(output / FAILURES_FILE, buf.getvalue())


def write_run(output: Path, summary: Mapping[str, Any]) -> Path:
    """Write ``run.json`` atomically."""
    doc = {"format": RUN_FORMAT, **summary}
    return atomic_write_text(output / RUN_FILE, json.dumps(doc, indent=2, default=str) + "\n")


def read_failures(output: Path) -> list[dict[str, str]]:
    """The rows of ``failures.csv`` (``[]`` when absent)."""
    path = output / FAILURES_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))
