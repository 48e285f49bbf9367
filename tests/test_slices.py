"""2.5D: a 2D network sees its slice's neighbours as channels, built the same way in training,
validation and inference (known-answer networks that read one particular neighbour)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medunet.data.datalist import Datalist
from medunet.errors import ConfigError
from medunet.inference import Predictor
from medunet.io import Volume, read_image
from medunet.plans import Intensity, Plans
from medunet.slices import SliceStackInferer, axial_stacks, stack_patch
from medunet.training.environment import TrainingEnv
from medunet.training.planning import AUTO_CONTEXT_SLICES, make_plans
from medunet.training.validation import Validator
from medunet.transforms import IMAGE, INDICES, LABEL, Augmentation, train_random_transforms

LABELS = {0: "background", 1: "organ"}


def _plans(context: int, spacing=(1.0, 1.0, 1.0)) -> Plans:
    return Plans(
        labels=LABELS,
        target_spacing=spacing,
        patch_size=(16, 16),
        spatial_dims=2,
        intensity=Intensity("ct_window", 0.0, 100.0),
        context_slices=context,
    )


class NeighbourNet(torch.nn.Module):
    """Known answer: 'organ' wherever the slice ``offset`` above (RAS +z) the segmented one is bright.

    Input channel ``context + offset`` of a 2.5D stack is that neighbour; a stack built in the wrong
    order, or from the wrong side, labels a different slice.
    """

    def __init__(self, context: int, offset: int) -> None:
        super().__init__()
        self.channel = context + offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        organ = 20.0 * (x[:, self.channel : self.channel + 1] - 0.5)
        return torch.cat([torch.zeros_like(organ), organ], dim=1)


def _stripes(shape=(12, 10, 9)) -> np.ndarray:
    """A different in-plane shape on every slice, so a label taken from the wrong slice is visible."""
    mask = np.zeros(shape, dtype=np.uint8)
    for z in range(shape[2]):
        mask[z % 5 : z % 5 + 4, 1 + (z % 3) : 6 + (z % 3), z] = 1
    mask[:, :, 4] = 0  # an empty slice in the middle
    return mask


def test_axial_stacks_channel_order_and_repeated_edges() -> None:
    volume = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    stacks = axial_stacks(volume, 1, 4, 2)
    assert stacks.shape == (3, 10, 3, 4)
    for n, z in enumerate(range(1, 4)):
        for c in range(2):
            for j, dz in enumerate(range(-2, 3)):
                source = min(max(z + dz, 0), 5)
                assert torch.equal(stacks[n, c * 5 + j], volume[c, :, :, source])
    # Without context: the plain slices as a batch, channels unchanged.
    assert torch.equal(axial_stacks(volume, 0, 6, 0), volume.permute(3, 0, 1, 2))
    # A training crop of 5 slices centred on z=2 is the stack of slice 2.
    assert torch.equal(stack_patch(volume[..., 0:5]), axial_stacks(volume, 2, 3, 2)[0])


@pytest.mark.parametrize("flip_z", [False, True], ids=["superior-up", "inferior-up"])
@pytest.mark.parametrize("offset", [1, -2])
def test_predictor_segments_from_the_neighbour_the_network_reads(flip_z: bool, offset: int) -> None:
    """The neighbour one slice *superior* is the same anatomy whatever the file's slice order."""
    mask = _stripes()
    depth = mask.shape[2]
    affine = np.diag([1.0, 1.0, -1.0 if flip_z else 1.0, 1.0])
    image = Volume(
        (mask * 100).astype(np.int16)[..., ::-1] if flip_z else (mask * 100).astype(np.int16), affine
    )
    ras_mask = mask  # in RAS slice order (superior last)
    expected_ras = np.stack(
        [ras_mask[..., min(max(z + offset, 0), depth - 1)] for z in range(depth)], axis=-1
    )
    expected = expected_ras[..., ::-1] if flip_z else expected_ras
    predictor = Predictor(NeighbourNet(2, offset), _plans(2), device="cpu", slice_batch_size=4)
    labels = predictor.predict(image).labels
    np.testing.assert_array_equal(labels, expected)


def test_validation_builds_the_stack_the_predictor_builds() -> None:
    mask = _stripes()
    image = torch.as_tensor(mask, dtype=torch.float32)[None]  # already normalised: 0 / 1
    plans = _plans(2)
    validator = Validator([{"image": image, "label": torch.as_tensor(mask)[None], "case_id": "a"}], plans)
    assert isinstance(validator.inferer, SliceStackInferer)
    ((_, pred, _, _),) = validator.predictions(NeighbourNet(2, 1))
    depth = mask.shape[2]
    expected = np.stack([mask[..., min(z + 1, depth - 1)] for z in range(depth)], axis=-1)
    np.testing.assert_array_equal(pred, expected)
    # The Predictor on the same volume (identity grid, window [0, 100]) gives the same labels.
    predicted = Predictor(NeighbourNet(2, 1), plans, device="cpu").predict(Volume(mask * 100, np.eye(4)))
    np.testing.assert_array_equal(predicted.labels, expected)


def test_training_patch_stacks_neighbours_and_labels_the_centre_slice() -> None:
    """Image slice z has intensity z / 10 and the label marks one slice: the crop's channels are the
    consecutive slices around the labelled centre, and the label is the centre slice's."""
    shape = (20, 20, 12)
    image = torch.arange(shape[2], dtype=torch.float32).expand(*shape).clone()[None] / 10
    label = torch.zeros((1, *shape), dtype=torch.uint8)
    label[0, 8:12, 8:12, 7] = 1
    plans = _plans(2)
    data = {IMAGE: image, LABEL: label}
    from monai.transforms import ClassesToIndicesd

    data = ClassesToIndicesd(LABEL, num_classes=2, indices_postfix="_cls_indices")(data)
    assert INDICES in data
    aug = Augmentation(
        num_samples=6, affine_prob=0.0, intensity_prob=0.0, flip_prob=0.0, class_ratios=(0.0, 1.0)
    )
    patches = train_random_transforms(plans, aug)(data)
    for patch in patches:
        assert patch[IMAGE].shape == (5, 16, 16)
        assert patch[LABEL].shape == (1, 16, 16)
        # The organ class was sampled: the centre slice is slice 7, channels are slices 5..9.
        np.testing.assert_allclose(patch[IMAGE][:, 0, 0].numpy(), np.arange(5, 10) / 10, atol=1e-6)
        assert int(patch[LABEL].sum()) == 16


def test_plans_keep_context_and_refuse_it_for_3d() -> None:
    plans = _plans(2)
    assert plans.network_in_channels == 5
    assert Plans.from_dict(plans.to_dict()) == plans
    old = plans.to_dict()
    del old["context_slices"]  # plans written before 2.5D existed load as single-slice models
    assert Plans.from_dict(old).context_slices == 0
    with pytest.raises(ConfigError, match="context_slices"):
        Plans(labels=LABELS, target_spacing=(1, 1, 1), patch_size=(8, 8, 8), spatial_dims=3, context_slices=1)


def _planned(dims: int, context: int | str):
    from tests.training.test_planning import _fine_fingerprint

    labels = {0: "background", 1: "liver", 2: "spleen"}
    datalist = Datalist(name="d", root=Path("."), labels=labels, modalities={0: "CT"})
    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    return make_plans(
        datalist, _fine_fingerprint((1.0, 1.0, 3.0)), env, spatial_dims=dims, context_slices=context
    )


@pytest.mark.parametrize(
    ("dims", "requested", "expected"),
    [(2, "auto", 0), (3, "auto", 0), (2, 0, 0), (2, 2, 2), (2, "3", 3)],
)
def test_planner_context_default_and_override(dims: int, requested: int | str, expected: int) -> None:
    plans = _planned(dims, requested)
    assert plans.context_slices == expected
    assert plans.rationale["context_slices"]
    assert plans.network_in_channels == 2 * expected + 1
    # The measured default: single slices (2.5D scored lower on validation, bundle README Results).
    assert AUTO_CONTEXT_SLICES == 0


@pytest.mark.parametrize("bad", [(3, 2), (2, -1), (2, "two")])
def test_planner_refuses_bad_context(bad: tuple[int, int | str]) -> None:
    with pytest.raises(ConfigError, match="context_slices"):
        _planned(*bad)


def test_ensemble_members_must_share_the_slice_context(tmp_path: Path) -> None:
    from dataclasses import replace

    from medunet.networks import build_network, resolve_network_kwargs
    from medunet.training.checkpoint import save_checkpoint

    kwargs = resolve_network_kwargs("unet", 2, size="small")
    paths = []
    for context in (0, 2):
        plans = replace(_plans(context), network_kwargs=kwargs)
        net = build_network("unet", 2, plans.network_in_channels, 2, **kwargs)
        path = tmp_path / f"c{context}.pt"
        save_checkpoint(path, {"model": net.state_dict(), "plans": plans.to_dict()})
        paths.append(path)
    with pytest.raises(Exception, match="preprocesses differently"):
        Predictor.from_checkpoint(paths, device="cpu")


def test_exported_engine_and_int8_calibration_take_the_stack(tmp_path: Path) -> None:
    """A 2.5D checkpoint exports with ``C * (2c + 1)`` input channels, ONNX Runtime reproduces its
    labels through the Predictor, and int8 calibration windows carry the same stack."""
    from dataclasses import replace

    from medunet.engines import runtime_available
    from medunet.engines.calibration import build_calibration_set
    from medunet.engines.export import export_checkpoint
    from medunet.io import write_nifti
    from medunet.networks import build_network, resolve_network_kwargs
    from medunet.training.checkpoint import save_checkpoint

    if not runtime_available("onnxruntime"):
        pytest.skip("onnxruntime is not installed here (pip install 'medunet[engines]')")
    kwargs = resolve_network_kwargs("unet", 2, size="tiny")
    plans = replace(_plans(2), network_kwargs=kwargs, patch_size=(32, 32))
    torch.manual_seed(0)
    net = build_network("unet", 2, plans.network_in_channels, 2, **kwargs)
    ckpt = tmp_path / "best.pt"
    save_checkpoint(ckpt, {"model": net.state_dict(), "plans": plans.to_dict()})
    artifact = export_checkpoint(ckpt, "onnx", tmp_path / "onnx")
    assert artifact.meta["input"]["channels"] == 5
    image = tmp_path / "img.nii.gz"
    write_nifti(image, (_stripes((40, 36, 9)) * 100).astype(np.int16), np.eye(4))
    volume = read_image(image)
    torch_labels = Predictor.from_checkpoint(ckpt, device="cpu", amp=False).predict(volume).labels
    engine_labels = (
        Predictor.from_checkpoint(ckpt, device="cpu", engine="onnxruntime", engine_model=artifact.directory)
        .predict(volume)
        .labels
    )
    assert (torch_labels == engine_labels).mean() > 0.999
    calibration = build_calibration_set(tmp_path, plans, patches_per_case=2)
    assert calibration.patches and all(p.shape == (1, 5, 32, 32) for p in calibration.patches)
