"""Bundle CLI booleans: MONAI passes ``--resume false`` as the string "false" (truthy in Python)."""

from __future__ import annotations

import pytest
import torch

from medunet.config import as_bool
from medunet.errors import ConfigError
from medunet.training.environment import TrainingEnv, setup_environment


@pytest.mark.parametrize("value", [True, "true", "True", "YES", "on", "1", 1])
def test_true_words(value):
    assert as_bool(value, "x") is True


@pytest.mark.parametrize("value", [False, "false", "False", "no", "off", "0", 0, None, ""])
def test_false_words(value):
    assert as_bool(value, "x") is False


@pytest.mark.parametrize("value", ["flase", "2", 2, [], 0.5])
def test_anything_else_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match="resume must be true or false"):
        as_bool(value, "resume")


def test_string_false_does_not_switch_features_on():
    assert setup_environment(device="cpu", distributed="false").distributed is False
    cpu = TrainingEnv(device=torch.device("cpu"), seed=0)
    assert cpu.use_amp("true") is False  # no AMP on CPU whatever is asked
    cuda = TrainingEnv(device=torch.device("cuda", 0), seed=0)
    assert cuda.use_amp("false") is False and cuda.use_amp("true") is True


def test_plans_for_run_honours_string_false(tmp_path):
    from medunet.plans import Plans
    from medunet.training.planning import plans_for_run

    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    saved = Plans(
        labels={0: "background", 1: "liver"}, target_spacing=(2.0, 2.0, 2.0), patch_size=(32, 32, 32)
    )
    saved.save(tmp_path / "plans.json")
    fresh = Plans(
        labels={0: "background", 1: "liver"}, target_spacing=(1.0, 1.0, 1.0), patch_size=(32, 32, 32)
    )
    assert plans_for_run(fresh, tmp_path, env, resume="false") == fresh  # "false" must not resume
    saved.save(tmp_path / "plans.json")  # the call above started afresh and wrote its own plans
    assert plans_for_run(fresh, tmp_path, env, resume="true") == saved
