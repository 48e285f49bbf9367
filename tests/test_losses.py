"""Loss registry: every loss takes logits + integer label maps and rewards better predictions."""

from __future__ import annotations

import pytest
import torch

from medunet.errors import ConfigError
from medunet.losses import LOSSES, build_loss, loss_names


def _labels(shape: tuple[int, ...]) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 3, (2, 1, *shape), generator=g)


def _perfect_logits(labels: torch.Tensor, num_classes: int = 3) -> torch.Tensor:
    onehot = torch.nn.functional.one_hot(labels[:, 0].long(), num_classes).movedim(-1, 1).float()
    return 20.0 * onehot - 10.0


@pytest.mark.parametrize("name", list(LOSSES))
@pytest.mark.parametrize("shape", [(16, 16), (8, 8, 8)], ids=["2d", "3d"])
def test_loss_is_finite_scalar_and_rewards_better_predictions(name: str, shape: tuple[int, ...]) -> None:
    loss_fn = build_loss(name)
    labels = _labels(shape)
    perfect = loss_fn(_perfect_logits(labels), labels)
    random = loss_fn(torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(1)), labels)
    for value in (perfect, random):
        assert value.ndim == 0 and torch.isfinite(value)
    assert perfect < 0.05
    assert random > perfect + 0.2


@pytest.mark.parametrize("name", list(LOSSES))
def test_loss_gradient_reaches_logits(name: str) -> None:
    labels = _labels((8, 8))
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    build_loss(name)(logits, labels).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_registry_and_defaults() -> None:
    assert loss_names() == ["dicece", "dice", "dicefocal", "tversky"]
    loss = build_loss()
    assert type(loss.from_labels).__name__ == "DiceCELoss"
    tversky = build_loss("tversky").from_labels
    assert (tversky.alpha, tversky.beta) == (0.3, 0.7)
    assert build_loss("dice", include_background=False).from_labels.include_background is False
    assert build_loss("dice", include_background=False).from_soft.include_background is False


def test_excluding_background_changes_the_value() -> None:
    labels = _labels((16, 16))
    logits = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with_bg = build_loss("dice")(logits, labels)
    without_bg = build_loss("dice", include_background=False)(logits, labels)
    assert not torch.isclose(with_bg, without_bg)


def test_bad_names_and_arguments_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="valid: dicece, dice, dicefocal, tversky"):
        build_loss("focal_tversky")
    with pytest.raises(ConfigError, match="cannot build loss 'dice'"):
        build_loss("dice", no_such_option=True)


@pytest.mark.parametrize("name", loss_names())
def test_soft_targets_from_mixup_equal_the_one_hot_label_loss(name):
    """MixUp feeds (B, C, ...) probabilities; a one-hot soft target must score like its label map."""
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, 8)
    labels = torch.randint(0, 3, (2, 1, 8, 8, 8))
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    loss = build_loss(name)
    assert torch.allclose(loss(logits, labels), loss(logits, onehot), atol=1e-5)
    mixed = 0.7 * onehot + 0.3 * onehot.roll(1, dims=0)
    value = loss(logits, mixed)
    assert torch.isfinite(value)
    with pytest.raises(ValueError, match="channels"):
        loss(logits, torch.zeros(2, 2, 8, 8, 8))


# ------------------------------------------------------------------------------- partial labels


@pytest.mark.parametrize("name", ["dicece", "dice", "dicefocal", "tversky"])
def test_partial_label_loss_never_pushes_an_unannotated_organ_down_where_the_label_says_background(
    name: str,
) -> None:
    """Sample 0 does not annotate organ 2. Where its label reads 0, the voxel is background *or* organ 2.

    Gradient descent must never lower channel 2 there (grad <= 0), and it must lower it where the label
    names organ 1 (a voxel drawn as organ 1 is not organ 2). Sample 1 annotates everything, so channel
    2 is trained there in both directions. The old exclusion loss gave channel 2 zero gradient but
    trained the background channel up on organ 2's tissue.
    """
    from medunet.losses import AnnotatedClasses

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    label = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    label[:, 0, 2:5, 2:5] = 1
    label[1, 0, 6:8, 6:8] = 2
    flags = AnnotatedClasses()
    flags.flags = torch.tensor([[True, True, False], [True, True, True]])
    loss = build_loss(name, annotated=flags)
    loss(logits, label).backward()
    grad = logits.grad
    assert grad is not None
    background, organ1 = label[0, 0] == 0, label[0, 0] == 1
    assert float(grad[0, 2][background].max()) <= 0.0  # never punished where it may be
    assert float(grad[0, 2][background].min()) < 0.0  # and raised against the annotated organ 1
    assert float(grad[0, 2][organ1].min()) > 0.0  # pushed down where another organ is drawn
    assert torch.count_nonzero(grad[0, 1]) > 0  # annotated organs of the same sample still train
    assert float(grad[1, 2][label[1, 0] == 2].max()) < 0.0  # organ 2 trains where it is drawn
    assert float(grad[1, 2][label[1, 0] == 0].min()) > 0.0  # and is background elsewhere there


@pytest.mark.parametrize("name", ["dicece", "dice", "dicefocal", "tversky"])
def test_partial_label_loss_is_blind_to_background_versus_unannotated_organ(name: str) -> None:
    """Swapping the background and unannotated-organ logits where the label reads 0 changes nothing.

    That is the marginal loss's known answer: only ``p_background + p_organ`` is scored there. Under
    the exclusion loss (organ logit masked, background trained as background) and under a plain loss
    the swap changes the loss.
    """
    from medunet.losses import AnnotatedClasses

    torch.manual_seed(2)
    logits = torch.randn(2, 3, 8, 8)
    label = torch.zeros(2, 1, 8, 8, dtype=torch.long)
    label[:, 0, 1:4, 1:4] = 1
    label[1, 0, 5:8, 5:8] = 2
    flags = AnnotatedClasses()
    flags.flags = torch.tensor([[True, True, False], [True, True, True]])
    partial, plain = build_loss(name, annotated=flags), build_loss(name)
    swapped = logits.clone()
    where = label[0, 0] == 0
    swapped[0, 0][where], swapped[0, 2][where] = logits[0, 2][where], logits[0, 0][where]
    assert torch.allclose(partial(logits, label), partial(swapped, label), atol=1e-6)
    assert abs(float(plain(logits, label) - plain(swapped, label))) > 1e-3


def test_marginal_logits_merge_probabilities_into_background_exactly() -> None:
    from medunet.losses import marginal_logits

    torch.manual_seed(3)
    logits = torch.randn(2, 4, 5, 5, 5)
    flags = torch.tensor([[True, False, True, False], [True, True, True, True]])
    p = logits.softmax(1)
    q = marginal_logits(logits, flags).softmax(1)
    torch.testing.assert_close(q[0, 0], p[0, 0] + p[0, 1] + p[0, 3])
    torch.testing.assert_close(q[0, 2], p[0, 2])
    assert float(q[0, 1].max()) == 0.0 and float(q[0, 3].max()) == 0.0
    torch.testing.assert_close(q[1], p[1])  # a fully annotated sample is untouched


def test_partial_label_loss_does_not_punish_predicting_the_unknown_organ() -> None:
    """Raising an unannotated organ's logit where the label reads 0 never raises the loss; a plain loss rises."""
    from medunet.losses import AnnotatedClasses

    torch.manual_seed(1)
    logits = torch.randn(1, 3, 6, 6)
    label = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    label[0, 0, 1:3, 1:3] = 1
    flags = AnnotatedClasses()
    flags.flags = torch.tensor([[True, True, False]])
    partial, plain = build_loss("dicece", annotated=flags), build_loss("dicece")
    louder = logits.clone()
    louder[0, 2][label[0, 0] == 0] += 5.0
    assert float(partial(louder, label)) <= float(partial(logits, label)) + 1e-6
    assert plain(louder, label) > plain(logits, label) + 0.1
    flags.flags = None  # fully annotated data: the wrapped loss exactly
    assert torch.allclose(partial(logits, label), plain(logits, label))


@pytest.mark.parametrize("soft", [False, True])
def test_partial_label_loss_on_a_mixed_patch_reads_the_pasted_unannotated_organ_as_unknown(
    soft: bool,
) -> None:
    """CutMix can paste organ 2's voxels into a patch whose intersected flags say organ 2 is unknown.

    Those voxels must count as background-or-organ-2 (a finite, ordinary loss), not as a target whose
    class was given probability 0 (a loss of about 1e4 with the exclusion loss).
    """
    from medunet.losses import AnnotatedClasses

    torch.manual_seed(4)
    logits = torch.randn(1, 3, 8, 8)
    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    label[0, 0, 0:3, 0:3] = 1
    label[0, 0, 5:8, 5:8] = 2  # pasted from a case that draws organ 2
    target = torch.nn.functional.one_hot(label[:, 0], 3).movedim(-1, 1).float() if soft else label
    flags = AnnotatedClasses()
    flags.flags = torch.tensor([[True, True, False]])
    value = float(build_loss("dicece", annotated=flags)(logits, target))
    expected_label = label.masked_fill(label == 2, 0)
    expected_target = (
        torch.nn.functional.one_hot(expected_label[:, 0], 3).movedim(-1, 1).float()
        if soft
        else expected_label
    )
    assert value < 10.0
    assert value == pytest.approx(
        float(build_loss("dicece", annotated=flags)(logits, expected_target)), abs=1e-6
    )


def test_prepare_batch_publishes_flags_and_cutmix_intersects_them() -> None:
    from medunet.losses import AnnotatedClasses
    from medunet.training.components import PrepareBatch

    flags = AnnotatedClasses()
    batch = {
        "image": torch.zeros(2, 1, 8, 8),
        "label": torch.zeros(2, 1, 8, 8),
        "annotated": torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]),
    }
    PrepareBatch(annotated=flags)(batch)
    assert flags.flags.tolist() == [[True, True, False], [True, False, True]]
    PrepareBatch("cutmix", prob=1.0, annotated=flags)(batch)
    assert flags.flags.tolist() == [[True, False, False], [True, False, False]]


@pytest.mark.parametrize("name", ["dice", "dicece", "dicefocal", "tversky"])
def test_dice_is_computed_over_the_batch_so_a_stray_voxel_in_an_organless_patch_costs_little(
    name: str,
) -> None:
    """Patch 0 holds the organ (predicted perfectly); patch 1 has none, and one voxel is predicted.

    A per-patch Dice scores patch 1's organ 0 (loss ~0.5 on the organ term): small organs, absent from
    most patches, are then pushed towards never being predicted. Batch Dice sees 1 stray voxel
    against a 64-voxel organ.
    """
    labels = torch.zeros(2, 1, 8, 8, 8, dtype=torch.long)
    labels[0, 0, 2:6, 2:6, 2:6] = 1
    predicted = labels.clone()
    predicted[1, 0, 0, 0, 0] = 1
    logits = _perfect_logits(predicted, 2)
    batch = build_loss(name, include_background=False)(logits, labels)
    per_patch = build_loss(name, include_background=False, batch=False)(logits, labels)
    perfect = build_loss(name, include_background=False)(_perfect_logits(labels, 2), labels)
    assert float(batch - perfect) < 0.05  # (cross-entropy pays ~0.02 for the voxel)
    assert float(per_patch - perfect) > 0.2


def test_deep_supervision_weighs_heads_one_half_one_quarter_normalised() -> None:
    """Known answer: heads equal -> the wrapped loss; distinct heads -> (4 L0 + 2 L1 + 1 L2) / 7."""
    from medunet.losses import DeepSupervisionLoss

    torch.manual_seed(5)
    label = torch.randint(0, 3, (2, 1, 6, 6, 6))
    heads = torch.randn(2, 3, 3, 6, 6, 6)
    plain = build_loss("dicece")
    supervised = build_loss("dicece", deep_supervision=True)
    assert isinstance(supervised, DeepSupervisionLoss)
    same = heads[:, :1].expand(-1, 3, -1, -1, -1, -1)
    assert float(supervised(same, label)) == pytest.approx(float(plain(heads[:, 0], label)), abs=1e-6)
    expected = sum(w * float(plain(heads[:, i], label)) for i, w in enumerate((4 / 7, 2 / 7, 1 / 7)))
    assert float(supervised(heads, label)) == pytest.approx(expected, abs=1e-6)
    assert float(supervised(heads[:, 0], label)) == pytest.approx(
        float(plain(heads[:, 0], label))
    )  # one output


def test_deep_supervision_wraps_the_partial_label_loss() -> None:
    """Each head gets the marginal loss of a partially contoured case, not the plain one."""
    from medunet.losses import AnnotatedClasses

    torch.manual_seed(6)
    label = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    label[0, 0, :3] = 1
    flags = AnnotatedClasses()
    flags.flags = torch.tensor([[True, True, False]])
    heads = torch.randn(1, 2, 3, 6, 6)
    partial = build_loss("dicece", annotated=flags)
    supervised = build_loss("dicece", annotated=flags, deep_supervision=True)
    expected = (2 * float(partial(heads[:, 0], label)) + float(partial(heads[:, 1], label))) / 3
    assert float(supervised(heads, label)) == pytest.approx(expected, abs=1e-6)
