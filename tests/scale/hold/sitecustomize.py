"""Test-only: lets a Ray test hold one case inside a worker until the test SIGKILLs that worker.

Python imports ``sitecustomize`` at start-up from ``sys.path``; the Ray tests put this folder on the
``PYTHONPATH`` of the Ray processes they start (workers inherit it), never on the suite's own. Nothing
happens unless ``MEDUNET_TEST_HOLD_DIR`` is set. Then, once a process imports ``medunet.cli.predict``,
its ``predict_one`` is wrapped: for the case named in ``<hold dir>/plan.json`` (``{"case": ..., "times":
N}``) the first N attempts write ``held-<n>-<pid>`` and wait there for the kill, so the test kills a
worker that is provably mid-case (no polling of process titles, no timing). Later attempts run as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys


def _wrap(module: object) -> None:
    import json
    import time
    from pathlib import Path

    hold = Path(os.environ["MEDUNET_TEST_HOLD_DIR"])
    original = module.predict_one  # type: ignore[attr-defined]

    def predict_one(args, case, output, setup):  # noqa: ANN001, ANN202 -- same signature as the original
        try:
            plan = json.loads((hold / "plan.json").read_text())
        except (OSError, ValueError):
            plan = {}
        held = len(list(hold.glob("held-*")))
        if case.name == plan.get("case") and held < int(plan.get("times", 1)):
            (hold / f"held-{held}-{os.getpid()}").touch()
            deadline = time.monotonic() + 600  # the test kills this process long before
            while time.monotonic() < deadline:
                time.sleep(0.2)
        return original(args, case, output, setup)

    module.predict_one = predict_one  # type: ignore[attr-defined]


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps ``medunet.cli.predict`` right after it is imported (Ray's own processes never import it)."""

    name = "medunet.cli.predict"

    def find_spec(self, fullname, path, target=None):  # noqa: ANN001, ANN201
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader_exec = spec.loader.exec_module

        def exec_module(module) -> None:  # noqa: ANN001
            loader_exec(module)
            _wrap(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("MEDUNET_TEST_HOLD_DIR"):
    sys.meta_path.insert(0, _WrapOnImport())
