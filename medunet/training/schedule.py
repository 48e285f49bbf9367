"""Plan the training schedule from a wall-clock budget: epochs, LR schedule length, validation cadence.

With ``time_budget_min`` set, a few real training iterations are timed on the actual model, loss,
optimiser and data (their state is restored afterwards), one validation case is timed, and the
number of epochs is the largest that fits what is left of the budget after setup, validation and
the closing post-processing choice. The LR schedule is planned over exactly those iterations, so
the cosine decay ends where the run does (a run that is merely cut off at the budget would end at
a high learning rate). :class:`TimeBudgetGuard` stops a run that overruns anyway (a slower machine
than measured); the plan is saved in ``schedule.json`` and reused on ``--resume``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medunet.config import as_bool
from medunet.errors import ConfigError
from medunet.io.atomic import atomic_write_text
from medunet.training.environment import TrainingEnv

logger = logging.getLogger(__name__)

#: Validations per budgeted run (best-checkpoint choice needs a few; each costs a full pass).
TARGET_VALIDATIONS = 5
#: Largest share of the usable training time that validation passes may take.
MAX_VALIDATION_FRACTION = 0.15
#: Iterations timed after 2 untimed warm-up iterations.
TIMED_ITERATIONS = 5
#: Smallest change of the planned epochs (as a fraction of the plan) for which a run re-plans.
REPLAN_MIN_FRACTION = 0.1
#: Fraction of the budget kept free for what the measurement cannot see (loader hiccups, GC, load).
SAFETY_FRACTION = 0.05
#: Fewer epochs than this get a warning with the budget that would allow them: on real head-and-neck
#: CT (bundles/ct_organs/README.md#results) the rarely contoured organs emerged on the run's own
#: validation cases only after 15-20 epochs, and a 7-epoch run never found the esophagus.
SHORT_RUN_EPOCHS = 20
#: ``time_budget_min: "auto"`` (the bundle's default): :data:`AUTO_MIN_MINUTES`, extended to the budget
#: that plans :data:`SHORT_RUN_EPOCHS` epochs at the measured pace, at most :data:`AUTO_MAX_MINUTES`.
#: The synthetic card set fits 20 epochs in far less than 10 minutes (it keeps 10); the 184 real
#: OpenKBP training cases on 2 CPU cores need about 25 (10 minutes gave 7 epochs and mean Dice 0.481,
#: 25 gave 0.683: bundles/ct_organs/README.md).
AUTO_BUDGET = "auto"
AUTO_MIN_MINUTES = 10
AUTO_MAX_MINUTES = 60


@dataclass(frozen=True)
class Schedule:
    """How long the run trains and how often it validates, with the numbers that decided it."""

    max_epochs: int
    val_interval: int
    steps_per_epoch: int
    time_budget_min: float | None = None
    #: The ``max_epochs`` asked for (a cap under a budget); with the budget, what resume compares.
    requested_max_epochs: int | None = None
    seconds_per_iteration: float | None = None
    seconds_per_validation: float | None = None
    setup_seconds: float | None = None
    reason: str = ""
    #: ``"auto"`` when the budget was sized from the data (:func:`auto_budget_minutes`), else ``None``;
    #: with ``requested_max_epochs``, what a resumed run compares.
    budget_request: str | None = None

    @property
    def total_iterations(self) -> int:
        return self.max_epochs * self.steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_iterations": self.total_iterations}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**fields)


def plan_epochs(
    budget_s: float,
    setup_s: float,
    s_per_iteration: float,
    steps_per_epoch: int,
    s_per_validation: float,
    reserve_s: float = 0.0,
    target_validations: int = TARGET_VALIDATIONS,
    epoch_overhead_s: float = 0.0,
) -> tuple[int, int, str]:
    """The arithmetic of the plan: ``(max_epochs, val_interval, reason)``. Pure, so tests pin it.

    Training time = budget - setup - reserve - safety margin; each epoch costs ``steps_per_epoch``
    iterations plus its share of the validations (about ``target_validations`` in all, one of them
    after the last epoch).
    """
    if budget_s <= 0 or s_per_iteration <= 0 or steps_per_epoch <= 0:
        raise ConfigError(None, "time budget, iteration time and steps per epoch must be positive")
    usable = budget_s * (1.0 - SAFETY_FRACTION) - setup_s - reserve_s
    # Each epoch also pays a checkpoint write and a loader restart (20 % of a short synthetic epoch).
    epoch_s = steps_per_epoch * s_per_iteration + max(0.0, epoch_overhead_s)
    s_val = max(0.0, s_per_validation)
    # Validation may take at most MAX_VALIDATION_FRACTION of the training time: with many or large
    # validation cases on a short budget, validate fewer times rather than train less (at least
    # once, after the last epoch).
    if s_val > 0:
        fitting = int(MAX_VALIDATION_FRACTION * max(0.0, usable) // s_val)
        target_validations = max(1, min(target_validations, fitting))
    validations_s = target_validations * s_val
    epochs = int((usable - validations_s) // epoch_s) if usable > validations_s else 0
    if epochs < target_validations:  # few epochs: validate less often, not the whole budget away
        epochs = int((usable - s_val) // epoch_s) if usable > s_val else 0
    epochs = max(1, epochs)
    interval = max(1, math.ceil(epochs / target_validations))
    reason = (
        f"{budget_s / 60:.1f} min budget: {setup_s:.0f} s setup + {reserve_s:.0f} s reserved; "
        f"{s_per_iteration:.3f} s/iteration x {steps_per_epoch} iterations/epoch "
        f"+ {epoch_overhead_s:.2f} s/epoch; "
        f"{s_per_validation:.1f} s/validation every {interval} epochs -> {epochs} epochs "
        f"({epochs * steps_per_epoch} iterations)"
    )
    return epochs, interval, reason


def minutes_for_epochs(
    epochs: int,
    setup_s: float,
    s_per_iteration: float,
    steps_per_epoch: int,
    s_per_validation: float,
    reserve_s: float = 0.0,
    epoch_overhead_s: float = 0.0,
) -> int:
    """The smallest whole-minute budget for which :func:`plan_epochs` plans at least ``epochs`` (at most
    a day). Pure: the inverse of the planner's own arithmetic."""
    minutes = 1
    while minutes < 24 * 60:
        planned, _, _ = plan_epochs(
            minutes * 60,
            setup_s,
            s_per_iteration,
            steps_per_epoch,
            s_per_validation,
            reserve_s,
            epoch_overhead_s=epoch_overhead_s,
        )
        if planned >= epochs:
            break
        minutes += 1
    return minutes


def auto_budget_minutes(*pace: float) -> tuple[int, str]:
    """``(minutes, why)`` for ``time_budget_min: "auto"``: :data:`AUTO_MIN_MINUTES`, or the budget that
    plans :data:`SHORT_RUN_EPOCHS` epochs at this pace when that is longer, at most
    :data:`AUTO_MAX_MINUTES`. ``pace``: :func:`minutes_for_epochs`'s arguments after ``epochs``
    (setup_s, s_per_iteration, steps_per_epoch, s_per_validation[, reserve_s, epoch_overhead_s])."""
    need = minutes_for_epochs(SHORT_RUN_EPOCHS, *pace)  # type: ignore[arg-type]
    minutes = min(AUTO_MAX_MINUTES, max(AUTO_MIN_MINUTES, need))
    if need <= AUTO_MIN_MINUTES:
        why = f"auto budget {minutes} min: {SHORT_RUN_EPOCHS} epochs fit in {AUTO_MIN_MINUTES} at this pace"
    elif need <= AUTO_MAX_MINUTES:
        why = f"auto budget {minutes} min: what {SHORT_RUN_EPOCHS} epochs need at this pace"
    else:
        why = (
            f"auto budget {minutes} min: the most auto gives ({SHORT_RUN_EPOCHS} epochs would need "
            f"{need}; set --time_budget_min)"
        )
    return minutes, why


def short_run_advice(epochs: int, *pace: float) -> str | None:
    """``None`` for a plan of at least :data:`SHORT_RUN_EPOCHS` epochs, else what the user should know:
    the whole minutes of budget that :func:`plan_epochs` needs at this pace for that many epochs
    (``pace``: :func:`minutes_for_epochs`'s arguments after ``epochs``)."""
    if epochs >= SHORT_RUN_EPOCHS:
        return None
    minutes = minutes_for_epochs(SHORT_RUN_EPOCHS, *pace)  # type: ignore[arg-type]
    return (
        f"short run: {epochs} epochs; rarely contoured organs of real CT needed 15-20 epochs, and "
        f"{SHORT_RUN_EPOCHS} epochs need about --time_budget_min {minutes} at this pace"
    )


def time_training_iterations(
    network: torch.nn.Module,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loader: Any,
    prepare_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    amp: bool = False,
    iterations: int = TIMED_ITERATIONS,
) -> float:
    """Seconds per training iteration, measured on the real pipeline; every state is restored.

    Loading and augmenting the batch is part of the time (the trainer pays it too). Model,
    optimiser and all RNG states are put back, so the run itself is the one it would have been.
    """
    model_state = copy.deepcopy(network.state_dict())
    opt_state = copy.deepcopy(optimizer.state_dict())
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    network.train()
    times: list[float] = []
    try:
        batches = iter(loader)
        for i in range(2 + iterations):
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            image, label = prepare_batch(batch, device)
            optimizer.zero_grad(set_to_none=True)
            dtype = (
                torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
            )
            ctx = torch.autocast(device.type, dtype=dtype, enabled=bool(amp))
            with ctx:
                loss = loss_function(network(image), label)
            loss.backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= 2:
                times.append(time.perf_counter() - t0)
    finally:
        network.load_state_dict(model_state)
        optimizer.load_state_dict(opt_state)
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return float(np.median(times))


def plan_schedule(
    env: TrainingEnv,
    output_dir: str | Path,
    steps_per_epoch: int,
    max_epochs: int | str | None = None,
    val_interval: int = 10,
    time_budget_min: float | str | None = None,
    *,
    network: torch.nn.Module | None = None,
    loss_function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    loader: Any = None,
    prepare_batch: Callable[..., tuple[torch.Tensor, torch.Tensor]] | None = None,
    validator: Any = None,
    amp: bool = False,
    resume: bool | str = False,
    reserve_s: float = 0.0,
) -> Schedule:
    """The run's schedule: the fixed ``max_epochs``/``val_interval``, or one planned from the budget.

    ``time_budget_min`` (minutes, wall clock from the start of the process; ``None``/``0``/``"null"``
    turn it off; ``"auto"`` sizes it from the data, :func:`auto_budget_minutes`) plans the epochs and
    the validation cadence. ``max_epochs`` is then a cap: a run
    asked for 4 epochs trains 4 even when the budget would allow 400 (and its LR schedule spans those
    4). Without a budget ``max_epochs`` is required. Resuming the same request reuses
    ``schedule.json`` so the LR schedule does not move. Under DDP every rank plans the same numbers
    (rank 0 measures and broadcasts).
    """
    path = Path(output_dir) / "schedule.json"
    steps_per_epoch = max(1, int(steps_per_epoch))
    auto = isinstance(time_budget_min, str) and time_budget_min.strip().lower() == AUTO_BUDGET
    budget = None if auto else _optional_positive(time_budget_min, "time_budget_min")
    cap = _optional_positive(max_epochs, "max_epochs")
    cap = None if cap is None else int(cap)
    if as_bool(resume, "resume") and path.is_file():
        saved = Schedule.from_dict(json.loads(path.read_text()))
        # Same request as the saved run: keep its plan, so the LR schedule does not move. A new
        # budget or a new max_epochs (training longer) is planned afresh.
        same_budget = (
            saved.budget_request == AUTO_BUDGET
            if auto
            else (saved.budget_request is None and saved.time_budget_min == budget)
        )
        if same_budget and saved.requested_max_epochs == cap:
            logger.info("resume: reusing the saved schedule (%d epochs)", saved.max_epochs)
            return saved
    if budget is None and not auto:
        if cap is None:
            raise ConfigError(None, "set time_budget_min (minutes) or max_epochs: both are off")
        schedule = Schedule(
            cap,
            max(1, int(val_interval)),
            steps_per_epoch,
            requested_max_epochs=cap,
            reason="fixed max_epochs (no time budget)",
        )
    else:
        if (
            network is None
            or loss_function is None
            or optimizer is None
            or loader is None
            or prepare_batch is None
        ):
            raise ConfigError(
                None, "a time budget needs the network, loss, optimizer, loader and batch preparation"
            )
        s_iter = time_training_iterations(
            network, loss_function, optimizer, loader, prepare_batch, env.device, amp
        )
        s_val = _time_validation(validator, network)
        overhead_s = s_iter + _time_checkpoint_write(network, optimizer)  # loader restart + checkpoint
        setup_s = env.elapsed_s()
        # Reserved after training: choosing post-processing predicts the validation cases once more.
        sized = ""
        if auto:
            budget, sized = auto_budget_minutes(
                setup_s, s_iter, steps_per_epoch, s_val, reserve_s + s_val, overhead_s
            )
            budget = float(budget)
        epochs, interval, reason = plan_epochs(
            budget * 60,
            setup_s,
            s_iter,
            steps_per_epoch,
            s_val,
            reserve_s + s_val,
            epoch_overhead_s=overhead_s,
        )
        if cap is not None and epochs > cap:
            reason += f"; capped at max_epochs {cap}"
            epochs = cap
            interval = max(1, math.ceil(epochs / TARGET_VALIDATIONS))
        advice = None
        if cap is None:  # a capped run asked for its epochs: no advice
            advice = short_run_advice(
                epochs, setup_s, s_iter, steps_per_epoch, s_val, reserve_s + s_val, overhead_s
            )
        if advice:
            reason += f"; {advice}"
            logger.warning("schedule: %s", advice)
        if sized:
            reason = f"{sized}; {reason}"
        schedule = Schedule(
            epochs,
            interval,
            steps_per_epoch,
            budget,
            cap,
            s_iter,
            s_val,
            setup_s,
            reason,
            AUTO_BUDGET if auto else None,
        )
        schedule = _broadcast(schedule, env)
    logger.info("schedule: %s", schedule.reason)
    if env.is_main:
        atomic_write_text(path, json.dumps(schedule.to_dict(), indent=2) + "\n")
    return schedule


def _optional_positive(value: float | str | None, key: str) -> float | None:
    """A positive number, or ``None`` for the spellings of "off" (None, 0, "null", "none", "")."""
    if value is None or isinstance(value, bool) and not value:
        return None
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "null", "0", "false", "off"):
            return None
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(None, f"{key} must be a number or null, got {value!r}") from None
    number = float(value)
    if number == 0:
        return None
    if number < 0 or not math.isfinite(number):
        raise ConfigError(None, f"{key} must be positive, got {value!r}")
    return number


def _time_checkpoint_write(network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> float:
    """Seconds to write the model and optimiser state once (every epoch writes a resume point)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        torch.save(
            {"model": network.state_dict(), "optimizer": optimizer.state_dict()}, Path(tmp) / "probe.pt"
        )
        return time.perf_counter() - t0


def _time_validation(validator: Any, network: torch.nn.Module) -> float:
    """Seconds for one full validation pass, from timing its first case."""
    if validator is None:
        return 0.0
    data = list(getattr(validator, "data", []) or [])
    if not data:
        return 0.0
    probe = copy.copy(validator)
    probe.data = data[:1]
    t0 = time.perf_counter()
    probe.run(network)
    return (time.perf_counter() - t0) * len(data)


def _broadcast(schedule: Schedule, env: TrainingEnv) -> Schedule:
    if not env.distributed:
        return schedule
    import torch.distributed as dist

    box = [schedule.to_dict() if env.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return Schedule.from_dict(box[0])  # type: ignore[arg-type]


def replan_epochs(
    epoch: int,
    budget_s: float,
    elapsed_s: float,
    s_per_epoch: float,
    s_per_validation: float,
    val_interval: int,
    cap: int | None = None,
) -> int:
    """Total epochs that fit the budget, seen from the end of ``epoch`` at ``elapsed_s``. Pure.

    Each further epoch costs ``s_per_epoch``; validations come every ``val_interval`` epochs and after
    the last; one more validation-sized pass is kept for the closing post-processing choice. At least
    one more epoch (the guard stops a run that then overruns), at most ``cap``.
    """
    usable = budget_s * (1.0 - SAFETY_FRACTION) - elapsed_s - s_per_validation
    interval = max(1, int(val_interval))
    extra = 0
    while cap is None or epoch + extra < cap:
        end = epoch + extra + 1
        validations = sum(1 for e in range(epoch + 1, end + 1) if e % interval == 0)
        validations += 0 if end % interval == 0 else 1
        if (extra + 1) * s_per_epoch + validations * s_per_validation > usable:
            break
        extra += 1
    return epoch + max(1, extra)


class TimeBudgetGuard:
    """Keep a budgeted run inside its budget and make it use the budget.

    The plan is made from a few iterations timed at the start; a machine that was busy then (or gets
    busy later) makes it wrong. After every epoch the guard measures the real pace (training time per
    epoch, checkpoint and loader overhead, validation time) and re-plans the number of epochs when it
    differs by at least :data:`REPLAN_MIN_FRACTION` of the plan, longer or shorter. The LR decay is
    re-targeted to the new end from where it is (no jump; ``lr_scheduler``) and ``schedule.json``
    rewritten, so a resumed run continues the new plan. As a safety net it stops a run once the wall clock passes the
    budget. Without ``lr_scheduler`` it only stops (no re-planning).
    """

    def __init__(
        self,
        schedule: Schedule,
        env: TrainingEnv,
        lr_scheduler: torch.optim.lr_scheduler.LambdaLR | None = None,
        output_dir: str | Path | None = None,
    ) -> None:
        self.schedule = schedule
        self.env = env
        self.lr_scheduler = lr_scheduler
        self.output_dir = None if output_dir is None else Path(output_dir)
        self._epoch_started: float | None = None
        self._last_iteration: float | None = None
        self._last_epoch_end: float | None = None
        self._train_s: list[float] = []
        self._overhead_s: list[float] = []
        self._validation_s: float | None = None

    def attach(self, engine: Engine) -> None:
        if not self.schedule.time_budget_min:
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if self.lr_scheduler is not None:
            engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_start)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._replan)

    def __call__(self, engine: Engine) -> None:
        self._last_iteration = self.env.elapsed_s()
        budget_s = float(self.schedule.time_budget_min or 0) * 60
        if budget_s and self._last_iteration > budget_s:
            logger.warning(
                "time budget of %.1f min reached at epoch %d iteration %d: stopping",
                budget_s / 60,
                engine.state.epoch,
                engine.state.iteration,
            )
            engine.terminate()

    def _epoch_start(self, engine: Engine) -> None:
        now = self.env.elapsed_s()
        if self._last_epoch_end is not None:  # checkpoint writing, loader restart, other handlers
            self._overhead_s.append(max(0.0, now - self._last_epoch_end))
        self._epoch_started = now

    def _replan(self, engine: Engine) -> None:
        now = self.env.elapsed_s()
        started, last_iteration = self._epoch_started, self._last_iteration
        self._last_epoch_end = now
        if started is None or last_iteration is None or last_iteration < started:
            return
        self._train_s.append(last_iteration - started)
        epoch, planned = int(engine.state.epoch), int(engine.state.max_epochs)
        interval = max(1, self.schedule.val_interval)
        if epoch % interval == 0 or epoch == planned:  # validation ran in this epoch's handlers
            self._validation_s = max(0.0, now - last_iteration)
        if epoch >= planned or engine.should_terminate or len(self._train_s) < 2:
            return  # one epoch (with the loader warming up) is too little to judge the pace
        s_epoch = float(np.median(self._train_s[-3:]))
        s_epoch += float(np.median(self._overhead_s[-3:])) if self._overhead_s else 0.0
        s_val = self._validation_s if self._validation_s is not None else self.schedule.seconds_per_validation
        budget_s = float(self.schedule.time_budget_min or 0) * 60
        new = replan_epochs(
            epoch, budget_s, now, s_epoch, s_val or 0.0, interval, self.schedule.requested_max_epochs
        )
        new = self._agree(new)
        if abs(new - planned) < max(1, math.ceil(REPLAN_MIN_FRACTION * planned)):
            return
        self._apply(engine, epoch, planned, new, s_epoch, s_val or 0.0)

    def _agree(self, epochs: int) -> int:
        """Every rank takes rank 0's number (their clocks differ slightly)."""
        if not self.env.distributed:
            return epochs
        import torch.distributed as dist

        box = [epochs]
        dist.broadcast_object_list(box, src=0)
        return int(box[0])

    def _apply(
        self, engine: Engine, epoch: int, planned: int, new: int, s_epoch: float, s_val: float
    ) -> None:
        engine.state.max_epochs = new
        steps = self.schedule.steps_per_epoch
        for fn in self.lr_scheduler.lr_lambdas if self.lr_scheduler is not None else []:
            if hasattr(fn, "retarget"):
                fn.retarget(int(engine.state.iteration), new * steps)
        reason = (
            f"re-planned after epoch {epoch} at {self.env.elapsed_s() / 60:.1f} min: measured "
            f"{s_epoch:.1f} s/epoch and {s_val:.1f} s/validation -> {new} epochs (was {planned})"
        )
        logger.info("schedule: %s", reason)
        self.schedule = replace(self.schedule, max_epochs=new, reason=f"{self.schedule.reason}; {reason}")
        if self.output_dir is not None and self.env.is_main:
            path = self.output_dir / "schedule.json"
            atomic_write_text(path, json.dumps(self.schedule.to_dict(), indent=2) + "\n")
