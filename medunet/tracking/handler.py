"""Ignite handlers that record training and evaluation in MLflow; attachable from bundle JSON.

Training (``train.json``)::

    "mlflow_tracker": {
        "_target_": "medunet.tracking.MLflowTracker",
        "output_dir": "@output_dir", "tracking_uri": "@tracking_uri", "experiment_name": "@experiment_name",
        "plans": "@plans", "datalist": "@datalist", "params": "@tracking_params",
        "config_files": "@config_files", "bundle_metadata": "$@bundle_root + '/metadata.json'"
    }

and ``"@mlflow_tracker"`` in both the trainer's and the evaluator's handler lists: the same object is
attached to both engines (a :class:`monai.engines.Evaluator` is recognised as the evaluator; with
plain ignite engines call :meth:`MLflowTracker.attach_evaluator`). Put it *last* in each list, so the
metrics and checkpoints it logs are already computed and written.

Evaluation (``evaluate.json``): :class:`MLflowEvaluationTracker` logs the per-case table and the
summary to a run of its own, tagged ``medunet.parent_training_run`` with the training run's id.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medunet.config import as_bool
from medunet.errors import ConfigError
from medunet.plans import Plans
from medunet.tracking.config import (
    DEFAULT_EXPERIMENT,
    ENV_TRACKING_URI,
    environment_tags,
    flatten_config,
    read_bundle_metadata,
    resolve_tracking_uri,
    strip_path,
)
from medunet.tracking.plots import best_slice, preview_png, training_curve_png
from medunet.tracking.run import (
    PARENT_RUN_TAG,
    TrackingRun,
    is_rank_zero,
    log_pytorch_model,
    log_validation,
    read_run_file,
    read_run_uri,
    summary_metrics,
)

logger = logging.getLogger(__name__)

SummaryFn = Callable[[Engine], Mapping[str, Any] | None]


class MLflowTracker:
    """Records one training run: params, tags, loss/LR/validation metrics, artifacts, the model.

    Args:
        output_dir: the training output folder (checkpoints, plans.json, metrics.csv live there; the
            default sqlite store goes there too).
        tracking_uri: bundle override; empty/None falls back to ``MLFLOW_TRACKING_URI``, then to
            ``sqlite:///<output_dir>/mlflow.db``.
        plans: a :class:`Plans` or the path of ``plans.json`` (network, patch, spacing, labels).
        datalist: the dataset (name, label names, content hash); or give ``dataset_name``/``dataset_hash``.
        params: extra resolved settings to record (loss, augmentation, schedule...), flattened.
        config_files: bundle config files to keep as artifacts (paths scrubbed).
        fingerprint: dataset fingerprint (object with ``to_dict``, dict, or JSON path).
        summary_fn: how to get the validation summary from the evaluator; default looks for a
            :class:`medunet.metrics.MetricsTable` on ``engine.state`` (``metrics_table``).
        loss_every: log ``train_loss_iter`` every this many iterations (0: never).
        previews: number of validation cases rendered as preview PNGs at the last validation.
        registered_model_name: registry name of the logged model (default ``medunet-<experiment>``);
            ``""`` logs the model without registering it.
    """

    def __init__(
        self,
        output_dir: str | Path,
        tracking_uri: str | None = None,
        experiment_name: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        *,
        plans: Plans | str | Path | None = None,
        datalist: Any = None,
        dataset_name: str | None = None,
        dataset_hash: str | None = None,
        params: Mapping[str, Any] | None = None,
        config_files: Sequence[str | Path] | str | Path | None = None,
        fingerprint: Any = None,
        bundle_metadata: str | Path | Mapping[str, Any] | None = None,
        summary_fn: SummaryFn | None = None,
        metrics_csv: str | Path | None = None,
        cases_csv: str | Path | None = None,
        validator: Any = None,
        best_checkpoint: str | Path | None = None,
        loss_every: int = 10,
        previews: int = 3,
        log_model: bool = True,
        registered_model_name: str | None = None,
        nsd: bool = True,
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name or DEFAULT_EXPERIMENT
        self.run_name = run_name
        self.plans = plans
        self.datalist = datalist
        self.dataset_name = dataset_name
        self.dataset_hash = dataset_hash
        self.params = dict(params or {})
        self.config_files = (
            [config_files] if isinstance(config_files, str | Path) else list(config_files or [])
        )
        self.fingerprint = fingerprint
        self.bundle_metadata = bundle_metadata
        self.summary_fn = summary_fn
        self.metrics_csv = Path(metrics_csv) if metrics_csv else self.output_dir / "metrics.csv"
        self.cases_csv = Path(cases_csv) if cases_csv else self.output_dir / "val_cases.csv"
        self.validator = validator
        self.best_checkpoint = Path(best_checkpoint) if best_checkpoint else self.output_dir / "best.pt"
        self.loss_every = int(loss_every)
        self.previews = int(previews)
        self.log_model = log_model
        self.registered_model_name = (
            f"medunet-{self.experiment_name}" if registered_model_name is None else registered_model_name
        )
        self.nsd = nsd
        # '--mlflow_tracker#enabled false' arrives as the string 'false' from the bundle CLI.
        self.enabled = as_bool(enabled, "enabled") and is_rank_zero()

        self.run: TrackingRun | None = None
        self.model_info: Any = None  # mlflow ModelInfo once the model is logged
        self.trainer: Engine | None = None
        self.evaluators: list[Engine] = []
        self.loss_history: dict[int, float] = {}
        self.dice_history: dict[str, dict[int, float]] = {}
        self.validation_history: list[dict[str, float]] = []
        self._epoch_losses: list[float] = []

    # ---- attaching --------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        """Attach to a trainer, or to an evaluator when ``engine`` is a MONAI ``Evaluator``."""
        try:
            from monai.engines import Evaluator
        except ImportError:  # pragma: no cover
            Evaluator = ()  # type: ignore[assignment,misc]  # noqa: N806
        if isinstance(engine, Evaluator):
            self.attach_evaluator(engine)
        else:
            self.attach_trainer(engine)

    def attach_trainer(self, engine: Engine) -> None:
        # Checked again here: the process group may have been set up after this object was built.
        self.enabled = self.enabled and is_rank_zero()
        if not self.enabled:
            return
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._on_epoch)
        engine.add_event_handler(Events.COMPLETED, self._on_completed)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)
        engine.add_event_handler(Events.TERMINATE, self._on_terminate)

    def attach_evaluator(self, engine: Engine) -> None:
        if not self.enabled:
            return
        self.evaluators.append(engine)
        engine.add_event_handler(Events.COMPLETED, self._on_evaluator_completed)

    # ---- trainer events ---------------------------------------------------------------------------
    def _on_started(self, engine: Engine) -> None:
        target = resolve_tracking_uri(self.tracking_uri, self.output_dir)
        resumed = engine.state.epoch > 0
        previous = read_run_file(self.output_dir) if resumed else None
        self.output_dir.mkdir(parents=True, exist_ok=True)
        tags = self._tags(engine)
        # A misconfigured backend raises ConfigError here, before any training step.
        self.run = TrackingRun.start(
            target, self.experiment_name, run_name=self.run_name, tags=tags, run_id=previous
        )
        self.run.write_run_file(self.output_dir)
        if previous:
            logger.info("MLflow: resumed run %s at epoch %d", previous, engine.state.epoch)
        self.run.log_params(self.collect_params(engine))
        self._log_static_artifacts()

    def _on_iteration(self, engine: Engine) -> None:
        loss = loss_from_output(engine.state.output)
        if loss is None or self.run is None:
            return
        self._epoch_losses.append(loss)
        if self.loss_every > 0 and engine.state.iteration % self.loss_every == 0:
            self.run.log_metrics({"train_loss_iter": loss}, step=engine.state.iteration)

    def _on_epoch(self, engine: Engine) -> None:
        if self.run is None:
            return
        epoch = engine.state.epoch
        metrics: dict[str, float] = {}
        if self._epoch_losses:
            metrics["train_loss"] = float(np.mean(self._epoch_losses))
            self.loss_history[epoch] = metrics["train_loss"]
        self._epoch_losses = []
        lr = current_lr(engine)
        if lr is not None:
            metrics["lr"] = lr
        self.run.log_metrics(metrics, step=epoch)
        # medunet's ValidationHandler validates inside the trainer's EPOCH_COMPLETED (before this
        # handler when the tracker is attached last) and marks it with ``val_epoch``.
        if not self.evaluators and engine.state.metrics.get("val_epoch") == epoch:
            self._record_validation(epoch, self._summary(engine))
        # Update the curve after each epoch so a crashed run still has one.
        self._log_curve()

    def _on_completed(self, engine: Engine) -> None:
        if self.run is None:
            return
        self._log_end_artifacts()
        if self.log_model:
            self._log_model(engine)
        self.run.terminate("FINISHED")

    def _on_terminate(self, engine: Engine) -> None:
        logger.info("MLflow: training terminated early at epoch %d", engine.state.epoch)

    def _on_exception(self, engine: Engine, exc: BaseException) -> None:
        if self.run is not None:
            self._log_end_artifacts()
            self.run.set_tags({"medunet.error": f"{type(exc).__name__}: {str(exc)[:500]}"})
            self.run.terminate("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise exc

    # ---- validation -------------------------------------------------------------------------------
    def _on_evaluator_completed(self, engine: Engine) -> None:
        if self.run is None:
            return
        epoch = self.trainer.state.epoch if self.trainer is not None else engine.state.epoch
        self._record_validation(epoch, self._summary(engine))

    def _record_validation(self, epoch: int, summary: Mapping[str, Any] | None) -> None:
        assert self.run is not None
        if not summary:
            logger.warning("MLflow: no validation summary found at epoch %d; nothing logged", epoch)
            return
        logged = log_validation(self.run, epoch, summary, nsd=self.nsd)
        self.validation_history.append({"epoch": epoch, **logged})
        for key, value in logged.items():
            if key.startswith("val_dice_"):
                self.dice_history.setdefault(key[len("val_dice_") :], {})[epoch] = value
        self.run.log_artifact(self.metrics_csv, "validation")
        self.run.log_artifact(self.cases_csv, "validation")

    def _summary(self, engine: Engine) -> Mapping[str, Any] | None:
        if self.summary_fn is not None:
            return self.summary_fn(engine)
        summary = summary_from_state(engine.state)
        if summary is None:
            plans = self._plans()
            organs = plans.organ_names if plans is not None else _organs_from_datalist(self.datalist)
            summary = summary_from_flat_metrics(
                engine.state.metrics, organs, _epoch_rows(self.cases_csv, engine.state.epoch)
            )
        return summary

    # ---- what is recorded -------------------------------------------------------------------------
    def collect_params(self, engine: Engine | None = None) -> dict[str, str]:
        """The flattened, path-free configuration: plans, training set-up, extra params, dataset."""
        config: dict[str, Any] = {}
        plans = self._plans()
        if plans is not None:
            config["plans"] = plans.to_dict()
        if engine is not None:
            config["train"] = training_setup(engine)
        if self.params:
            config["config"] = self.params
        fp = self._fingerprint_dict()
        if fp:
            config["fingerprint"] = fingerprint_summary(fp)
        name, _ = self._dataset()
        if name:
            config["dataset"] = name
        return flatten_config(config)

    def _tags(self, engine: Engine) -> dict[str, str]:
        tags = environment_tags(device=_engine_device(engine))
        tags["medunet.run_kind"] = "training"
        bundle = read_bundle_metadata(self.bundle_metadata)
        for k, v in bundle.items():
            tags[f"medunet.bundle.{k}"] = v
        name, digest = self._dataset()
        if name:
            tags["medunet.dataset.name"] = name
        if digest:
            tags["medunet.dataset.hash"] = digest
        if self.run_name:
            tags["mlflow.runName"] = self.run_name
        return tags

    def _plans(self) -> Plans | None:
        if isinstance(self.plans, Plans):
            return self.plans
        path = Path(self.plans) if self.plans else self.output_dir / "plans.json"
        if path.is_file():
            try:
                return Plans.load(path)
            except ConfigError as exc:
                logger.warning("MLflow: %s", exc)
        return None

    def _dataset(self) -> tuple[str | None, str | None]:
        name, digest = self.dataset_name, self.dataset_hash
        if self.datalist is not None:
            name = name or getattr(self.datalist, "name", None)
            if digest is None:
                try:
                    from medunet.data.layouts import dataset_hash

                    digest = dataset_hash(self.datalist)
                except Exception as exc:
                    logger.warning("MLflow: cannot hash the dataset (%s)", exc)
            self.dataset_hash = digest
        return (strip_path(str(name)) if name else None), digest

    def _fingerprint_dict(self) -> dict[str, Any] | None:
        fp = self.fingerprint
        if fp is None:
            return None
        if isinstance(fp, str | Path):
            import json

            try:
                return json.loads(Path(fp).read_text())
            except (OSError, ValueError) as exc:
                logger.warning("MLflow: cannot read fingerprint %s (%s)", fp, exc)
                return None
        to_dict = getattr(fp, "to_dict", None)
        return to_dict() if callable(to_dict) else dict(fp)

    def _log_static_artifacts(self) -> None:
        assert self.run is not None
        for path in self.config_files:
            self.run.log_json_file_scrubbed(path, f"configs/{Path(path).name}")
        if self.params:
            self.run.log_json_scrubbed(self.params, "configs/resolved_params.json")
        fp = self._fingerprint_dict()
        if fp:
            self.run.log_json_scrubbed(fp, "fingerprint.json")
        plans = self._plans()
        if plans is not None:
            self.run.log_json_scrubbed(plans.to_dict(), "plans.json")

    def _log_curve(self) -> None:
        assert self.run is not None
        if not self.loss_history and not self.dice_history:
            return
        with tempfile.TemporaryDirectory() as tmp:
            path = training_curve_png(
                Path(tmp) / "training_curve.png",
                self.loss_history,
                self.dice_history,
                title=self.experiment_name,
            )
            self.run.log_artifact(path, "plots")

    def _log_end_artifacts(self) -> None:
        assert self.run is not None
        self._log_curve()
        self.run.log_artifact(self.metrics_csv, "validation")
        plans = self._plans()
        if self.best_checkpoint.is_file():
            self.run.log_artifact(self.best_checkpoint, "checkpoints")
            self.run.log_artifact(
                self.best_checkpoint.with_name(self.best_checkpoint.name + ".sha256"), "checkpoints"
            )
        if (self.output_dir / "plans.json").is_file() and plans is None:
            self.run.log_json_file_scrubbed(self.output_dir / "plans.json", "plans.json")

    def _log_model(self, engine: Engine) -> None:
        assert self.run is not None
        network = getattr(engine, "network", None)
        if network is None:
            logger.warning("MLflow: the trainer has no .network; model not logged")
            return
        while isinstance(getattr(network, "module", None), torch.nn.Module):  # DDP, CPU autocast
            network = network.module
        model = copy.deepcopy(network).cpu().eval()  # eval: one output, even with deep supervision
        if self.best_checkpoint.is_file():
            from medunet.errors import CheckpointError
            from medunet.training.checkpoint import load_checkpoint

            try:
                model.load_state_dict(load_checkpoint(self.best_checkpoint)["model"])
            except (CheckpointError, RuntimeError) as exc:
                logger.warning("MLflow: best checkpoint not usable (%s); logging the last weights", exc)
        plans = self._plans()
        in_channels = plans.network_in_channels if plans else 1
        spatial_dims = plans.spatial_dims if plans else 3
        sizes = _example_sizes(plans)
        self._log_previews(model, plans)
        info = log_pytorch_model(
            self.run,
            model,
            in_channels=in_channels,
            spatial_dims=spatial_dims,
            example_sizes=sizes,
            registered_model_name=self.registered_model_name or None,
            extra_files=[self.output_dir / "plans.json"],
        )
        self.model_info = info
        if info is not None:
            logger.info("MLflow: logged model %s", info.model_uri)

    def _log_previews(self, model: torch.nn.Module, plans: Plans | None) -> None:
        """Predict the first ``previews`` validation cases with the logged weights and log overlays."""
        data, inferer = getattr(self.validator, "data", None), getattr(self.validator, "inferer", None)
        if self.run is None or self.previews <= 0 or data is None or inferer is None:
            return
        try:
            with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
                for i, item in enumerate(data):
                    if i >= self.previews:
                        break
                    image = torch.as_tensor(item["image"])[None].float()
                    pred = torch.as_tensor(inferer(image, model)).argmax(1)
                    sl = preview_slices({"image": image[0], "label": item.get("label"), "pred": pred})
                    if sl is not None:
                        preview_png(
                            Path(tmp) / f"val_case_{i:02d}.png",
                            *sl,
                            num_classes=plans.num_classes if plans else None,
                            title=f"validation case {i}",
                        )
                self.run.log_artifact(tmp, "previews")
        except Exception as exc:  # previews are a convenience; never fail training for them
            logger.warning("MLflow: preview images failed (%s: %s)", type(exc).__name__, exc)


class MLflowEvaluationTracker:
    """Logs an evaluation (``evaluate.json``) to its own run, linked to the training run.

    At the evaluator's ``COMPLETED`` (attach it last, after the handler that writes the tables) it logs
    ``test_dice_<organ>``, ``test_hd95_<organ>``... from the summary, the per-case CSV and the summary
    JSON as artifacts, and the tag ``medunet.parent_training_run`` (explicit ``training_run_id``, else
    the id recorded in ``<training_dir>/mlflow_run.json``).
    """

    def __init__(
        self,
        output_dir: str | Path,
        tracking_uri: str | None = None,
        experiment_name: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        *,
        training_dir: str | Path | None = None,
        training_run_id: str | None = None,
        per_case_csv: str | Path | None = None,
        summary_json: str | Path | None = None,
        summary_fn: SummaryFn | None = None,
        dataset_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        bundle_metadata: str | Path | Mapping[str, Any] | None = None,
        prefix: str = "test",
        enabled: bool = True,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name or DEFAULT_EXPERIMENT
        self.run_name = run_name
        self.training_dir = Path(training_dir) if training_dir else self.output_dir
        self.training_run_id = training_run_id
        self.per_case_csv = Path(per_case_csv) if per_case_csv else None
        self.summary_json = Path(summary_json) if summary_json else None
        self.summary_fn = summary_fn
        self.dataset_name = dataset_name
        self.params = dict(params or {})
        self.bundle_metadata = bundle_metadata
        self.prefix = prefix
        # '--mlflow_tracker#enabled false' arrives as the string 'false' from the bundle CLI.
        self.enabled = as_bool(enabled, "enabled") and is_rank_zero()
        self.run: TrackingRun | None = None

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self._on_completed)

    def _on_completed(self, engine: Engine) -> None:
        summary = self.summary_fn(engine) if self.summary_fn else summary_from_state(engine.state)
        self.record(summary, device=_engine_device(engine))

    def record(self, summary: Mapping[str, Any] | None, *, device: str | None = None) -> TrackingRun | None:
        """Log one finished evaluation (``evaluate.json`` calls this after writing its tables).

        ``summary`` falls back to the ``summary_json`` file. Where it goes: ``tracking_uri`` >
        ``MLFLOW_TRACKING_URI`` > the server the training run was recorded on (``mlflow_run.json``
        in ``training_dir``; servers only, a local store moves with its folder) >
        ``sqlite:///<output_dir>/mlflow.db``.
        """
        if not self.enabled:
            return None
        if summary is None and self.summary_json is not None and self.summary_json.is_file():
            import json

            summary = json.loads(self.summary_json.read_text())
        parent = self.training_run_id or read_run_file(self.training_dir)
        if parent is None:
            logger.warning(
                "MLflow: no training run recorded in %s (mlflow_run.json): the evaluation run is not linked",
                self.training_dir,
            )
        self.run = log_evaluation(
            tracking_uri=self._tracking_uri(),
            output_dir=self.output_dir,
            experiment_name=self.experiment_name,
            summary=summary,
            per_case_csv=self.per_case_csv,
            summary_json=self.summary_json,
            training_run_id=parent,
            run_name=self.run_name,
            dataset_name=self.dataset_name,
            params=self.params,
            bundle_metadata=self.bundle_metadata,
            prefix=self.prefix,
            device=device,
        )
        logger.info("MLflow: evaluation run %s (training run %s)", self.run.run_id, parent)
        return self.run

    def _tracking_uri(self) -> str | None:
        if (self.tracking_uri or "").strip() or os.environ.get(ENV_TRACKING_URI, "").strip():
            return self.tracking_uri
        recorded = read_run_uri(self.training_dir)
        remote = recorded is not None and recorded.startswith(("http://", "https://"))
        return recorded if remote and "***@" not in str(recorded) else None


def log_evaluation(
    *,
    tracking_uri: str | None,
    output_dir: str | Path,
    summary: Mapping[str, Any] | None,
    experiment_name: str = DEFAULT_EXPERIMENT,
    per_case_csv: str | Path | None = None,
    summary_json: str | Path | None = None,
    training_run_id: str | None = None,
    run_name: str | None = None,
    dataset_name: str | None = None,
    params: Mapping[str, Any] | None = None,
    bundle_metadata: str | Path | Mapping[str, Any] | None = None,
    prefix: str = "test",
    device: str | None = None,
) -> TrackingRun:
    """Record one evaluation as its own finished run; returns it. Plain function: no ignite needed."""
    target = resolve_tracking_uri(tracking_uri, output_dir)
    tags = environment_tags(device=device)
    tags["medunet.run_kind"] = "evaluation"
    for k, v in read_bundle_metadata(bundle_metadata).items():
        tags[f"medunet.bundle.{k}"] = v
    if training_run_id:
        tags[PARENT_RUN_TAG] = training_run_id
    if dataset_name:
        tags["medunet.dataset.name"] = strip_path(dataset_name)
    run = TrackingRun.start(target, experiment_name, run_name=run_name, tags=tags)
    if params:
        run.log_params(flatten_config(params))
    if summary:
        run.log_metrics(summary_metrics(summary, prefix), step=0)
    if per_case_csv is not None:
        run.log_artifact(per_case_csv, "evaluation")
    if summary_json is not None:
        run.log_artifact(summary_json, "evaluation")
    run.terminate("FINISHED")
    return run


# --------------------------------------------------------------------------------------------------
# Helpers (plain functions, tested without engines where possible)
# --------------------------------------------------------------------------------------------------


def summary_from_state(state: Any) -> Mapping[str, Any] | None:
    """Find a validation summary on an engine state.

    Looks for ``state.metrics_table`` (a :class:`medunet.metrics.MetricsTable`), ``state.metrics_summary``
    (its ``summary()`` dict), then a value in ``state.metrics`` that is either of those.
    """
    candidates = [getattr(state, "metrics_table", None), getattr(state, "metrics_summary", None)]
    candidates += list(getattr(state, "metrics", {}).values())
    for c in candidates:
        summary = getattr(c, "summary", None)
        if callable(summary):
            return summary()
        if isinstance(c, Mapping) and "mean" in c:
            return c
    return None


def summary_from_flat_metrics(
    metrics: Mapping[str, Any], organs: Sequence[str], case_rows: Sequence[Mapping[str, str]] = ()
) -> dict[str, Any] | None:
    """Summary from ``val_dice_<organ>``/``val_hd95_<organ>``/``val_*_mean`` scalars (as medunet's
    ``ValidationHandler`` leaves them in ``engine.state.metrics``), completed from the epoch's per-case
    rows when given: ``nsd_mean`` (mean over cases) and ``n_hd95_nan`` (cases with undefined HD95)."""
    if "val_dice_mean" not in metrics:
        return None
    out: dict[str, Any] = {}
    for organ in organs:
        if f"val_dice_{organ}" not in metrics:
            continue
        stats: dict[str, Any] = {"dice_mean": metrics[f"val_dice_{organ}"]}
        if f"val_hd95_{organ}" in metrics:
            stats["hd95_mean"] = metrics[f"val_hd95_{organ}"]
        rows = [r for r in case_rows if r.get("organ") == organ]
        if rows:
            nsd = np.array([_to_float(r.get("nsd")) for r in rows])
            finite = nsd[np.isfinite(nsd)]
            stats["nsd_mean"] = float(finite.mean()) if finite.size else float("nan")
            stats["n_hd95_nan"] = int(sum(not np.isfinite(_to_float(r.get("hd95"))) for r in rows))
        out[organ] = stats
    mean = {k: metrics[k] for k in ("val_dice_mean", "val_hd95_mean", "val_nsd_mean") if k in metrics}
    nsd_means = [s["nsd_mean"] for s in out.values() if np.isfinite(s.get("nsd_mean", np.nan))]
    if "val_nsd_mean" not in mean and nsd_means:
        mean["val_nsd_mean"] = float(np.mean(nsd_means))
    out["mean"] = mean
    return out


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _epoch_rows(path: Path, epoch: int) -> list[dict[str, str]]:
    """Rows of a per-case CSV with an ``epoch`` column that belong to ``epoch`` (none if no file)."""
    import csv

    if not path.is_file():
        return []
    try:
        with path.open(newline="") as fh:
            return [r for r in csv.DictReader(fh) if r.get("epoch") == str(epoch)]
    except (OSError, csv.Error) as exc:
        logger.debug("cannot read %s: %s", path, exc)
        return []


def _organs_from_datalist(datalist: Any) -> list[str]:
    return list(getattr(datalist, "organ_names", []) or [])


def loss_from_output(output: Any) -> float | None:
    """The loss from a trainer's output: a number, a tensor, ``{"loss": ...}`` or a list of those
    (MONAI decollates batches into lists of dicts, each carrying the batch loss)."""
    if isinstance(output, list | tuple) and output:
        output = output[0]
    if isinstance(output, Mapping):
        output = output.get("loss")
    if isinstance(output, torch.Tensor):
        return float(output.detach().float().mean().item()) if output.numel() else None
    if isinstance(output, int | float):
        return float(output)
    return None


def current_lr(engine: Engine) -> float | None:
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is None or not optimizer.param_groups:
        return None
    return float(optimizer.param_groups[0]["lr"])


def training_setup(engine: Engine) -> dict[str, Any]:
    """Resolved training settings read from the engine itself: what actually ran."""
    out: dict[str, Any] = {"max_epochs": engine.state.max_epochs}
    network = getattr(engine, "network", None)
    if network is not None:
        network = getattr(network, "module", network)
        out["network_class"] = type(network).__name__
        out["num_parameters"] = sum(p.numel() for p in network.parameters())
    optimizer = getattr(engine, "optimizer", None)
    if optimizer is not None:
        out["optimizer"] = optimizer
    loss = getattr(engine, "loss_function", None)
    if loss is not None:
        out["loss"] = type(loss).__name__
    scheduler = getattr(engine, "lr_scheduler", None)
    if scheduler is not None:
        out["lr_scheduler"] = type(scheduler).__name__
    loader = getattr(engine, "data_loader", None) or getattr(engine.state, "dataloader", None)
    batch = getattr(loader, "batch_size", None)
    if batch is not None:
        out["batch_size"] = batch
    amp = getattr(engine, "amp", None)
    if amp is not None:
        out["amp"] = bool(amp)
    return out


def fingerprint_summary(fp: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset-level numbers of a fingerprint; per-case entries are left out."""
    out: dict[str, Any] = {}
    for key, value in fp.items():
        if isinstance(value, Mapping):
            inner = fingerprint_summary(value)
            if inner:
                out[key] = inner
        elif isinstance(value, list | tuple):
            if len(value) <= 8 and all(isinstance(v, int | float | str | bool) for v in value):
                out[key] = list(value)
        elif isinstance(value, int | float | str | bool):
            out[key] = value
    return out


def preview_slices(item: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None] | None:
    """One 2D slice of (image, reference, prediction) through the reference's largest foreground area.

    Items are decollated evaluator outputs with ``image`` (C, *spatial), ``label`` and ``pred`` (one
    channel label map, or C channels of one-hot/probabilities, which are argmax'ed).
    """
    image = _array(item.get("image"))
    if image is None:
        return None
    img = image[0] if image.ndim > 2 else image
    ref, pred = _labelmap(item.get("label")), _labelmap(item.get("pred"))
    if img.ndim == 3:
        k = best_slice(ref) if ref is not None and ref.shape == img.shape else img.shape[-1] // 2
        pick = lambda a: None if a is None or a.shape != img.shape else a[..., k]  # noqa: E731
        return img[..., k].astype(np.float32), pick(ref), pick(pred)
    same = lambda a: a if a is not None and a.shape == img.shape else None  # noqa: E731
    return img.astype(np.float32), same(ref), same(pred)


def _array(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _labelmap(x: Any) -> np.ndarray | None:
    a = _array(x)
    if a is None:
        return None
    if a.ndim >= 3 and a.shape[0] > 1:
        return a.argmax(axis=0).astype(np.int32)
    if a.ndim >= 3 and a.shape[0] == 1:
        a = a[0]
    return np.rint(a).astype(np.int32)


def _engine_device(engine: Engine) -> str | None:
    device = getattr(engine, "device", None) or getattr(engine.state, "device", None)
    if device is None:
        network = getattr(engine, "network", None)
        param = next(iter(network.parameters()), None) if network is not None else None
        device = param.device if param is not None else None
    return str(device) if device is not None else None


def _example_sizes(plans: Plans | None) -> list[tuple[int, ...]]:
    if plans is None:
        return [(16, 16, 16), (32, 32, 32), (64, 64, 64)]
    sizes: list[tuple[int, ...]] = []
    try:
        from medunet.networks import patch_divisor

        div = patch_divisor(plans.network, plans.spatial_dims, **plans.network_kwargs)
        sizes.append(tuple(min(int(d), int(p)) for d, p in zip(div, plans.patch_size, strict=True)))
        sizes.append(tuple(min(2 * int(d), int(p)) for d, p in zip(div, plans.patch_size, strict=True)))
    except Exception:  # unknown network or networks module unavailable: fall back to the patch
        pass
    sizes.append(tuple(int(p) for p in plans.patch_size))
    return sizes
