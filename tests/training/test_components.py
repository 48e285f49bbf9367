"""Training features the bundle offers, each against a known answer: the LR schedules, early stopping,
CutMix/MixUp, gradient accumulation (through train.json's own trainer entry) and the ``init_from``
label check. Each test fails if its feature is removed or miswired."""

from __future__ import annotations

import json
import math
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from ignite.engine import Engine, Events
from tiny_data import BUNDLE

from medunet.errors import ConfigError
from medunet.losses import AnnotatedClasses
from medunet.plans import Plans
from medunet.training import (
    EarlyStopping,
    PrepareBatch,
    TrainingEnv,
    WarmupSchedule,
    build_scheduler,
    plans_for_run,
    save_checkpoint,
)
from medunet.training.components import cutmix

CPU = TrainingEnv(device=torch.device("cpu"), seed=0)

# ----------------------------------------------------------------------------------------------------
# LR schedules: linear warm-up, then cosine or poly (0.9) decay from 1 to 0.01 of the peak
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # warm-up 4 steps: (s + 1) / 5; then over 10 steps: 0.01 + 0.99 * decay(t), t = (s - 4) / 10
        ("cosine", [0.2, 0.4, 0.6, 0.8, 1.0, 0.975773, 0.9054634, 0.7959537, 0.6579634, 0.505]
         + [0.3520366, 0.2140463, 0.1045366, 0.034227, 0.01, 0.01]),
        ("poly", [0.2, 0.4, 0.6, 0.8, 1.0, 0.9104373, 0.8198716, 0.7281637, 0.6351314, 0.5405279]
         + [0.4439995, 0.3449996, 0.2425746, 0.1346336, 0.01, 0.01]),
    ],
)  # fmt: skip
def test_warmup_then_decay_known_values(kind: str, expected: list[float]) -> None:
    schedule = WarmupSchedule(warmup_steps=4, total_steps=14, kind=kind)
    assert [schedule(step) for step in range(16)] == pytest.approx(expected, abs=1e-7)
    # the formulas behind the numbers, at two steps
    assert schedule(9) == pytest.approx(
        0.01 + 0.99 * (0.5 * (1 + math.cos(math.pi * 0.5)) if kind == "cosine" else 0.5**0.9)
    )
    assert schedule(6) == pytest.approx(
        0.01 + 0.99 * (0.5 * (1 + math.cos(math.pi * 0.2)) if kind == "cosine" else 0.8**0.9)
    )


def test_lr_schedule_drives_the_optimizer_per_iteration() -> None:
    """5 epochs x 10 iterations, 2 warm-up epochs asked (capped at 10 % of the run: 5 iterations)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = build_scheduler(opt, max_epochs=5, steps_per_epoch=10, warmup_epochs=2, kind="poly")
    lrs = []
    for _ in range(50):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:6] == pytest.approx([0.01 * k / 6 for k in range(1, 6)] + [0.01], rel=1e-9)
    assert lrs[27] == pytest.approx(0.01 * (0.01 + 0.99 * (1 - 22 / 45) ** 0.9), rel=1e-9)
    assert lrs[49] == pytest.approx(0.01 * (0.01 + 0.99 * (1 / 45) ** 0.9), rel=1e-9)
    with pytest.raises(ConfigError, match="cosine' or 'poly"):
        WarmupSchedule(1, 10, kind="step")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Early stopping
# ----------------------------------------------------------------------------------------------------


def _scripted_run(dice: list[float], patience: int) -> Engine:
    """An engine whose 'validation' after epoch n gives ``dice[n-1]`` (best tracked as the bundle does)."""
    engine = Engine(lambda e, b: None)

    @engine.on(Events.STARTED)
    def _init(e: Engine) -> None:
        e.state.best_metric, e.state.best_metric_epoch = -1.0, -1

    @engine.on(Events.EPOCH_COMPLETED)
    def _validate(e: Engine) -> None:  # registered first, like ValidationHandler
        if dice[e.state.epoch - 1] > e.state.best_metric:
            e.state.best_metric, e.state.best_metric_epoch = dice[e.state.epoch - 1], e.state.epoch

    EarlyStopping(patience, CPU).attach(engine)
    engine.run([0], max_epochs=len(dice))
    return engine


def test_early_stopping_known_stop_epochs() -> None:
    dice = [0.1, 0.3, 0.2, 0.25, 0.2, 0.5, 0.4, 0.6]
    # best at epoch 2; epochs 3 and 4 do not improve: 4 - 2 >= 2 stops after epoch 4
    assert _scripted_run(dice, patience=2).state.epoch == 4
    # patience 4 survives to epoch 6 (new best), then 7 and 8 are within patience: the full 8 epochs
    assert _scripted_run(dice, patience=4).state.epoch == 8
    # patience 3: best at 2, stop after epoch 5 (5 - 2 >= 3), before the epoch-6 improvement
    assert _scripted_run(dice, patience=3).state.epoch == 5
    # 0 (the default) is off
    assert _scripted_run([0.5, 0.1, 0.1, 0.1], patience=0).state.epoch == 4


# ----------------------------------------------------------------------------------------------------
# CutMix / MixUp
# ----------------------------------------------------------------------------------------------------


def _two_patches(shape: tuple[int, ...] = (12, 10, 8)) -> dict[str, torch.Tensor]:
    """Patch 0: image 0, label 1; patch 1: image 1, label 2 (every voxel)."""
    image = torch.stack([torch.zeros(1, *shape), torch.ones(1, *shape)])
    label = torch.stack([torch.ones(1, *shape), torch.full((1, *shape), 2.0)])
    return {"image": image, "label": label}


def test_cutmix_pastes_one_box_of_image_and_label_from_the_partner() -> None:
    torch.manual_seed(0)
    batch = _two_patches()
    shape = batch["image"].shape[2:]
    for _ in range(20):
        image, label = cutmix(batch["image"], batch["label"], torch.tensor([1, 0]))
        pasted = image[0, 0] == 1.0  # voxels of patch 0 that now come from patch 1
        # one axis-aligned box, each side 25-75 % of the patch
        idx = pasted.nonzero()
        lo, hi = idx.min(0).values, idx.max(0).values + 1
        assert int(pasted.sum()) == int(torch.prod(hi - lo))
        for side, size in zip((hi - lo).tolist(), shape, strict=True):
            assert int(size * 0.25) <= side <= int(size * 0.75)
        # the label moves with the image, and patch 1 receives patch 0's content in the same box
        assert torch.equal(label[0, 0] == 2, pasted) and torch.equal(label[1, 0] == 1, pasted)
        assert torch.equal(image[1, 0] == 0.0, pasted)
    assert torch.equal(batch["image"][0], torch.zeros_like(batch["image"][0]))  # inputs untouched


def test_prepare_batch_mixes_only_when_asked() -> None:
    batch = _two_patches()
    image, label = PrepareBatch("none")(batch)
    assert torch.equal(image, batch["image"]) and torch.equal(label, batch["label"])
    image, label = PrepareBatch("cutmix", prob=0.0)(batch)
    assert torch.equal(image, batch["image"])
    torch.manual_seed(1)
    image, label = PrepareBatch("cutmix", prob=1.0)(batch)
    assert 0 < float(image[0].mean()) < 1 and set(label.unique().tolist()) == {1.0, 2.0}


def test_mixup_blends_images_and_soft_labels_with_one_lambda() -> None:
    torch.manual_seed(3)
    image, label = PrepareBatch("mixup", prob=1.0, num_classes=3)(_two_patches())
    lam = 1.0 - float(image[0, 0, 0, 0, 0])  # patch 0 = lam * 0 + (1 - lam) * 1
    assert 0.0 < lam < 1.0
    assert torch.allclose(image[0], torch.full_like(image[0], 1 - lam))
    assert torch.allclose(image[1], torch.full_like(image[1], lam))
    assert label.shape == (2, 3, 12, 10, 8)  # one-hot soft labels
    assert torch.allclose(label[0, :, 0, 0, 0], torch.tensor([0.0, lam, 1 - lam]))
    assert torch.allclose(label[1, :, 0, 0, 0], torch.tensor([0.0, 1 - lam, lam]))
    assert torch.allclose(label.sum(1), torch.ones(2, 12, 10, 8))
    with pytest.raises(ConfigError, match="num_classes"):
        PrepareBatch("mixup")


def test_mixing_keeps_only_organs_both_patches_annotate() -> None:
    flags = AnnotatedClasses()
    batch = {**_two_patches(), "annotated": torch.tensor([[1, 1, 0], [1, 0, 1]])}
    PrepareBatch("mixup", prob=1.0, num_classes=3, annotated=flags)(batch)
    assert flags.flags is not None
    assert flags.flags.tolist() == [[True, False, False], [True, False, False]]


# ----------------------------------------------------------------------------------------------------
# Gradient accumulation and mixing through the bundle's own train.json entries
# ----------------------------------------------------------------------------------------------------


class Scale(torch.nn.Module):
    """pred = w * x, one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w * x


def _bundle_trainer(**overrides: Any) -> tuple[Any, Scale]:
    """train.json's ``train#trainer`` and ``prepare_batch`` entries, with data and model swapped in."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    net = Scale()
    plans = Plans(labels={0: "background", 1: "a", 2: "b"}, target_spacing=(1, 1, 1), patch_size=(2, 2, 2))
    batches = [  # (x, target): one constant patch each
        {"image": torch.full((1, 1, 2, 2, 2), 1.0), "label": torch.full((1, 1, 2, 2, 2), 3.0)},
        {"image": torch.full((1, 1, 2, 2, 2), 2.0), "label": torch.full((1, 1, 2, 2, 2), 0.0)},
    ]
    replace: dict[str, Any] = {
        "env": CPU,
        "plans": plans,
        "network_def": net,
        "optimizer": torch.optim.SGD(net.parameters(), lr=0.1),
        "loss_function": lambda pred, target: ((pred - target) ** 2).mean(),
        "schedule": types.SimpleNamespace(max_epochs=1),
        "train#dataloader": batches,
        "train#handlers": [],
        "amp": False,  # known fp32 weights; bf16 autocast on a bf16 CPU is tested on its own
        **overrides,
    }
    for key, value in replace.items():
        parser[key] = value
    return parser, net


def test_gradient_accumulation_from_train_json_known_weights() -> None:
    """x = 1, t = 3 then x = 2, t = 0, w0 = 1, SGD lr 0.1, loss (w x - t)^2.

    Gradients at w0: -4 and 8. Accumulating 2: one step with their mean, w = 1 - 0.1 * 2 = 0.8.
    Without: w = 1 + 0.4 = 1.4, then the gradient 2 (2.8 - 0) 2 = 11.2 gives 1.4 - 1.12 = 0.28.
    """
    parser, net = _bundle_trainer(accumulation_steps=2)
    parser.get_parsed_content("train#trainer").run()
    assert float(net.w) == pytest.approx(0.8, abs=1e-6)
    parser, net = _bundle_trainer()  # the bundle default: 1
    assert json.loads((BUNDLE / "train.json").read_text())["accumulation_steps"] == 1
    parser.get_parsed_content("train#trainer").run()
    assert float(net.w) == pytest.approx(0.28, abs=1e-6)


@pytest.mark.parametrize("native", [True, False])
def test_train_json_trains_in_bf16_on_a_cpu_with_native_bf16(native: bool, monkeypatch) -> None:
    """On a CPU with avx512_bf16/amx_bf16, ``amp`` (the bundle default) puts the trainer's network, the
    one the pace is measured on and the validator under bf16 autocast; without native bf16, or with
    ``--amp false``, everything stays fp32 (emulated bf16 was 65x slower)."""
    import medunet.precision as precision
    import medunet.training.environment as environment
    from medunet.precision import CpuAutocast

    monkeypatch.setattr(environment, "cpu_has_bf16", lambda flags=None: native)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda flags=None: native)
    assert json.loads((BUNDLE / "train.json").read_text())["amp"] is True
    parser, net = _bundle_trainer(amp=True)
    trainer = parser.get_parsed_content("train#trainer")
    if native:
        assert isinstance(trainer.network, CpuAutocast) and trainer.network.module is net
        assert parser.get_parsed_content("train_network") is trainer.network  # the schedule times it
    else:
        assert trainer.network is net
    assert trainer.amp is False  # MONAI's own AMP is CUDA's (grad scaler); never on a CPU
    parser["validate#dataset"] = []
    assert parser.get_parsed_content("validate#validator").amp is native
    parser, net = _bundle_trainer(amp=False)
    assert parser.get_parsed_content("train#trainer").network is net
    parser["validate#dataset"] = []
    assert parser.get_parsed_content("validate#validator").amp is False


@pytest.mark.parametrize("network", ["resunet", "unet"])
def test_train_json_weighs_deep_supervision_heads_exactly_when_the_network_has_them(network: str) -> None:
    from monai.bundle import ConfigParser

    from medunet.losses import DeepSupervisionLoss, PartialLabelLoss
    from medunet.networks import resolve_network_kwargs

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "train.json"))
    kwargs = resolve_network_kwargs(
        network, 3, size="tiny", **({"patch_size": (32,) * 3} if network == "resunet" else {})
    )
    parser["plans"] = Plans(
        labels={0: "background", 1: "a"},
        target_spacing=(1, 1, 1),
        patch_size=(32, 32, 32),
        network=network,
        network_kwargs=kwargs,
    )
    loss = parser.get_parsed_content("loss_function")
    if network == "resunet":
        assert isinstance(loss, DeepSupervisionLoss) and isinstance(loss.loss, PartialLabelLoss)
    else:
        assert isinstance(loss, PartialLabelLoss)


@pytest.mark.parametrize("mix", ["cutmix", "mixup"])
def test_mix_option_reaches_the_trainer(mix: str) -> None:
    parser, _ = _bundle_trainer(mix=mix)
    trainer = parser.get_parsed_content("train#trainer")
    assert isinstance(trainer.prepare_batch, PrepareBatch)
    assert trainer.prepare_batch.mix == mix and trainer.prepare_batch.num_classes == 3


# ----------------------------------------------------------------------------------------------------
# Fine-tuning: the source checkpoint's labels must be the dataset's
# ----------------------------------------------------------------------------------------------------


def test_init_from_with_other_labels_is_a_config_error(tmp_path: Path) -> None:
    source = Plans(
        labels={0: "background", 1: "liver", 2: "spleen"},
        target_spacing=(1.5, 1.5, 2.0),
        patch_size=(32, 32, 32),
    )
    ckpt = save_checkpoint(tmp_path / "source.pt", {"model": {}, "plans": source.to_dict()})
    same_labels = Plans(labels=dict(source.labels), target_spacing=(1, 1, 1), patch_size=(16, 16, 16))
    # Same labels: the source plans win (so its weights fit), written to the run's plans.json.
    assert plans_for_run(same_labels, tmp_path / "ok", CPU, init_from=ckpt) == source
    assert Plans.load(tmp_path / "ok" / "plans.json") == source
    other = Plans(
        labels={0: "background", 1: "liver", 2: "kidney"}, target_spacing=(1, 1, 1), patch_size=(16, 16, 16)
    )
    with pytest.raises(
        ConfigError, match="labels .*spleen.* differ from the dataset's .*kidney.*cannot fine-tune"
    ):
        plans_for_run(other, tmp_path / "bad", CPU, init_from=ckpt)
    assert not (tmp_path / "bad" / "plans.json").exists()
