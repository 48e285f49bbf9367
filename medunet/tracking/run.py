"""A started MLflow run and the plain functions that log to it (usable without ignite).

:class:`TrackingRun` wraps an :class:`mlflow.tracking.MlflowClient` and a run id. Every call is
*guarded*: a failure mid-run (server restart, network blip, full disk) is logged as a warning and
training goes on; after ``max_failures`` consecutive failures the run stops trying and says so once.
Failures that mean "misconfigured" are caught earlier, when the run starts
(:func:`medunet.tracking.config.check_tracking_backend`).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from medunet.tracking.config import (
    DEFAULT_EXPERIMENT,
    TrackingTarget,
    check_tracking_backend,
    organ_keys,
    scrub,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# MLflow's log_batch limits (mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH / MAX_METRICS_PER_BATCH).
_PARAMS_PER_BATCH = 100
_METRICS_PER_BATCH = 1000

RUN_ID_FILE = "mlflow_run.json"
PARENT_RUN_TAG = "medunet.parent_training_run"


def is_rank_zero() -> bool:
    """Whether this process should log: not distributed, or global rank 0."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return True
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


class TrackingRun:
    """One MLflow run; all logging methods are guarded (warn, never raise)."""

    def __init__(self, client: Any, run_id: str, target: TrackingTarget, *, max_failures: int = 3) -> None:
        self.client = client
        self.run_id = run_id
        self.target = target
        self.max_failures = max_failures
        self.failures = 0  # total failed calls
        self._consecutive = 0
        self.disabled = False

    # ---- start ------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        target: TrackingTarget,
        experiment_name: str = DEFAULT_EXPERIMENT,
        *,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        check: bool = True,
    ) -> TrackingRun:
        """Check the backend, get or create the experiment, and create (or reopen ``run_id``) a run.

        Raises :class:`medunet.errors.ConfigError` when the backend is unusable: a misconfigured URI
        must stop training before it starts, not after hours without a record.
        """
        from mlflow.tracking import MlflowClient

        if check:
            check_tracking_backend(target)
        client = MlflowClient(tracking_uri=target.uri, registry_uri=target.uri)
        if run_id is not None:
            client.update_run(run_id, status="RUNNING")
            run = cls(client, run_id, target)
            if tags:
                run.set_tags(tags)
            return run
        experiment = client.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = client.create_experiment(
                experiment_name, artifact_location=target.artifact_location
            )
        else:
            experiment_id = experiment.experiment_id
            if experiment.lifecycle_stage == "deleted":
                client.restore_experiment(experiment_id)
        created = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {}))
        logger.info(
            "MLflow run %s (experiment %r) at %s", created.info.run_id, experiment_name, target.display_uri
        )
        return cls(client, created.info.run_id, target)

    # ---- guard ------------------------------------------------------------------------------------
    def guarded(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
        """Call ``fn``; on failure warn and return ``None`` (and stop trying after repeated failures)."""
        if self.disabled:
            return None
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self.failures += 1
            self._consecutive += 1
            logger.warning(
                "MLflow: %s failed for run %s (%s: %s); training continues",
                what,
                self.run_id,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
            )
            if self._consecutive >= self.max_failures:
                self.disabled = True
                logger.error(
                    "MLflow: %d consecutive failures; no more logging to run %s at %s (the run is incomplete)",
                    self._consecutive,
                    self.run_id,
                    self.target.display_uri,
                )
            return None
        self._consecutive = 0
        return result

    # ---- logging ----------------------------------------------------------------------------------
    def log_params(self, params: Mapping[str, str]) -> None:
        """Log params in batches; keys already logged with the same value are skipped (resume)."""
        from mlflow.entities import Param

        existing = self.existing_params()
        items = []
        for k, v in params.items():
            if k in existing:
                if existing[k] != str(v):
                    logger.warning(
                        "MLflow: param %s=%r differs from the run's %r; kept the first", k, v, existing[k]
                    )
                continue
            items.append(Param(k, str(v)))
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.guarded(
                "log params", self.client.log_batch, self.run_id, params=items[i : i + _PARAMS_PER_BATCH]
            )

    def existing_params(self) -> dict[str, str]:
        run = self.guarded("get run", self.client.get_run, self.run_id)
        return dict(run.data.params) if run is not None else {}

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), _PARAMS_PER_BATCH):
            self.guarded(
                "set tags", self.client.log_batch, self.run_id, tags=items[i : i + _PARAMS_PER_BATCH]
            )

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log scalar metrics at ``step`` in one request (NaN is recorded as NaN, not dropped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), _METRICS_PER_BATCH):
            self.guarded(
                "log metrics", self.client.log_batch, self.run_id, metrics=items[i : i + _METRICS_PER_BATCH]
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            logger.debug("MLflow: artifact %s does not exist; skipped", path)
            return
        fn = self.client.log_artifacts if path.is_dir() else self.client.log_artifact
        self.guarded(f"log artifact {path.name}", fn, self.run_id, str(path), artifact_path)

    def log_json_scrubbed(self, data: Any, artifact_file: str) -> None:
        """Log JSON data as ``artifact_file`` after :func:`scrub` (paths -> names, no secrets)."""
        self.log_text(json.dumps(scrub(data), indent=2, default=str, allow_nan=True) + "\n", artifact_file)

    def log_json_file_scrubbed(self, path: str | Path, artifact_file: str) -> None:
        """Log a JSON file's scrubbed content; a file that is not JSON is skipped with a warning."""
        path = Path(path)
        if not path.is_file():
            logger.debug("MLflow: %s does not exist; skipped", path)
            return
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            logger.warning("MLflow: %s is not readable JSON (%s); not logged", path, exc)
            return
        self.log_json_scrubbed(data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.guarded(f"log {artifact_file}", self.client.log_text, self.run_id, text, artifact_file)

    def terminate(self, status: str = "FINISHED") -> None:
        self.guarded("end run", self.client.set_terminated, self.run_id, status)
        if self.failures:
            logger.warning(
                "MLflow run %s: %d logging calls failed; the record is incomplete", self.run_id, self.failures
            )

    def write_run_file(self, directory: str | Path) -> Path | None:
        """Write ``<directory>/mlflow_run.json`` so evaluation and resume can find this run."""
        from medunet.io.atomic import atomic_write_text

        info = {"run_id": self.run_id, "tracking_uri": self.target.display_uri}
        try:
            return atomic_write_text(Path(directory) / RUN_ID_FILE, json.dumps(info, indent=2) + "\n")
        except OSError as exc:
            logger.warning("cannot write %s: %s", Path(directory) / RUN_ID_FILE, exc)
            return None


def read_run_file(directory: str | Path) -> str | None:
    """The run id recorded by :meth:`TrackingRun.write_run_file` in ``directory``, if any."""
    return _run_file_field(directory, "run_id")


def read_run_uri(directory: str | Path) -> str | None:
    """The tracking URI (credentials removed) recorded next to the run id in ``directory``, if any."""
    return _run_file_field(directory, "tracking_uri")


def _run_file_field(directory: str | Path, key: str) -> str | None:
    try:
        return str(json.loads((Path(directory) / RUN_ID_FILE).read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --------------------------------------------------------------------------------------------------
# Validation / evaluation summaries
# --------------------------------------------------------------------------------------------------

_STATS = ("dice", "hd95", "nsd")


def summary_metrics(summary: Mapping[str, Any], prefix: str = "val", *, nsd: bool = True) -> dict[str, float]:
    """Metric dict from a :meth:`medunet.metrics.MetricsTable.summary`.

    Per organ ``<prefix>_dice_<organ>``, ``<prefix>_hd95_<organ>`` (mm), ``<prefix>_nsd_<organ>`` and
    ``<prefix>_hd95_undefined_<organ>`` (cases where exactly one of reference/prediction is empty, whose
    HD95 is undefined and left out of the mean); plus ``<prefix>_dice_mean``, ``<prefix>_hd95_mean``,
    ``<prefix>_nsd_mean``. An organ whose HD95 is undefined in every case is logged as NaN.
    """
    organs = [k for k in summary if k != "mean"]
    keys = organ_keys(organs)
    stats = _STATS if nsd else _STATS[:2]
    out: dict[str, float] = {}
    for organ in organs:
        s = summary[organ]
        for stat in stats:
            value = s.get(f"{stat}_mean")
            if value is not None:
                out[f"{prefix}_{stat}_{keys[organ]}"] = _float(value)
        if "n_hd95_nan" in s:
            out[f"{prefix}_hd95_undefined_{keys[organ]}"] = float(s["n_hd95_nan"])
    mean = summary.get("mean", {})
    for stat in stats:
        value = mean.get(f"val_{stat}_mean", mean.get(f"{stat}_mean"))
        if value is not None:
            out[f"{prefix}_{stat}_mean"] = _float(value)
    return out


def log_validation(
    run: TrackingRun, epoch: int, summary: Mapping[str, Any], *, nsd: bool = True
) -> dict[str, float]:
    """Log one validation's per-organ summary at ``step = epoch``; returns what was logged."""
    metrics = summary_metrics(summary, "val", nsd=nsd)
    run.log_metrics(metrics, step=epoch)
    return metrics


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


# --------------------------------------------------------------------------------------------------
# Model logging
# --------------------------------------------------------------------------------------------------


def pip_requirements() -> list[str]:
    """Pinned requirements of a logged model, taken from the running environment (no network)."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for dist in ("torch", "monai", "numpy", "medunet"):
        try:
            reqs.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            reqs.append(dist)
    return reqs


def log_pytorch_model(
    run: TrackingRun,
    model: Any,
    *,
    in_channels: int,
    spatial_dims: int,
    example_sizes: Sequence[Sequence[int]],
    registered_model_name: str | None = None,
    extra_files: Iterable[str | Path] = (),
) -> Any:
    """Log ``model`` with ``mlflow.pytorch.log_model`` into ``run`` and register it; guarded.

    The signature declares ``(batch, in_channels, *spatial)`` float32 input with every size but the
    channels free (the networks are fully convolutional). The input example is the first size in
    ``example_sizes`` the model accepts (a small one keeps the stored example small). Requirements are
    pinned from the installed versions, so nothing is resolved over the network. The model is stored
    with pickle (eager module): ``torch.export``'s ``pt2`` format would freeze the spatial size.
    Returns the ``ModelInfo`` or ``None``.
    """
    return run.guarded(
        "log model",
        _log_pytorch_model,
        run,
        model,
        in_channels=in_channels,
        spatial_dims=spatial_dims,
        example_sizes=example_sizes,
        registered_model_name=registered_model_name,
        extra_files=[str(p) for p in extra_files if Path(p).is_file()],
    )


def _log_pytorch_model(
    run: TrackingRun,
    model: Any,
    *,
    in_channels: int,
    spatial_dims: int,
    example_sizes: Sequence[Sequence[int]],
    registered_model_name: str | None,
    extra_files: list[str],
) -> Any:
    import mlflow
    import mlflow.pytorch
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    model = model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    example: np.ndarray | None = None
    out_channels = -1
    for size in example_sizes:
        candidate = np.zeros((1, in_channels, *[int(s) for s in size]), dtype=np.float32)
        try:
            with torch.no_grad():
                y = model(torch.from_numpy(candidate).to(device))
        except Exception:  # a size the network cannot take (e.g. not divisible by its strides)
            continue
        if isinstance(y, list | tuple):  # deep supervision heads: the first is the prediction
            y = y[0]
        example, out_channels = candidate, int(y.shape[1])
        break
    free = (-1,) * spatial_dims
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, in_channels, *free))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, out_channels, *free))]),
    )
    with _fluent_run(run):
        return mlflow.pytorch.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            extra_files=extra_files or None,
            serialization_format="pickle",
            await_registration_for=60,
        )


class _fluent_run:  # noqa: N801 - used as a context manager
    """Temporarily point MLflow's fluent API at ``run`` (``log_model`` only exists there).

    The previous tracking/registry URIs are restored afterwards, so the process-wide MLflow state is
    left as it was. Leaving the fluent run ends it (MLflow marks it finished); model logging is the last
    step of a run, and the caller sets the final status right after.
    """

    def __init__(self, run: TrackingRun) -> None:
        self.run = run

    def __enter__(self) -> None:
        import mlflow
        from mlflow.tracking import _tracking_service
        from mlflow.tracking._model_registry import utils as registry_utils

        self._old = (
            getattr(_tracking_service.utils, "_tracking_uri", None),
            getattr(registry_utils, "_registry_uri", None),
        )
        mlflow.set_tracking_uri(self.run.target.uri)
        mlflow.set_registry_uri(self.run.target.uri)
        mlflow.start_run(run_id=self.run.run_id)

    def __exit__(self, *exc: object) -> None:
        import mlflow
        from mlflow.tracking import _tracking_service
        from mlflow.tracking._model_registry import utils as registry_utils

        try:
            mlflow.end_run()
        finally:
            _tracking_service.utils._tracking_uri, registry_utils._registry_uri = self._old
