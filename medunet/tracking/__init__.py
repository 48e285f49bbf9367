"""Experiment tracking with MLflow.

Where runs go (:func:`resolve_tracking_uri`): the bundle's ``tracking_uri`` > ``MLFLOW_TRACKING_URI``
> ``sqlite:///<output_dir>/mlflow.db`` (artifacts in ``<output_dir>/mlartifacts``; no server needed).
What is recorded: see :class:`MLflowTracker` (training) and :class:`MLflowEvaluationTracker`.
"""

from __future__ import annotations

from medunet.tracking.config import (
    TrackingTarget,
    check_tracking_backend,
    environment_tags,
    flatten_config,
    organ_keys,
    resolve_tracking_uri,
    sanitize_metric_name,
    scrub,
)
from medunet.tracking.handler import (
    MLflowEvaluationTracker,
    MLflowTracker,
    log_evaluation,
    loss_from_output,
    summary_from_state,
)
from medunet.tracking.run import (
    PARENT_RUN_TAG,
    TrackingRun,
    is_rank_zero,
    log_pytorch_model,
    log_validation,
    read_run_file,
    summary_metrics,
)

__all__ = [
    "PARENT_RUN_TAG",
    "MLflowEvaluationTracker",
    "MLflowTracker",
    "TrackingRun",
    "TrackingTarget",
    "check_tracking_backend",
    "environment_tags",
    "flatten_config",
    "is_rank_zero",
    "log_evaluation",
    "log_pytorch_model",
    "log_validation",
    "loss_from_output",
    "organ_keys",
    "read_run_file",
    "resolve_tracking_uri",
    "sanitize_metric_name",
    "scrub",
    "summary_from_state",
    "summary_metrics",
]
