"""The ct_organs bundle end to end with a tiny network: train, reload, resume, 2D->3D, bad input, metadata."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from tiny_data import BUNDLE, make_tiny_ct_dataset, run_bundle

from medunet.errors import GeometryMismatchError, InvalidImageError, MedunetError
from medunet.plans import Plans
from medunet.training import check_pairs, load_checkpoint, load_model, resolve_dataset


def _metrics(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "metrics.csv").open()))


def _cause(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    while exc is not None:
        if isinstance(exc, kind):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def test_training_learns_and_checkpoint_reloads(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    run_bundle(tiny_dataset, out, max_epochs=4, learning_rate=0.01)
    rows = _metrics(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < losses[0] * 0.9, losses
    for name in ("best.pt", "last.pt", "plans.json", "split.json", "fingerprint.json", "val_cases.csv"):
        assert (out / name).is_file(), name
    net, plans = load_model(out / "last.pt")
    assert plans.patch_size == (32, 32, 32) and plans.num_classes == 4
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 4, 32, 32, 32)
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 4 and state["iteration"] == 4 * 2  # 4 train cases / batch 2
    assert {"optimizer", "scheduler", "rng", "best_metric", "plans"} <= set(state)
    assert Plans.load(out / "plans.json") == Plans.from_dict(state["plans"]) == plans
    assert -1.0 < state["best_metric"] <= 1.0


def test_resume_continues_the_epoch_count(tiny_dataset, tmp_path):
    out = tmp_path / "run"
    run_bundle(tiny_dataset, out, max_epochs=2)
    run_bundle(tiny_dataset, out, max_epochs=4, resume=True)
    assert [int(r["epoch"]) for r in _metrics(out)] == [1, 2, 3, 4]
    assert load_checkpoint(out / "last.pt")["epoch"] == 4
    # Rolling resume points: only the newest two are kept.
    assert sorted(p.name for p in out.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0004.pt"]
    # Fine-tuning from that run: a fresh epoch count, and the source plans win over new overrides.
    tuned = tmp_path / "tuned"
    run_bundle(tiny_dataset, tuned, max_epochs=1, init_from=str(out / "last.pt"), patch_size=[48, 48, 48])
    assert load_checkpoint(tuned / "last.pt")["epoch"] == 1
    # (Post-processing is chosen afresh for the tuned model on its own validation predictions.)
    tuned_plans, source_plans = Plans.load(tuned / "plans.json"), Plans.load(out / "plans.json")
    assert dataclasses.replace(tuned_plans, postprocessing={}, rationale={}) == dataclasses.replace(
        source_plans, postprocessing={}, rationale={}
    )
    assert tuned_plans.patch_size == (32, 32, 32)


@pytest.mark.parametrize("context", [0, 2], ids=["single-slice", "2.5D"])
def test_2d_network_gives_3d_masks_on_the_source_grid(tmp_path, context: int):
    from medunet.evaluation import evaluate_run, infer

    data = make_tiny_ct_dataset(tmp_path / "ds", n_cases=4)
    # A test image stored L-P-I with its own origin: the mask must come back on exactly that grid.
    src = nib.load(data / "imagesTr" / "case_000.nii.gz")
    arr = np.asarray(src.dataobj)[::-1, ::-1, ::-1].copy()
    affine = np.diag([-2.0, -2.0, -3.0, 1.0])
    affine[:3, 3] = [80.0, 80.0, 70.0]
    nib.save(nib.Nifti1Image(arr, affine), tmp_path / "test_lpi.nii.gz")
    out = tmp_path / "run2d"
    run_bundle(
        data, out, max_epochs=2, spatial_dims=2, patch_size=[32, 32], num_samples=4, context_slices=context
    )
    plans = load_checkpoint(out / "last.pt")["plans"]
    assert plans["spatial_dims"] == 2 and plans["context_slices"] == context
    assert Plans.load(out / "plans.json").network_in_channels == 2 * context + 1
    report = infer(out / "last.pt", tmp_path / "test_lpi.nii.gz", tmp_path / "pred", device="cpu")
    seg_path = tmp_path / "pred" / "test_lpi_seg.nii.gz"
    assert report.outputs == [seg_path]
    seg, img = sitk.ReadImage(str(seg_path)), sitk.ReadImage(str(tmp_path / "test_lpi.nii.gz"))
    assert seg.GetSize() == img.GetSize() == arr.shape
    assert np.allclose(seg.GetOrigin(), img.GetOrigin()) and np.allclose(
        seg.GetDirection(), img.GetDirection()
    )
    assert np.allclose(seg.GetSpacing(), img.GetSpacing())
    assert sitk.GetArrayFromImage(seg).dtype == np.uint8
    assert set(np.unique(sitk.GetArrayFromImage(seg)).tolist()) <= {0, 1, 2, 3}
    # evaluate.json's entry: the run's held-out cases scored on their original grid.
    summary = evaluate_run(out / "last.pt", tmp_path / "eval", dataset_dir=data, run_dir=out, device="cpu")
    val_ids = json.loads((out / "split.json").read_text())["val"]  # no test split -> validation cases
    rows = list(csv.DictReader((tmp_path / "eval" / "per_case.csv").open()))
    assert {r["case_id"] for r in rows} == set(val_ids) and len(rows) == 3 * len(val_ids)
    assert set(summary) == {"liver", "left_kidney", "right_kidney", "mean"}
    assert {"dice_mean", "dice_std", "hd95_mean", "n_empty_ref", "n_empty_pred"} <= set(summary["liver"])
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["liver"]["n"] == len(val_ids)


def test_unreadable_file_fails_before_training_naming_the_file(tiny_dataset, tmp_path):
    bad = tiny_dataset / "imagesTr" / "case_002.nii.gz"
    bad.write_bytes(b"not a nifti file at all")
    with pytest.raises(InvalidImageError, match="case_002"):
        check_pairs(resolve_dataset(tiny_dataset).training)
    out = tmp_path / "run"
    with pytest.raises(Exception) as info:  # noqa: PT011 -- the bundle wraps it; the cause is typed
        run_bundle(tiny_dataset, out, max_epochs=1)
    cause = _cause(info.value, MedunetError)
    assert isinstance(cause, InvalidImageError) and "case_002" in str(cause)
    assert not list(out.glob("*.pt"))


def test_label_on_another_grid_is_a_typed_error(tiny_dataset):
    lab = tiny_dataset / "labelsTr" / "case_001.nii.gz"
    img = nib.load(lab)
    shifted = img.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj), shifted), lab)
    with pytest.raises(GeometryMismatchError, match=r"case_001.*grid differs"):
        check_pairs(resolve_dataset(tiny_dataset).training)


def test_metadata_verifies_offline():
    """What ``python -m monai.bundle verify_metadata --filepath <local schema>`` runs; no download."""
    from monai.bundle import verify_metadata

    verify_metadata(
        meta_file=str(BUNDLE / "metadata.json"), filepath=str(BUNDLE / "schema" / "meta_schema.json")
    )
    meta = json.loads((BUNDLE / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["num_channels"] == 6


def test_metadata_schema_rejects_missing_fields(tmp_path):
    meta = json.loads((BUNDLE / "metadata.json").read_text())
    del meta["network_data_format"]
    (tmp_path / "bad.json").write_text(json.dumps(meta))
    from monai.bundle import verify_metadata

    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(
            meta_file=str(tmp_path / "bad.json"), filepath=str(BUNDLE / "schema" / "meta_schema.json")
        )
