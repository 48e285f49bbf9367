"""Ignite handlers the bundle's ``train#handlers`` list composes.

Each handler has an ``attach(engine)`` method (MONAI's handler convention), so adding one (e.g. an
MLflow handler) is a one-line edit of the JSON list. Order matters where handlers share an event:
``ValidationHandler`` before ``Checkpointer`` (best.pt needs this epoch's score) before
``EarlyStopping``. In DDP only rank 0 validates, logs and writes files.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from medunet.config import as_bool
from medunet.errors import CheckpointError
from medunet.io.atomic import atomic_write_text
from medunet.plans import Plans
from medunet.training.checkpoint import load_checkpoint, save_checkpoint
from medunet.training.environment import TrainingEnv
from medunet.training.state import find_resume_checkpoint, rng_state, set_rng_state
from medunet.training.validation import Validator

logger = logging.getLogger(__name__)

#: The metric that selects ``best.pt`` and drives early stopping.
KEY_METRIC = "val_dice_mean"


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The bare network inside a DDP / DataParallel wrapper."""
    return network.module if hasattr(network, "module") else network


class EpochSeeder:
    """Reseed the training transforms at every epoch from ``(seed, epoch, rank)``.

    Augmentation of epoch *n* then depends on nothing that happened before it, so a resumed run
    draws the same patches as an uninterrupted one.
    """

    def __init__(self, dataset: Any, env: TrainingEnv) -> None:
        self.transform = getattr(dataset, "transform", None)
        self.env = env

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            seed = (self.env.seed * 1_000_003 + engine.state.epoch * 101 + self.env.rank) % (2**32)
            self.transform.set_random_state(seed=seed)


class TrainLogger:
    """One log line per epoch: mean loss, learning rate, time per epoch and the estimated time left."""

    def __init__(self, optimizer: torch.optim.Optimizer, env: TrainingEnv) -> None:
        self.optimizer = optimizer
        self.env = env
        self._losses: list[float] = []
        self._t0 = 0.0
        self._epoch_times: list[float] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch)

    def _start(self, engine: Engine) -> None:
        self._losses.clear()
        self._t0 = time.perf_counter()

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        loss = output.get("loss") if isinstance(output, dict) else output
        if loss is not None:
            self._losses.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss))

    def _epoch(self, engine: Engine) -> None:
        dt = time.perf_counter() - self._t0
        self._epoch_times.append(dt)
        mean_loss = sum(self._losses) / max(1, len(self._losses))
        engine.state.metrics["train_loss"] = mean_loss
        engine.state.metrics["lr"] = float(self.optimizer.param_groups[0]["lr"])
        left = (engine.state.max_epochs - engine.state.epoch) * (
            sum(self._epoch_times) / len(self._epoch_times)
        )
        logger.info(
            "epoch %d/%d: loss %.4f, lr %.2e, %.1fs/epoch, ~%.1f min left",
            engine.state.epoch,
            engine.state.max_epochs,
            mean_loss,
            engine.state.metrics["lr"],
            dt,
            left / 60,
        )


class ValidationHandler:
    """Validate every ``interval`` epochs (and after the last), log, and append to the metrics CSVs.

    Scores go into ``engine.state.metrics`` (``val_dice_mean``, ``val_hd95_mean``,
    ``val_dice_<organ>``, ``val_hd95_<organ>``) so other handlers (checkpointing, tracking) read
    them. ``<output_dir>/metrics.csv`` gets one row per validation, ``val_cases.csv`` one row per
    case and organ.
    """

    def __init__(
        self,
        validator: Validator,
        network: torch.nn.Module,
        output_dir: str | Path,
        env: TrainingEnv,
        interval: int = 1,
    ) -> None:
        self.validator = validator
        self.network = unwrap(network)
        self.output_dir = Path(output_dir)
        self.env = env
        self.interval = max(1, int(interval))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        if not hasattr(engine.state, "best_metric") or engine.state.best_metric is None:
            engine.state.best_metric = -math.inf
            engine.state.best_metric_epoch = -1

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch % self.interval and epoch != engine.state.max_epochs:
            return
        if not self.env.is_main:
            return
        t0 = time.perf_counter()
        table = self.validator.run(self.network)
        summary = table.summary()
        organs = [k for k in summary if k != "mean"]
        metrics: dict[str, float] = {
            KEY_METRIC: summary["mean"]["val_dice_mean"],
            "val_hd95_mean": summary["mean"]["val_hd95_mean"],
        }
        for organ in organs:
            metrics[f"val_dice_{organ}"] = summary[organ]["dice_mean"]
            metrics[f"val_hd95_{organ}"] = summary[organ]["hd95_mean"]
        engine.state.metrics.update(metrics)
        engine.state.metrics_table = table  # the full per-case table, for tracking handlers
        engine.state.metrics["val_epoch"] = epoch
        if metrics[KEY_METRIC] > engine.state.best_metric:
            engine.state.best_metric = metrics[KEY_METRIC]
            engine.state.best_metric_epoch = epoch
        logger.info(
            "validation epoch %d (%.1fs): mean Dice %.4f, mean HD95 %.2f mm (best %.4f @ epoch %d) | %s",
            epoch,
            time.perf_counter() - t0,
            metrics[KEY_METRIC],
            metrics["val_hd95_mean"],
            engine.state.best_metric,
            engine.state.best_metric_epoch,
            ", ".join(f"{o} {summary[o]['dice_mean']:.3f}" for o in organs),
        )
        row = {
            "epoch": epoch,
            "iteration": engine.state.iteration,
            "train_loss": engine.state.metrics.get("train_loss", math.nan),
            "lr": engine.state.metrics.get("lr", math.nan),
            **metrics,
        }
        _append_csv(self.output_dir / "metrics.csv", [row])
        _append_csv(self.output_dir / "val_cases.csv", [{"epoch": epoch, **r} for r in table.rows()])


class Checkpointer:
    """Full training state to ``<output_dir>``: rolling ``epoch_NNNN.pt``, ``best.pt``, ``last.pt``.

    * every ``interval`` epochs: ``epoch_NNNN.pt``; only the newest ``keep_last`` are kept, and an
      old one is deleted only after the new one is complete (payload and checksum);
    * when validation improves ``val_dice_mean``: ``best.pt``;
    * when training completes: ``last.pt``.

    ``init_from`` (fine-tuning) loads only the network weights of another checkpoint at the start of
    a fresh run; its plans must match this run's (same labels and network).

    Every file holds model, optimizer, scheduler, AMP scaler, epoch, iteration, best metric, RNG
    states and plans. With ``resume`` the newest *valid* checkpoint is loaded when training starts
    and the epoch count continues from it.
    """

    def __init__(
        self,
        output_dir: str | Path,
        plans: Plans,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        env: TrainingEnv,
        lr_scheduler: Any = None,
        resume: bool = False,
        interval: int = 1,
        keep_last: int = 2,
        init_from: str | Path | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.plans = plans
        self.network = unwrap(network)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.env = env
        self.resume = as_bool(resume, "resume")
        self.interval = max(1, int(interval))
        self.keep_last = max(1, int(keep_last))
        self.init_from = Path(init_from) if init_from else None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._maybe_resume)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    # ------------------------------------------------------------------------------------ saving
    def state(self, engine: Engine) -> dict[str, Any]:
        scaler = getattr(engine, "scaler", None)
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "scaler": None if scaler is None else scaler.state_dict(),
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "best_metric": float(getattr(engine.state, "best_metric", -math.inf)),
            "best_metric_epoch": int(getattr(engine.state, "best_metric_epoch", -1)),
            "rng": rng_state(),
            "plans": self.plans.to_dict(),
        }

    def _epoch_completed(self, engine: Engine) -> None:
        if not self.env.is_main:
            return
        epoch = engine.state.epoch
        state = None
        if epoch % self.interval == 0 or epoch == engine.state.max_epochs:
            state = self.state(engine)
            path = save_checkpoint(self.output_dir / f"epoch_{epoch:04d}.pt", state)
            logger.debug("saved %s", path)
            self._prune()
        if getattr(engine.state, "best_metric_epoch", -1) == epoch:
            save_checkpoint(self.output_dir / "best.pt", state or self.state(engine))
            logger.info("new best %s %.4f: saved best.pt", KEY_METRIC, engine.state.best_metric)

    def _completed(self, engine: Engine) -> None:
        if self.env.is_main:
            save_checkpoint(self.output_dir / "last.pt", self.state(engine))
            logger.info("training done after epoch %d: %s", engine.state.epoch, self.output_dir / "last.pt")

    def _prune(self) -> None:
        ring = sorted(self.output_dir.glob("epoch_[0-9][0-9][0-9][0-9].pt"))
        for old in ring[: -self.keep_last]:
            old.unlink(missing_ok=True)
            old.with_name(old.name + ".sha256").unlink(missing_ok=True)

    # ----------------------------------------------------------------------------------- resuming
    def _maybe_resume(self, engine: Engine) -> None:
        if not self.resume:
            if self.env.is_main:
                self._clear_previous_run()
            if self.init_from is not None:
                self._init_weights(self.init_from)
            return
        for tmp in self.output_dir.glob(".*.tmp*"):  # debris of a write that was killed
            tmp.unlink(missing_ok=True)
        found = find_resume_checkpoint(self.output_dir)
        if found is None:
            logger.warning("resume: no valid checkpoint in %s; starting from scratch", self.output_dir)
            return
        path, state = found
        self.load_state(engine, state, path)
        if self.env.is_main:  # drop rows a killed run logged after its last checkpoint
            for name in ("metrics.csv", "val_cases.csv"):
                _truncate_csv(self.output_dir / name, engine.state.epoch)
        logger.info(
            "resumed from %s: epoch %d, iteration %d", path, engine.state.epoch, engine.state.iteration
        )

    def _init_weights(self, path: Path) -> None:
        """Fine-tuning: start from another run's weights (optimizer, schedule and epochs start fresh)."""
        state = load_checkpoint(path)
        try:
            self.network.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                path, f"weights do not fit this run's network: {str(exc).splitlines()[0]}"
            ) from None
        logger.info("initialised the network from %s (epoch %s of that run)", path, state.get("epoch"))

    def _clear_previous_run(self) -> None:
        """A fresh run in a used directory: drop the old run's resume points and metric logs."""
        old = [
            *self.output_dir.glob("epoch_[0-9][0-9][0-9][0-9].pt"),
            self.output_dir / "metrics.csv",
            self.output_dir / "val_cases.csv",
        ]
        old = [p for p in old if p.exists()]
        if old:
            logger.warning(
                "%s holds an earlier run: starting fresh (use resume=true to continue it)", self.output_dir
            )
        for p in old:
            p.unlink(missing_ok=True)
            p.with_name(p.name + ".sha256").unlink(missing_ok=True)

    def load_state(self, engine: Engine, state: dict[str, Any], path: Path) -> None:
        try:
            self.network.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(path, f"does not fit this run's network/optimizer: {exc}") from None
        if self.lr_scheduler is not None and state.get("scheduler") is not None:
            self.lr_scheduler.load_state_dict(state["scheduler"])
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        engine.state.epoch = int(state["epoch"])
        engine.state.iteration = int(state["iteration"])
        engine.state.best_metric = float(state.get("best_metric", -math.inf))
        engine.state.best_metric_epoch = int(state.get("best_metric_epoch", -1))
        set_rng_state(state["rng"])


class EarlyStopping:
    """Stop when ``val_dice_mean`` has not improved for ``patience`` epochs (0 disables).

    Rank 0 decides and broadcasts the decision, so all DDP ranks stop at the same epoch.
    """

    def __init__(self, patience: int, env: TrainingEnv) -> None:
        self.patience = int(patience or 0)
        self.env = env

    def attach(self, engine: Engine) -> None:
        if self.patience > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        best_epoch = getattr(engine.state, "best_metric_epoch", -1)
        stop = best_epoch >= 0 and engine.state.epoch - best_epoch >= self.patience
        if self.env.distributed and dist.is_initialized():
            flag = torch.tensor(
                [int(stop)], device=self.env.device if self.env.device.type == "cuda" else "cpu"
            )
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        if stop:
            logger.info(
                "early stopping: no improvement for %d epochs (best at epoch %d)", self.patience, best_epoch
            )
            engine.terminate()


def _truncate_csv(path: Path, max_epoch: int) -> None:
    """Keep the header and the complete rows whose ``epoch`` is at most ``max_epoch`` (atomically).

    A last line without its newline is a row that was being written when the process died: it is
    dropped whatever it holds (a row cut after ``1`` of ``12`` would otherwise read as epoch 1, and the
    next row appended would be glued to it), as is any row with missing or extra fields or an epoch
    that is not a number.
    """
    if not path.is_file():
        return
    text = path.read_text()
    torn = bool(text) and not text.endswith("\n")
    if torn:
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text))
    rows = list(reader)
    kept = [r for r in rows if (epoch := _row_epoch(r)) is not None and epoch <= max_epoch]
    if not torn and len(kept) == len(rows):
        return
    if not kept or reader.fieldnames is None:
        path.unlink()
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=reader.fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(kept)
    atomic_write_text(path, buf.getvalue())


def _row_epoch(row: dict[str | None, Any]) -> int | None:
    """The row's epoch, or ``None`` for a damaged row (fields missing or extra, epoch not a number)."""
    if None in row or None in row.values():
        return None
    try:
        return int(row["epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def _append_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows (rewriting the file atomically; these files stay small)."""
    if not rows:
        return
    old = path.read_text() if path.is_file() else ""
    fields = list(rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n", extrasaction="ignore")
    if not old:
        writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    atomic_write_text(path, old + buf.getvalue())
