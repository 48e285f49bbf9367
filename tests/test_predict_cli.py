"""``medunet predict`` end to end: case folders, DICOM in/SEG out, batch failures, atomicity, safety."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medunet.cli import main
from medunet.inference import Predictor
from medunet.io import Volume, write_nifti
from medunet.plans import Intensity, Plans

LABELS = {0: "background", 1: "liver", 2: "spleen"}
PLANS = Plans(
    labels=LABELS,
    target_spacing=(1.0, 1.0, 2.0),
    patch_size=(16, 16, 8),
    intensity=Intensity("ct_window", 0.0, 100.0),
)
CASE_FILES = {
    "segmentation.nii.gz",
    "labels.txt",
    "review.itksnap",
    "volumes.csv",
    "preview.png",
    "case.json",
}


class BandNet(torch.nn.Module):
    """Known answer: class k where the normalised intensity is near k / 2 (image = 50 * label)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centers = torch.tensor([0.0, 0.5, 1.0]).view(1, -1, *([1] * (x.ndim - 2)))
        return -20.0 * (x - centers) ** 2


@pytest.fixture
def fake_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A checkpoint path whose 'model' is the known-answer network (load is patched)."""
    ckpt = tmp_path / "model" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")

    def from_checkpoint(cls, path, **kw):  # noqa: ANN001
        kw.pop("engine", None), kw.pop("engine_model", None)  # known-answer net runs eagerly (tests/engines)
        paths = [Path(x) for x in ([path] if isinstance(path, str | Path) else path)]
        p = cls([BandNet() for _ in paths], PLANS, **kw)
        p.checkpoint, p.checkpoints, p.checkpoint_sha256 = paths[0], paths, "0" * 64
        return p

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(from_checkpoint))
    return ckpt


def phantom(shape=(20, 18, 10)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[3:10, 4:12, 2:7] = 1
    lab[12:17, 3:8, 3:9] = 2
    return lab


def lps_affine(shape) -> np.ndarray:
    a = np.diag([-1.0, -1.0, 2.0, 1.0])
    a[:3, 3] = (shape[0] - 1, shape[1] - 1, -20.0)
    return a


def write_case_image(path: Path, lab: np.ndarray, affine: np.ndarray) -> Path:
    return write_nifti(path, (lab.astype(np.int16) * 50), affine)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_nifti_batch_writes_complete_cases_on_source_grid(fake_checkpoint: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    lab = phantom()
    affine = lps_affine(lab.shape)
    write_case_image(inputs / "ct_a.nii.gz", lab, affine)
    write_case_image(inputs / "ct_b.nii.gz", lab[::-1].copy(), affine)
    before = tree_hashes(inputs)
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(fake_checkpoint),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--uncertainty",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    assert tree_hashes(inputs) == before  # inputs untouched
    assert sorted(p.name for p in out.iterdir()) == ["ct_a", "ct_b", "review_queue.csv"]
    case = out / "ct_a"
    assert CASE_FILES | {"uncertainty.nii.gz"} == {p.name for p in case.iterdir()}
    seg = nib.load(str(case / "segmentation.nii.gz"))
    assert seg.get_data_dtype() == np.uint8
    assert seg.shape == lab.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-6)
    assert int(seg.header["qform_code"]) == int(seg.header["sform_code"]) == 1
    np.testing.assert_array_equal(np.asarray(seg.dataobj), lab)
    img = sitk.ReadImage(str(inputs / "ct_a.nii.gz"))
    seg_itk = sitk.ReadImage(str(case / "segmentation.nii.gz"))
    np.testing.assert_allclose(img.GetOrigin(), seg_itk.GetOrigin(), atol=1e-5)
    np.testing.assert_allclose(img.GetDirection(), seg_itk.GetDirection(), atol=1e-6)
    record = json.loads((case / "case.json").read_text())
    assert record["image"] == str((inputs / "ct_a.nii.gz").resolve())
    assert record["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    volumes = list(csv.DictReader((case / "volumes.csv").open()))
    assert int(volumes[0]["voxels"]) == int((lab == 1).sum())
    assert float(volumes[0]["volume_ml"]) == pytest.approx((lab == 1).sum() * 2.0 / 1000)
    queue = list(csv.DictReader((out / "review_queue.csv").open()))
    assert len(queue) == 4 and [r["rank"] for r in queue] == ["1", "2", "3", "4"]
    unc = [float(r["mean_uncertainty"]) for r in queue]
    assert unc == sorted(unc, reverse=True)
    assert not list(out.glob(".*"))  # no temp folders left behind


def test_batch_continues_past_bad_case_and_exits_1(fake_checkpoint: Path, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "in"
    lab = phantom()
    write_case_image(inputs / "good.nii.gz", lab, lps_affine(lab.shape))
    (inputs / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a nifti")
    write_case_image(inputs / "zgood.nii.gz", lab, lps_affine(lab.shape))
    out = tmp_path / "out"
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(fake_checkpoint),
            "--input",
            str(inputs),
            "--output",
            str(out),
            "--device",
            "cpu",
        ]
    )
    assert rc == 1
    assert sorted(p.name for p in out.iterdir()) == ["good", "zgood"]  # nothing half-written for broken
    assert {p.name for p in (out / "zgood").iterdir()} >= CASE_FILES
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err and "1 failure" in err


def test_output_inside_input_folder_is_refused(fake_checkpoint: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    lab = phantom()
    write_case_image(inputs / "a.nii.gz", lab, lps_affine(lab.shape))
    rc = main(
        [
            "predict",
            "--checkpoint",
            str(fake_checkpoint),
            "--input",
            str(inputs),
            "--output",
            str(inputs / "preds"),
        ]
    )
    assert rc == 1
    assert not (inputs / "preds").exists()


def test_rerun_replaces_case_atomically_and_failure_keeps_old(
    fake_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medunet.export import case as case_mod

    lab = phantom()
    src = write_case_image(tmp_path / "ct.nii.gz", lab, lps_affine(lab.shape))
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(fake_checkpoint), "--input", str(src), "--output", str(out)]
    assert main(args) == 0
    first = tree_hashes(out / "ct")

    def boom(*a, **k):  # noqa: ANN002, ANN003
        raise OSError("disk full")

    monkeypatch.setattr(case_mod, "write_preview", boom)  # fail midway through the case
    assert main(args) == 1
    assert tree_hashes(out / "ct") == first  # the complete old case is still there
    assert [p.name for p in out.iterdir()] == ["ct"]


def test_dicom_series_to_seg_and_image(fake_checkpoint: Path, tmp_path: Path) -> None:
    import pydicom

    from medunet.io.dicom_write import write_dicom_series

    lab = phantom((20, 18, 6))
    affine = lps_affine(lab.shape)
    study = tmp_path / "Doe_Jane"  # folder names may carry patient names: never used for case names
    write_dicom_series(
        Volume(lab.astype(np.float32) * 50, affine),
        study / "s1",
        patient_name="Doe^Jane",
        series_description="CT abdomen",
    )
    write_dicom_series(
        Volume(lab.astype(np.float32) * 50, affine),
        study / "s2",
        patient_name="Doe^Jane",
        series_description="CT second",
        series_number=2,
    )
    before = tree_hashes(study)
    out = tmp_path / "out"
    base = ["predict", "--checkpoint", str(fake_checkpoint), "--input", str(study), "--output", str(out)]
    assert main(base) == 1  # two series, none chosen: a clear failure, nothing written
    assert not out.exists() or not any(out.iterdir())
    assert main([*base, "--series", "all"]) == 0
    assert tree_hashes(study) == before
    cases = sorted(p.name for p in out.iterdir())
    assert len(cases) == 2 and all("Doe" not in c and "Jane" not in c for c in cases)
    case = out / next(c for c in cases if c.startswith("CT_abdomen"))
    assert CASE_FILES | {"image.nii.gz", "segmentation.dcm"} <= {p.name for p in case.iterdir()}
    img = nib.load(str(case / "image.nii.gz"))
    seg = nib.load(str(case / "segmentation.nii.gz"))
    assert img.shape == seg.shape == lab.shape
    np.testing.assert_allclose(img.affine, seg.affine, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(seg.dataobj), lab)
    ds = pydicom.dcmread(str(case / "segmentation.dcm"))
    assert ds.Modality == "SEG" and len(ds.SegmentSequence) == 2
    record = json.loads((case / "case.json").read_text())
    assert record["image"] == "image.nii.gz" and "Doe" not in json.dumps(
        {k: v for k, v in record.items() if k not in ("source",)}
    )


def test_real_checkpoint_from_bundle_models_dir(tmp_path: Path) -> None:
    """No patching: a tiny real network saved as <bundle>/models/best.pt is found and run."""
    from medunet.networks import build_network
    from medunet.training.checkpoint import save_checkpoint

    plans = Plans(
        labels=LABELS,
        target_spacing=(2.0, 2.0, 2.0),
        patch_size=(32, 32, 32),
        network_kwargs={"size": "tiny"},
    )
    net = build_network(plans.network, 3, 1, plans.num_classes, size="tiny")
    bundle = tmp_path / "bundle"
    save_checkpoint(bundle / "models" / "best.pt", {"model": net.state_dict(), "plans": plans.to_dict()})
    lab = phantom()
    src = write_case_image(tmp_path / "ct.nii.gz", lab, lps_affine(lab.shape))
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--bundle",
                str(bundle),
                "--input",
                str(src),
                "--output",
                str(out),
                "--device",
                "cpu",
                "--largest-component",
                "--fill-holes",
            ]
        )
        == 0
    )
    seg = nib.load(str(out / "ct" / "segmentation.nii.gz"))
    assert seg.shape == lab.shape and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1, 2}
    record = json.loads((out / "ct" / "case.json").read_text())
    sidecar = (bundle / "models" / "best.pt.sha256").read_text().split()[0]
    assert record["checkpoint_sha256"] == sidecar
    assert record["options"]["largest_component"] is True


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path, capsys) -> None:
    lab = phantom()
    src = write_case_image(tmp_path / "ct.nii.gz", lab, lps_affine(lab.shape))
    rc = main(
        [
            "predict",
            "--bundle",
            str(tmp_path / "nobundle"),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 1 and "--checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,overlap,crop",
    [([], 0.25, True), (["--overlap", "0.5", "--no-crop"], 0.5, False)],
)
def test_cli_uses_predictor_defaults_unless_told(
    fake_checkpoint, tmp_path, monkeypatch, extra, overlap, crop
):
    """Without flags the CLI must not override the Predictor's fast defaults (overlap, body crop)."""
    seen = {}
    real_init = Predictor.__init__

    def spy(self, *a, **kw):  # noqa: ANN001
        real_init(self, *a, **kw)
        seen.update(overlap=self.overlap, crop=kw.get("crop_foreground"))

    monkeypatch.setattr(Predictor, "__init__", spy)
    inputs = tmp_path / "in"
    lab = phantom()
    write_case_image(inputs / "ct.nii.gz", lab, lps_affine(lab.shape))
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(fake_checkpoint), "--input", str(inputs), "--output", str(out)]
    assert main([*args, "--device", "cpu", *extra]) == 0
    assert seen["overlap"] == overlap
    assert seen["crop"] in ((None, True) if crop else (False,))
    record = json.loads((out / "ct" / "case.json").read_text())
    assert record["options"]["overlap"] == overlap


def _constant_checkpoint(path: Path, plans: Plans, probs: tuple[float, ...]) -> Path:
    """A real registry network whose output is ``log(probs)`` everywhere: every weight zero, the last
    layer's bias set (zero activations stay zero through convolutions, instance norm and PReLU)."""
    from medunet.networks import build_network
    from medunet.training.checkpoint import save_checkpoint

    net = build_network(plans.network, 3, 1, plans.num_classes, **plans.network_kwargs)
    state = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    last_bias = [k for k, v in state.items() if k.endswith(".bias") and v.shape == (plans.num_classes,)][-1]
    state[last_bias] = torch.tensor(probs).log()
    net.load_state_dict(state)
    with torch.inference_mode():
        out = net.eval()(torch.randn(1, 1, 32, 32, 32))
    torch.testing.assert_close(out, torch.tensor(probs).log().view(1, -1, 1, 1, 1).expand_as(out))
    return save_checkpoint(path, {"model": state, "plans": plans.to_dict()})


def test_two_checkpoints_are_an_ensemble_of_averaged_probabilities(tmp_path: Path) -> None:
    """README / bundle README: several ``--checkpoint`` files are an ensemble, class probabilities averaged.

    Real checkpoints, no patching: A says (0.55, 0.05, 0.40) everywhere, B (0.05, 0.55, 0.40). Each alone
    labels 0 / 1; the ensemble labels 2 (mean 0.30, 0.30, 0.40), and its uncertainty is the entropy of the
    mean."""
    plans = Plans(
        labels=LABELS,
        target_spacing=(2.0, 2.0, 2.0),
        patch_size=(32, 32, 32),
        network_kwargs={"size": "tiny"},
    )
    a = _constant_checkpoint(tmp_path / "a.pt", plans, (0.55, 0.05, 0.40))
    b = _constant_checkpoint(tmp_path / "b.pt", plans, (0.05, 0.55, 0.40))
    shape = (12, 10, 8)
    src = write_nifti(tmp_path / "ct.nii.gz", np.full(shape, 40, np.int16), np.diag([2.0, 2.0, 2.0, 1.0]))

    def predict(out: Path, *checkpoints: Path) -> tuple[np.ndarray, np.ndarray]:
        args = ["predict", "--checkpoint", *map(str, checkpoints), "--input", str(src), "--output", str(out)]
        assert main([*args, "--uncertainty", "--device", "cpu", "--precision", "fp32"]) == 0
        seg = nib.load(str(out / "ct" / "segmentation.nii.gz"))
        unc = np.asarray(nib.load(str(out / "ct" / "uncertainty.nii.gz")).dataobj)
        return np.asarray(seg.dataobj), unc

    assert set(np.unique(predict(tmp_path / "out_a", a)[0])) == {0}
    assert set(np.unique(predict(tmp_path / "out_b", b)[0])) == {1}
    labels, uncertainty = predict(tmp_path / "out_ab", a, b)
    assert labels.shape == shape and set(np.unique(labels)) == {2}
    mean = np.array([0.30, 0.30, 0.40])
    np.testing.assert_allclose(uncertainty, -(mean * np.log(mean)).sum() / np.log(3), atol=1e-5)
    record = json.loads((tmp_path / "out_ab" / "ct" / "case.json").read_text())
    assert str(b.name) in json.dumps(record)  # both members recorded
