"""The on-disk engine artefact: one folder, the engine file(s) plus ``medunet_engine.json``.

Layout (``medunet export`` writes it, :meth:`EngineArtifact.load` reads and verifies it)::

    best_onnx/
        model.onnx              # torchscript: model.ts; openvino: model.xml + model.bin; tensorrt: model.plan
        medunet_engine.json     # what the engine is and what it was made from

``medunet_engine.json`` holds ``format`` (:data:`ARTIFACT_FORMAT`), ``engine_format``, the model file
and the sha256 of every file of the engine, the exporter versions (torch, opset, runtime), the input
(name, dtype, layout, channels, dynamic axes) and output, the full plans (labels, target spacing,
patch size, intensity, network and its kwargs, post-processing) with their sha256, the source
checkpoint's file name and sha256, the precision (``fp32`` / ``int8``, with what int8 was calibrated
on) and the export-time check against PyTorch. Loading refuses an artefact whose plans no longer hash
to the recorded value, whose files changed, or whose checkpoint / plans differ from the ones it is
used with (:class:`~medunet.errors.EngineMismatchError`, naming the mismatch).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medunet.errors import ConfigError, EngineError, EngineMismatchError
from medunet.io.atomic import atomic_write_text
from medunet.io.digest import file_sha256, recorded_sha256
from medunet.plans import Plans

ARTIFACT_FORMAT = "medunet-engine/1"
METADATA_NAME = "medunet_engine.json"

#: Export formats (``medunet export --format``) and the engine file each writes.
FORMATS = ("torchscript", "onnx", "openvino", "tensorrt")
MODEL_FILES = {
    "torchscript": "model.ts",
    "onnx": "model.onnx",
    "openvino": "model.xml",
    "tensorrt": "model.plan",
}
#: Runtimes (``medunet predict --engine``); ``torch`` is the checkpoint itself, in eager PyTorch.
ENGINES = ("torch", "torchscript", "onnxruntime", "openvino", "tensorrt")
#: Which artefact formats each runtime can run (the first is what it exports when none is given).
ENGINE_FORMATS: dict[str, tuple[str, ...]] = {
    "torchscript": ("torchscript",),
    "onnxruntime": ("onnx",),
    "openvino": ("openvino", "onnx"),
    "tensorrt": ("tensorrt",),
}
INPUT_NAME = "image"
OUTPUT_NAME = "logits"


def plans_sha256(plans: Plans | dict[str, Any]) -> str:
    """sha256 of the plans' canonical JSON (sorted keys, no whitespace): equal plans, equal hash."""
    d = plans.to_dict() if isinstance(plans, Plans) else plans
    text = json.dumps(d, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def plans_differences(a: Plans, b: Plans) -> list[str]:
    """Names of the plans fields that differ (``labels``, ``patch_size``, ``network_kwargs``...)."""
    da, db = a.to_dict(), b.to_dict()
    return sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))


def default_output(checkpoint: str | Path, fmt: str, int8: bool = False) -> Path:
    """Where ``medunet export`` writes by default: ``<checkpoint folder>/<stem>_<format>[_int8]``."""
    ckpt = Path(checkpoint)
    return ckpt.with_name(f"{ckpt.stem}_{fmt}{'_int8' if int8 else ''}")


def write_metadata(directory: Path, meta: dict[str, Any]) -> Path:
    """Write ``medunet_engine.json`` (atomically; the last file of an export)."""
    return atomic_write_text(directory / METADATA_NAME, json.dumps(meta, indent=2, sort_keys=False) + "\n")


@dataclass(frozen=True)
class EngineArtifact:
    """A verified engine artefact folder: its metadata and the plans it was exported with."""

    directory: Path
    meta: dict[str, Any]
    plans: Plans

    @property
    def format(self) -> str:
        return str(self.meta["engine_format"])

    @property
    def model_path(self) -> Path:
        return self.directory / str(self.meta["model_file"])

    @property
    def precision(self) -> str:
        return str(self.meta.get("precision", "fp32"))

    @property
    def checkpoint_sha256(self) -> str | None:
        ckpt = self.meta.get("checkpoint") or {}
        return ckpt.get("sha256")

    @property
    def identity(self) -> str:
        """sha256 of the engine's files and metadata: names this exact engine (e.g. in case.json)."""
        files = self.meta.get("files", {})
        text = json.dumps({"files": files, "plans_sha256": self.meta.get("plans_sha256")}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    @classmethod
    def load(cls, path: str | Path, *, verify_files: bool = True) -> EngineArtifact:
        """Read and verify an artefact folder (or a file inside it).

        Raises :class:`EngineError` when it is not an artefact, :class:`EngineMismatchError` when the
        recorded plans hash or a file's hash no longer matches.
        """
        path = Path(path)
        directory = path if path.is_dir() else path.parent
        meta_path = directory / METADATA_NAME
        if not meta_path.is_file():
            raise EngineError(directory, f"not an engine artefact: no {METADATA_NAME} (run medunet export)")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise EngineError(meta_path, f"unreadable engine metadata: {exc}") from None
        if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
            got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise EngineError(meta_path, f"unsupported artefact format {got!r}; expected {ARTIFACT_FORMAT!r}")
        for key in ("engine_format", "model_file", "plans", "plans_sha256", "files"):
            if key not in meta:
                raise EngineError(meta_path, f"engine metadata lacks {key!r}")
        if meta["engine_format"] not in FORMATS:
            raise EngineError(meta_path, f"unknown engine format {meta['engine_format']!r}")
        actual = plans_sha256(meta["plans"])
        if actual != meta["plans_sha256"]:
            raise EngineMismatchError(
                meta_path,
                f"plans were modified after export: their sha256 is {actual[:12]}..., the export recorded "
                f"{str(meta['plans_sha256'])[:12]}...; re-export from the checkpoint",
            )
        try:
            plans = Plans.from_dict(meta["plans"])
        except ConfigError as exc:
            raise EngineError(meta_path, exc.problem) from None
        if verify_files:
            for name, digest in dict(meta["files"]).items():
                f = directory / name
                if not f.is_file():
                    raise EngineError(f, "engine file listed in the metadata is missing")
                if file_sha256(f) != digest:
                    raise EngineMismatchError(f, "engine file changed after export (sha256 mismatch)")
        return cls(directory, meta, plans)

    def check_against(
        self,
        *,
        checkpoint: str | Path | None = None,
        checkpoint_sha256: str | None = None,
        plans: Plans | None = None,
    ) -> None:
        """Refuse to run with a checkpoint or plans other than the ones the artefact was exported from."""
        if checkpoint is not None and checkpoint_sha256 is None:
            checkpoint_sha256 = recorded_sha256(checkpoint)
        recorded = self.checkpoint_sha256
        if checkpoint_sha256 is not None and recorded is not None and checkpoint_sha256 != recorded:
            if checkpoint is not None and plans is None:
                plans = _checkpoint_plans(Path(checkpoint))
            if plans is not None and plans_sha256(plans) != self.meta["plans_sha256"]:
                fields = ", ".join(plans_differences(plans, self.plans)) or "serialisation"
                raise EngineMismatchError(
                    self.directory,
                    f"exported from another checkpoint whose plans differ from {checkpoint}'s: {fields}",
                )
            raise EngineMismatchError(
                self.directory,
                f"exported from another checkpoint: checkpoint sha256 {checkpoint_sha256[:12]}... "
                f"({checkpoint or 'given'}) differs from the recorded {recorded[:12]}... "
                f"({(self.meta.get('checkpoint') or {}).get('name')})",
            )
        if plans is not None and plans_sha256(plans) != self.meta["plans_sha256"]:
            fields = ", ".join(plans_differences(plans, self.plans)) or "serialisation"
            raise EngineMismatchError(
                self.directory, f"plans differ from the ones the engine was exported with: {fields}"
            )

    def check_runs_on(self, engine: str) -> None:
        """:class:`EngineError` unless ``engine`` can run this artefact's format."""
        allowed = ENGINE_FORMATS.get(engine, ())
        if self.format not in allowed:
            raise EngineError(
                self.directory,
                f"engine {engine!r} cannot run a {self.format!r} artefact (it runs: {', '.join(allowed)}); "
                f"export with --format {allowed[0] if allowed else '?'}",
            )


def _checkpoint_plans(path: Path) -> Plans | None:
    """The plans embedded in a checkpoint, or ``None`` when it has none or cannot be read."""
    from medunet.errors import MedunetError
    from medunet.training.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(path)
        return Plans.from_dict(state["plans"]) if "plans" in state else None
    except MedunetError:
        return None
