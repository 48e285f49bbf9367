"""Time-budget schedules, post-processing chosen on validation, and the plans' record of both."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_data import make_tiny_ct_dataset, run_bundle

from medunet.errors import ConfigError
from medunet.plans import Plans
from medunet.training.environment import TrainingEnv
from medunet.training.postprocessing import choose_postprocessing, record_postprocessing
from medunet.training.schedule import (
    AUTO_MAX_MINUTES,
    AUTO_MIN_MINUTES,
    SAFETY_FRACTION,
    SHORT_RUN_EPOCHS,
    TARGET_VALIDATIONS,
    Schedule,
    auto_budget_minutes,
    plan_epochs,
    plan_schedule,
    short_run_advice,
)


def test_plan_epochs_fills_the_budget_and_no_more() -> None:
    # 10 min; 60 s setup, 30 s reserved; 0.5 s/it x 20 it/epoch = 10 s/epoch; 12 s per validation.
    epochs, interval, reason = plan_epochs(600, 60, 0.5, 20, 12, reserve_s=30)
    usable = 600 * (1 - SAFETY_FRACTION) - 60 - 30
    assert epochs == int((usable - TARGET_VALIDATIONS * 12) // 10)
    assert interval == -(-epochs // TARGET_VALIDATIONS)
    spent = 60 + 30 + epochs * 10 + (epochs // interval + 1) * 12
    assert spent <= 600
    assert f"{epochs} epochs" in reason


def test_plan_epochs_small_budget_still_trains_and_validates_once() -> None:
    epochs, interval, _ = plan_epochs(60, 50, 2.0, 10, 30)
    assert epochs == 1 and interval == 1
    with pytest.raises(ConfigError):
        plan_epochs(0, 0, 1.0, 1, 0)


def test_costly_validation_is_held_to_a_share_of_the_budget() -> None:
    # 10 min, 60 s setup; 46 s per validation pass (12 real cases): 5 passes would take 230 s of the
    # 510 s usable. At most 15 % may go to validation: one pass (after the last epoch).
    epochs, interval, _ = plan_epochs(600, 60, 0.5, 92, 46)
    usable = 600 * (1 - SAFETY_FRACTION) - 60
    assert epochs == int((usable - 46) // 46)
    assert interval == epochs  # validated once, at the end
    # Cheap validation still gets the target number of passes.
    epochs, interval, _ = plan_epochs(600, 60, 0.5, 92, 2)
    assert interval == -(-epochs // TARGET_VALIDATIONS)


def test_a_short_plan_says_which_budget_would_give_enough_epochs() -> None:
    """The pace measured by the 10-minute default run on 184 real OpenKBP training cases (84 s setup,
    0.589 s/iteration x 92, 40.2 s per validation, 40 s reserved): 7 epochs. The advice names the
    smallest whole-minute budget that plans SHORT_RUN_EPOCHS epochs at that pace."""
    pace = (84.0, 0.589, 92, 40.2, 40.0, 0.61)
    assert plan_epochs(600, *pace[:4], pace[4], epoch_overhead_s=pace[5])[0] == 7
    advice = short_run_advice(7, *pace)
    assert advice is not None and advice.startswith("short run: 7 epochs")
    minutes = int(advice.rsplit("--time_budget_min ", 1)[1].split()[0])
    assert plan_epochs(minutes * 60, *pace[:4], pace[4], epoch_overhead_s=pace[5])[0] >= SHORT_RUN_EPOCHS
    assert plan_epochs((minutes - 1) * 60, *pace[:4], pace[4], epoch_overhead_s=pace[5])[0] < SHORT_RUN_EPOCHS
    assert 20 <= minutes <= 30  # about 20 epochs of 55 s plus setup, validation and margin
    assert short_run_advice(SHORT_RUN_EPOCHS, *pace) is None


def test_auto_budget_is_ten_minutes_or_what_twenty_epochs_need() -> None:
    """The bundle's default budget: the real OpenKBP pace above gets the advised minutes (about 25), a
    fast synthetic pace keeps the 10-minute floor, a very slow pace stops at the ceiling and says so."""
    real = (84.0, 0.589, 92, 40.2, 40.0, 0.61)
    minutes, why = auto_budget_minutes(*real)
    advised = int(short_run_advice(7, *real).rsplit("--time_budget_min ", 1)[1].split()[0])
    assert minutes == advised and 20 <= minutes <= 30
    assert plan_epochs(minutes * 60, *real[:4], real[4], epoch_overhead_s=real[5])[0] >= SHORT_RUN_EPOCHS
    assert "what 20 epochs need" in why
    card = (20.0, 0.25, 10, 3.0, 3.0, 0.3)  # 24 synthetic cases: 20 epochs take about a minute
    assert auto_budget_minutes(*card)[0] == AUTO_MIN_MINUTES
    slow = (84.0, 3.0, 400, 60.0, 60.0, 1.0)  # 20 epochs of 20 minutes
    minutes, why = auto_budget_minutes(*slow)
    assert minutes == AUTO_MAX_MINUTES and "set --time_budget_min" in why


def test_auto_budget_is_planned_recorded_and_kept_on_resume(tmp_path: Path, monkeypatch) -> None:
    """``time_budget_min="auto"`` plans from the measured pace (stubbed: the real timing is tested
    below), records the minutes and the request, and a resumed "auto" run keeps that plan while a
    resumed run asked for a number is planned afresh."""
    import medunet.training.schedule as sched

    monkeypatch.setattr(sched, "time_training_iterations", lambda *a, **k: 0.589)
    monkeypatch.setattr(sched, "_time_validation", lambda *a, **k: 40.2)
    monkeypatch.setattr(sched, "_time_checkpoint_write", lambda *a, **k: 0.02)
    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    parts = dict(network=object(), loss_function=object(), optimizer=object(), loader=object())
    kw = dict(steps_per_epoch=92, max_epochs=None, prepare_batch=object(), **parts)
    auto = plan_schedule(env, tmp_path, time_budget_min="auto", **kw)
    assert auto.budget_request == "auto" and 20 <= auto.time_budget_min <= 30
    assert auto.max_epochs >= SHORT_RUN_EPOCHS
    saved = json.loads((tmp_path / "schedule.json").read_text())
    assert saved["budget_request"] == "auto" and saved["reason"].startswith("auto budget")
    (tmp_path / "schedule.json").write_text(json.dumps({**saved, "reason": "saved"}))
    assert plan_schedule(env, tmp_path, time_budget_min="AUTO", resume=True, **kw).reason == "saved"
    # the same minutes asked for as a number are another request: planned afresh, not "auto"
    again = plan_schedule(env, tmp_path, time_budget_min=auto.time_budget_min, resume=True, **kw)
    assert again.reason != "saved" and again.budget_request is None
    # a schedule.json written before budget_request existed still resumes a numeric request
    old = {k: v for k, v in again.to_dict().items() if k != "budget_request"}
    (tmp_path / "schedule.json").write_text(json.dumps({**old, "reason": "old"}))
    assert Schedule.from_dict(old).budget_request is None
    assert (
        plan_schedule(env, tmp_path, time_budget_min=again.time_budget_min, resume=True, **kw).reason == "old"
    )


def test_budget_plans_the_run_iterations_and_lr_schedule(tmp_path: Path) -> None:
    """A tiny run with a 1-minute budget: the trainer runs exactly the planned iterations, no wall-clock assert."""
    data = make_tiny_ct_dataset(tmp_path / "data", n_cases=4)
    out = tmp_path / "run"
    run_bundle(data, out, time_budget_min=1.0, select_postprocessing=False)
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["time_budget_min"] == 1.0
    assert schedule["seconds_per_iteration"] > 0
    assert schedule["total_iterations"] == schedule["max_epochs"] * schedule["steps_per_epoch"]
    last = torch.load(out / "last.pt", weights_only=True)
    # Either the plan held (every planned iteration ran) or the guard stopped a slower-than-measured
    # run: never more iterations than planned.
    assert last["iteration"] <= schedule["total_iterations"]
    assert last["scheduler"]["_step_count"] - 1 == last["iteration"]
    assert last["scheduler"]["lr_lambdas"][0]["total_steps"] == schedule["total_iterations"]


def test_max_epochs_caps_a_budgeted_run(tmp_path: Path) -> None:
    """--max_epochs 2 under a 10-minute budget trains 2 epochs, with the LR schedule over those 2."""
    data = make_tiny_ct_dataset(tmp_path / "data", n_cases=4)
    out = tmp_path / "run"
    run_bundle(data, out, time_budget_min=10, max_epochs=2, select_postprocessing=False)
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["max_epochs"] == 2 and schedule["requested_max_epochs"] == 2
    assert "capped at max_epochs 2" in schedule["reason"]
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["epoch"] == 2
    assert last["iteration"] == schedule["total_iterations"]
    assert last["scheduler"]["lr_lambdas"][0]["total_steps"] == schedule["total_iterations"]


@pytest.mark.parametrize("off", [None, 0, "0", "null", "None", "", False])
def test_budget_off_spellings_use_fixed_max_epochs(tmp_path: Path, off: object) -> None:
    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    schedule = plan_schedule(
        env, tmp_path, steps_per_epoch=3, max_epochs=7, val_interval=2, time_budget_min=off
    )
    assert (schedule.max_epochs, schedule.val_interval, schedule.total_iterations) == (7, 2, 21)
    assert schedule.time_budget_min is None
    assert json.loads((tmp_path / "schedule.json").read_text())["max_epochs"] == 7


def test_schedule_needs_a_budget_or_max_epochs(tmp_path: Path) -> None:
    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    with pytest.raises(ConfigError, match="time_budget_min"):
        plan_schedule(env, tmp_path, steps_per_epoch=3, max_epochs=None, time_budget_min=None)
    with pytest.raises(ConfigError, match="positive"):
        plan_schedule(env, tmp_path, steps_per_epoch=3, max_epochs=5, time_budget_min=-1)
    with pytest.raises(ConfigError, match="number"):
        plan_schedule(env, tmp_path, steps_per_epoch=3, max_epochs=5, time_budget_min="ten")


def test_resume_keeps_the_plan_only_for_the_same_request(tmp_path: Path) -> None:
    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    plan_schedule(env, tmp_path, steps_per_epoch=2, max_epochs=4, time_budget_min=0)
    (tmp_path / "schedule.json").write_text(
        json.dumps({**json.loads((tmp_path / "schedule.json").read_text()), "reason": "saved"})
    )
    assert plan_schedule(env, tmp_path, steps_per_epoch=2, max_epochs=4, resume=True).reason == "saved"
    longer = plan_schedule(env, tmp_path, steps_per_epoch=2, max_epochs=8, resume=True)
    assert longer.max_epochs == 8 and longer.reason != "saved"


def _blob(shape, box, value=1) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    a[box] = value
    return a


def test_postprocessing_is_kept_only_for_organs_it_helps(tmp_path: Path) -> None:
    labels = {0: "background", 1: "solid", 2: "paired"}
    shape = (30, 30, 30)
    cases = []
    for i in range(3):
        ref = _blob(shape, np.s_[5:15, 5:15, 5:15], 1)
        ref[2:6, 20:24, 20:24] = 2  # 'paired' really has two islands
        ref[20:24, 20:24, 20:24] = 2
        pred = ref.copy()
        pred[25 + i % 2 : 27, 2:4, 2:4] = 1  # a false island of 'solid'
        pred[2:5, 20:24, 20:24] = 2  # 'paired' slightly under-segmented, both islands kept
        cases.append((f"c{i}", pred, ref, None))
    chosen, evidence = choose_postprocessing(cases, labels, (1.0, 1.0, 1.0))
    assert chosen == {"solid": ("largest_component",)}
    assert evidence["solid"]["largest_component"]["dice"] > evidence["solid"]["none"]["dice"]
    assert evidence["paired"]["largest_component"]["dice"] < evidence["paired"]["none"]["dice"]

    plans = Plans(labels=labels, target_spacing=(1.0, 1.0, 1.0), patch_size=(16, 16, 16))
    new = record_postprocessing(tmp_path, plans, chosen, evidence)
    assert Plans.load(tmp_path / "plans.json").postprocessing == {"solid": ("largest_component",)}
    assert "postprocessing" in new.rationale
    assert json.loads((tmp_path / "postprocessing.json").read_text())["chosen"] == {
        "solid": ["largest_component"]
    }


def test_warmup_is_capped_at_a_tenth_of_a_short_run() -> None:
    from medunet.training.components import build_scheduler

    def lambdas(max_epochs: int, steps: int) -> list[float]:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = build_scheduler(opt, max_epochs, steps, warmup_epochs=2, kind="cosine")
        return [sched.lr_lambdas[0](i) for i in range(max_epochs * steps)]

    # 5 planned epochs of 92 iterations: 2 warm-up epochs would be 184 iterations; capped at 46.
    short = lambdas(5, 92)
    assert short[44] < short[45] < 1.0 and short[46] == pytest.approx(1.0)
    assert short[0] == pytest.approx(1 / 47)
    # A long run keeps the 2 requested warm-up epochs (20 iterations).
    long = lambdas(150, 10)
    assert long[19] < 1.0 and long[20] == pytest.approx(1.0)
    assert long[-1] == pytest.approx(0.01, abs=1e-3)


# ------------------------------------------------------------------------------ re-planning


def test_replan_epochs_fits_the_remaining_budget_exactly() -> None:
    from medunet.training.schedule import replan_epochs

    # usable after epoch 2: 1000 * 0.95 - 200 elapsed - 20 closing pass = 730 s. 13 more epochs cost
    # 650 s + validations at 5, 10, 15 (60 s) = 710 s; 14 more cost 700 + 4 x 20 = 780 s.
    assert replan_epochs(2, 1000, 200, 50, 20, 5) == 15
    assert replan_epochs(2, 1000, 200, 50, 20, 5, cap=10) == 10
    assert replan_epochs(2, 1000, 990, 50, 20, 5) == 3  # nothing fits: one more, the guard stops it


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0
        self.distributed = False
        self.is_main = True

    def elapsed_s(self) -> float:
        return self.t


def _budgeted_run(
    tmp_path: Path, s_per_iteration: float | Callable[[int], float], planned: int = 10
) -> tuple:
    """A real ignite run of 4 iterations/epoch on a fake clock, planned for 2 s/iteration and 3 s per
    validation (every 5 epochs) in a 2-minute budget; each iteration really takes ``s_per_iteration``."""
    from ignite.engine import Engine, Events

    from medunet.training.components import build_scheduler
    from medunet.training.schedule import Schedule, TimeBudgetGuard

    clock = _Clock()
    schedule = Schedule(planned, 5, 4, time_budget_min=2.0, seconds_per_validation=3.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    lr_scheduler = build_scheduler(optimizer, planned, 4, warmup_epochs=0)

    def step(engine: Engine, batch: int) -> None:
        pace = s_per_iteration
        clock.t += pace(engine.state.epoch) if callable(pace) else pace

    engine = Engine(step)

    @engine.on(Events.EPOCH_COMPLETED)
    def validate(engine: Engine) -> None:  # stands for the ValidationHandler, attached before the guard
        if engine.state.epoch % 5 == 0 or engine.state.epoch == engine.state.max_epochs:
            clock.t += 3.0

    guard = TimeBudgetGuard(schedule, clock, lr_scheduler, tmp_path)  # type: ignore[arg-type]
    guard.attach(engine)
    engine.run(range(4), max_epochs=planned)
    return engine, clock, lr_scheduler.lr_lambdas[0]


def test_guard_lengthens_a_run_planned_on_a_busy_machine(tmp_path: Path) -> None:
    """Planned at 2 s/iteration, running at 1 s: the run grows to fill the budget, LR schedule with it."""
    engine, clock, lr_fn = _budgeted_run(tmp_path, 1.0)
    saved = json.loads((tmp_path / "schedule.json").read_text())
    assert engine.state.epoch == engine.state.max_epochs == saved["max_epochs"]
    assert engine.state.epoch > 20  # 114 s usable at ~4 s/epoch (not the 10 epochs planned)
    assert lr_fn.total_steps == 4 * engine.state.max_epochs  # the cosine ends where the run ends
    assert clock.t <= 120 * 0.95  # and the run stays inside the budget, closing pass reserved
    assert "re-planned after epoch 2" in saved["reason"]


def test_guard_shortens_a_run_that_would_overrun(tmp_path: Path) -> None:
    """Running at 4 s/iteration (16 s/epoch): fewer epochs, finished inside the budget, not cut off."""
    engine, clock, lr_fn = _budgeted_run(tmp_path, 4.0)
    assert engine.state.epoch == engine.state.max_epochs < 10
    assert lr_fn.total_steps == 4 * engine.state.max_epochs
    assert clock.t <= 120


def test_guard_keeps_a_plan_that_matches_the_pace(tmp_path: Path) -> None:
    """Within the 10 % hysteresis nothing moves and schedule.json is not rewritten."""
    engine, _, lr_fn = _budgeted_run(tmp_path, 2.6, planned=10)
    assert engine.state.max_epochs == 10 and lr_fn.total_steps == 40
    assert not (tmp_path / "schedule.json").exists()


def test_guard_lengthens_late_when_the_machine_frees_up(tmp_path: Path) -> None:
    """Busy (4 s/iteration) for 3 epochs, then free (1 s): the run is first shortened, then lengthened
    again past its middle, and still ends inside the budget."""
    engine, clock, lr_fn = _budgeted_run(tmp_path, lambda epoch: 4.0 if epoch <= 3 else 1.0)
    saved = json.loads((tmp_path / "schedule.json").read_text())
    assert saved["reason"].count("re-planned") >= 2
    assert engine.state.epoch == engine.state.max_epochs > 10
    assert clock.t <= 120


def test_retargeted_lr_decay_continues_without_a_jump() -> None:
    from medunet.training.components import WarmupSchedule

    for new_total in (150, 70):  # lengthened, shortened
        fn = WarmupSchedule(10, 100)
        fn.retarget(60, new_total)
        after = [fn(s) for s in range(60, new_total + 1)]
        assert abs(after[0] - WarmupSchedule(10, 100)(60)) < 1e-12  # no jump at the re-plan
        assert all(a >= b for a, b in zip(after, after[1:], strict=False))  # still decaying
        assert after[-1] == pytest.approx(0.01)  # and ends at the floor, at the new end
        state = dict(fn.__dict__)  # LambdaLR.state_dict() keeps these: a resumed run continues it
        again = WarmupSchedule(10, 100)
        again.__dict__.update(state)
        assert again(new_total - 5) == fn(new_total - 5)
