"""Training glue the ct_organs bundle composes: environment, data, plans, model, handlers, checkpoints.

The bundle JSON (``bundles/ct_organs/train.json``) wires these together; all logic lives here.
"""

from __future__ import annotations

from medunet.training.checkpoint import is_valid_checkpoint, load_checkpoint, load_model, save_checkpoint
from medunet.training.components import (
    PrepareBatch,
    WarmupSchedule,
    build_model,
    build_scheduler,
    make_augmentation,
    training_network,
    wrap_ddp,
)
from medunet.training.data import (
    check_pairs,
    make_split,
    read_split,
    resolve_dataset,
    train_loader,
    val_dataset,
)
from medunet.training.environment import TrainingEnv, setup_environment
from medunet.training.handlers import Checkpointer, EarlyStopping, EpochSeeder, TrainLogger, ValidationHandler
from medunet.training.planning import fingerprint_for, make_plans, plans_for_run
from medunet.training.postprocessing import PostprocessingSelector, choose_postprocessing
from medunet.training.schedule import Schedule, TimeBudgetGuard, plan_schedule
from medunet.training.state import find_resume_checkpoint
from medunet.training.validation import Validator, build_inferer

__all__ = [
    "Checkpointer",
    "EarlyStopping",
    "EpochSeeder",
    "PostprocessingSelector",
    "PrepareBatch",
    "Schedule",
    "TimeBudgetGuard",
    "TrainLogger",
    "TrainingEnv",
    "ValidationHandler",
    "Validator",
    "WarmupSchedule",
    "build_inferer",
    "build_model",
    "build_scheduler",
    "check_pairs",
    "choose_postprocessing",
    "find_resume_checkpoint",
    "fingerprint_for",
    "is_valid_checkpoint",
    "load_checkpoint",
    "load_model",
    "make_augmentation",
    "make_plans",
    "make_split",
    "plan_schedule",
    "plans_for_run",
    "read_split",
    "resolve_dataset",
    "save_checkpoint",
    "setup_environment",
    "train_loader",
    "training_network",
    "val_dataset",
    "wrap_ddp",
]
