import pytest

from medunet.errors import ConfigError
from medunet.plans import Intensity, Plans


def test_plans_roundtrip(tmp_path):
    p = Plans(
        labels={0: "background", 1: "liver", 3: "kidney"},
        target_spacing=(1.5, 1.5, 2.0),
        patch_size=(64, 64, 32),
        intensity=Intensity("ct_window", -100, 200),
        network_kwargs={"channels": [8, 16]},
    )
    path = p.save(tmp_path / "plans.json")
    q = Plans.load(path)
    assert q == p
    assert q.num_classes == 4 and q.organ_names == ["liver", "kidney"]


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"patch_size": (64, 64)}, "patch_size"),
        ({"target_spacing": (1.0, 0.0, 1.0)}, "target_spacing"),
        ({"labels": {1: "liver"}}, "background"),
    ],
)
def test_plans_rejects_bad_values(kwargs, needle):
    base = dict(labels={0: "background", 1: "liver"}, target_spacing=(1.0, 1.0, 1.0), patch_size=(32, 32, 32))
    base.update(kwargs)
    with pytest.raises(ConfigError, match=needle):
        Plans(**base)


def test_bad_plans_file_names_file(tmp_path):
    f = tmp_path / "plans.json"
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="plans.json"):
        Plans.load(f)
