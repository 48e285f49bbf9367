"""Planning defaults the READMEs promise: the CPU spacing floor (1.5 mm in 2D, 2 mm in 3D, none on CUDA)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medunet.data.datalist import Datalist
from medunet.data.fingerprint import Fingerprint
from medunet.training.environment import TrainingEnv
from medunet.training.planning import make_plans

LABELS = {0: "background", 1: "liver", 2: "spleen"}


def _fine_fingerprint(spacing: tuple[float, float, float]) -> Fingerprint:
    return Fingerprint(
        n_cases=4,
        dataset_hash="0" * 64,
        modalities={"0": "CT"},
        labels={str(k): v for k, v in LABELS.items()},
        spacing={"median": list(spacing)},
        size={"median": [256.0, 256.0, 60.0]},
        intensity={"0": {"p00_5": -100.0, "p99_5": 300.0}},
        class_fraction={"1": 0.05, "2": 0.01},
        class_presence={"1": 1.0, "2": 1.0},
        anisotropy=spacing[2] / spacing[0],
    )


def _plans(device: str, spatial_dims: int | str, spacing: tuple[float, float, float]):
    datalist = Datalist(name="fine", root=Path("."), labels=dict(LABELS), modalities={0: "CT"})
    env = TrainingEnv(device=torch.device(device), seed=0)
    return make_plans(datalist, _fine_fingerprint(spacing), env, spatial_dims=spatial_dims)


@pytest.mark.parametrize(
    ("device", "dims", "expected_dims", "expected_spacing"),
    [
        ("cpu", 2, 2, (1.5, 1.5, 3.0)),  # floored at 1.5 mm; the 3 mm slices are coarser already
        ("cpu", "auto", 2, (1.5, 1.5, 3.0)),  # the CPU default is 2D, floored at 1.5 mm
        ("cpu", 3, 3, (2.0, 2.0, 3.0)),  # 3D on CPU: 2 mm
        ("cuda", 2, 2, (0.7, 0.8, 3.0)),  # no floor on CUDA
        ("cuda", 3, 3, (0.7, 0.8, 3.0)),
        ("cuda", "auto", 3, (0.7, 0.8, 3.0)),
    ],
)
def test_cpu_spacing_floor_is_1_5_mm_in_2d_and_2_mm_in_3d_and_none_on_cuda(
    device: str, dims: int | str, expected_dims: int, expected_spacing: tuple[float, ...], monkeypatch
) -> None:
    """README / bundle README: target spacing on CPU floored at 1.5 mm in 2D, 2 mm in 3D (make_plans only
    reads ``env.device.type``, so the CUDA rows need no GPU). The CPU here has no native bf16."""
    import medunet.training.planning as planning

    monkeypatch.setattr(planning, "cpu_has_bf16", lambda flags=None: False)
    plans = _plans(device, dims, (0.7, 0.8, 3.0))
    assert plans.spatial_dims == expected_dims
    assert plans.target_spacing == pytest.approx(expected_spacing, abs=1e-9)


def test_cpu_floor_also_applies_to_fine_slices() -> None:
    """Every axis is floored (the planning docstring): 1 mm slices become 2 mm for a 3D CPU run."""
    assert _plans("cpu", 3, (0.6, 0.6, 1.0)).target_spacing == pytest.approx((2.0, 2.0, 2.0))
    assert _plans("cpu", 2, (0.6, 0.6, 1.0)).target_spacing == pytest.approx((1.5, 1.5, 1.5))


@pytest.mark.parametrize(
    ("device", "native", "spacing", "expected"),
    [
        ("cpu", True, (3.9, 3.9, 2.5), 3),  # native bf16, coarse data: 3D at the data's own spacing
        ("cpu", True, (0.7, 0.8, 3.0), 2),  # 3D would be floored to 2 mm: 2D at 1.5 mm
        ("cpu", False, (3.9, 3.9, 2.5), 2),  # no native bf16: 2D
        ("cuda", False, (0.7, 0.8, 3.0), 3),
    ],
)
def test_auto_is_3d_where_the_hardware_trains_it_fast_at_the_datas_resolution(
    device: str, native: bool, spacing: tuple[float, float, float], expected: int, monkeypatch
) -> None:
    """auto: 3D on CUDA, and on a CPU with native bf16 where no axis would be floored (the real H&N CT
    case); 2D otherwise; ``rationale`` records the reason."""
    import medunet.training.planning as planning

    monkeypatch.setattr(planning, "cpu_has_bf16", lambda flags=None: native)
    plans = _plans(device, "auto", spacing)
    assert plans.spatial_dims == expected
    reason = plans.rationale["spatial_dims"]
    assert reason.startswith("auto: ") and ("bf16" in reason or "floored" in reason) is (device == "cpu")
    if device == "cpu":
        floored = spacing if expected == 3 else tuple(max(s, 1.5) for s in spacing)
        assert plans.target_spacing == pytest.approx(floored)
