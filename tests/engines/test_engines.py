"""Inference engines: export, then the same Predictor with only the network forward swapped.

Each CPU engine (TorchScript, ONNX Runtime, OpenVINO) runs a trained 3D and a 2D UNet on a held-out
left/right-asymmetric volume and must give PyTorch's labels. TorchScript runs the same kernels and is
compared voxel for voxel; ONNX Runtime and OpenVINO use their own convolution kernels (summation order
differs: logits agree to ~1e-5), so a voxel whose two top classes tie that closely may flip: they must
reach per-label Dice >= 0.99 against PyTorch (in practice 1.0 here). Engines not installed are skipped.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medunet.cli import main
from medunet.engines import EngineArtifact, runtime_available
from medunet.engines.export import export_checkpoint
from medunet.errors import EngineError, EngineMismatchError, EngineUnavailableError
from medunet.inference import Predictor
from medunet.io import read_image
from medunet.training.checkpoint import load_checkpoint, save_checkpoint

CPU_ENGINES = {"torchscript": "torchscript", "onnxruntime": "onnx", "openvino": "openvino"}


def dice_per_label(a: np.ndarray, b: np.ndarray, labels=(1, 2, 3)) -> dict[int, float]:
    out = {}
    for k in labels:
        x, y = a == k, b == k
        denom = int(x.sum() + y.sum())
        out[k] = 1.0 if denom == 0 else 2.0 * int((x & y).sum()) / denom
    return out


def need(engine: str) -> None:
    if not runtime_available(engine):
        pytest.skip(f"{engine} is not installed here (pip install 'medunet[engines]')")


@pytest.fixture(scope="session")
def exports(tmp_path_factory: pytest.TempPathFactory):
    """``exports(model, fmt)``: one export per (model, format) per session."""
    done: dict[tuple[Path, str], EngineArtifact] = {}
    root = tmp_path_factory.mktemp("exports")

    def get(model, fmt: str) -> EngineArtifact:
        key = (model.checkpoint, fmt)
        if key not in done:
            out = root / f"{model.checkpoint.parent.name}_{fmt}"
            done[key] = export_checkpoint(model.checkpoint, fmt, out)
        return done[key]

    return get


@pytest.mark.parametrize("dims", [3, 2])
@pytest.mark.parametrize("engine", list(CPU_ENGINES))
def test_engine_labels_equal_pytorch(engine: str, dims: int, request, exports) -> None:
    need(engine)
    model = request.getfixturevalue(f"model{dims}d")
    assert len(np.unique(model.reference)) == 4  # a real multi-organ answer, not all background
    artifact = exports(model, CPU_ENGINES[engine])
    check = artifact.meta["export_check"]
    assert check["max_abs_logit_diff"] < 1e-3 and check["argmax_agreement"] == 1.0
    predictor = Predictor.from_checkpoint(
        model.checkpoint, engine=engine, engine_model=artifact.directory, device="cpu"
    )
    assert predictor.engine == engine and predictor.plans == model.plans
    labels = predictor.predict(read_image(model.volume_path)).labels
    assert labels.shape == model.reference.shape
    dice = dice_per_label(labels, model.reference)
    if engine == "torchscript":
        np.testing.assert_array_equal(labels, model.reference)
    else:
        assert min(dice.values()) >= 0.99, dice
    # left/right asymmetric: the mirrored answer is a different one (a flipped axis would show)
    assert min(dice_per_label(labels[::-1], model.reference).values()) < 0.9


@pytest.mark.parametrize("dims", [3, 2])
def test_bf16_autocast_keeps_the_fp32_labels(dims: int, request) -> None:
    """The CPU default (bf16 autocast, channels-last in 3D, where the CPU has native bf16) keeps the
    fp32 answer: a voxel may change label only where fp32 itself was nearly tied (top-two probability
    margin < 0.1: bf16 keeps about 3 significant digits), most voxels agree, and left organs stay left.

    A per-label Dice bound alone cannot tell bf16 rounding from a wrong kernel on a tiny organ: one
    boundary voxel of a 40-voxel kidney is 0.01 Dice.
    """
    from medunet.inference.predictor import cpu_has_bf16

    if not cpu_has_bf16():
        pytest.skip("this CPU has no avx512_bf16/amx_bf16: the default stays fp32")
    model = request.getfixturevalue(f"model{dims}d")
    volume = read_image(model.volume_path)
    fp32 = Predictor.from_checkpoint(model.checkpoint, device="cpu", amp=False).predict(
        volume, return_probabilities=True
    )
    predictor = Predictor.from_checkpoint(model.checkpoint, device="cpu")  # amp=None: the default
    assert predictor.amp and predictor.channels_last == (dims == 3)
    labels = predictor.predict(volume).labels
    assert fp32.probabilities is not None
    top2 = np.sort(fp32.probabilities, axis=0)[-2:]
    margin = top2[1] - top2[0]
    changed = labels != fp32.labels
    assert changed.mean() < 0.01
    assert float(margin[changed].max(initial=0.0)) < 0.1
    assert min(dice_per_label(labels, fp32.labels).values()) >= 0.95
    assert min(dice_per_label(labels[::-1], model.reference).values()) < 0.9


def test_a_named_engine_refuses_bf16_autocast(model2d, exports) -> None:
    need("onnxruntime")
    artifact = exports(model2d, "onnx")
    with pytest.raises(ValueError, match="exported precision"):
        Predictor.from_checkpoint(
            model2d.checkpoint, engine="onnxruntime", engine_model=artifact.directory, device="cpu", amp=True
        )


def test_artefact_layout_and_metadata(model3d, exports) -> None:
    need("onnxruntime")
    artifact = exports(model3d, "onnx")
    assert sorted(p.name for p in artifact.directory.iterdir()) == ["medunet_engine.json", "model.onnx"]
    meta = json.loads((artifact.directory / "medunet_engine.json").read_text())
    assert meta["format"] == "medunet-engine/1" and meta["engine_format"] == "onnx"
    assert meta["precision"] == "fp32" and meta["int8"] is None
    assert meta["exporter"]["opset"] == 17 and meta["input"]["name"] == "image"
    plans = meta["plans"]
    assert plans["labels"]["2"] == "left_kidney" and plans["patch_size"] == [32, 32, 16]
    assert plans["target_spacing"] == [2.0, 2.0, 3.0] and plans["intensity"]["kind"] == "ct_window"
    assert plans["network_kwargs"] == {"size": "tiny"}
    assert meta["checkpoint"]["sha256"] == (model3d.checkpoint.parent / "best.pt.sha256").read_text().strip()
    assert len(meta["plans_sha256"]) == 64 and len(meta["files"]["model.onnx"]) == 64


def test_artefact_refuses_tampered_or_mismatched_plans(model3d, model2d, exports, tmp_path) -> None:
    need("onnxruntime")
    src = exports(model3d, "onnx").directory
    # plans edited after export: their hash no longer matches
    tampered = tmp_path / "tampered"
    shutil.copytree(src, tampered)
    meta = json.loads((tampered / "medunet_engine.json").read_text())
    meta["plans"]["target_spacing"] = [1.0, 1.0, 1.0]
    (tampered / "medunet_engine.json").write_text(json.dumps(meta))
    with pytest.raises(EngineMismatchError, match="plans were modified"):
        EngineArtifact.load(tampered)
    # model file replaced
    swapped = tmp_path / "swapped"
    shutil.copytree(src, swapped)
    (swapped / "model.onnx").write_bytes((swapped / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(EngineMismatchError, match="engine file changed"):
        EngineArtifact.load(swapped)
    # another checkpoint, other plans: the differing fields are named
    with pytest.raises(EngineMismatchError, match="patch_size.*spatial_dims"):
        Predictor.from_checkpoint(model2d.checkpoint, engine="onnxruntime", engine_model=src, device="cpu")
    # another checkpoint, same plans (other weights)
    state = load_checkpoint(model3d.checkpoint)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    other = save_checkpoint(tmp_path / "other.pt", {"model": state["model"], "plans": state["plans"]})
    with pytest.raises(EngineMismatchError, match="exported from another checkpoint"):
        Predictor.from_checkpoint(other, engine="onnxruntime", engine_model=src, device="cpu")
    # an engine that cannot run the format
    with pytest.raises(EngineError, match="cannot run a 'onnx' artefact"):
        Predictor.from_engine(src, engine="torchscript", device="cpu")


def test_cli_export_then_predict(model3d, model2d, tmp_path) -> None:
    need("onnxruntime")
    out = tmp_path / "engine"
    rc = main(["export", "--checkpoint", str(model3d.checkpoint), "--format", "onnx", "--output", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} == {"model.onnx", "medunet_engine.json"}
    cases = tmp_path / "cases"
    argv = ["predict", "--input", str(model3d.volume_path), "--output", str(cases), "--device", "cpu"]
    assert main([*argv, "--engine", "onnxruntime", "--engine-model", str(out)]) == 0
    folder = cases / "case_003"
    labels = read_image(folder / "segmentation.nii.gz").array
    assert min(dice_per_label(labels, model3d.reference).values()) >= 0.99
    case = json.loads((folder / "case.json").read_text())
    assert json.dumps(case).count('"onnxruntime"') >= 1  # the engine is recorded with the case
    # a mismatched checkpoint with the artefact: refused with a typed error (exit 1, no case written)
    other = ["--checkpoint", str(model2d.checkpoint), "--engine", "onnxruntime", "--engine-model", str(out)]
    assert main([*argv[:4], str(tmp_path / "cases2"), "--device", "cpu", *other]) == 1
    assert not (tmp_path / "cases2" / "case_003").exists()


def test_int8_onnxruntime_close_to_fp32(model3d, tiny_ct, tmp_path) -> None:
    need("onnxruntime")
    artifact = export_checkpoint(
        model3d.checkpoint, "onnx", tmp_path / "int8", int8=True, calibration=tiny_ct
    )
    assert artifact.precision == "int8"
    info = artifact.meta["int8"]
    assert info["calibration"]["dataset"] == str(tiny_ct) and info["calibration"]["patches"] > 0
    assert info["calibration"]["cases"] and info["format"] == "QDQ"
    predictor = Predictor.from_checkpoint(
        model3d.checkpoint, engine="onnxruntime", engine_model=artifact.directory, device="cpu"
    )
    labels = predictor.predict(read_image(model3d.volume_path)).labels
    dice = dice_per_label(labels, model3d.reference)
    print(f"int8 onnxruntime per-label Dice vs fp32 PyTorch: {dice}")
    assert min(dice.values()) >= 0.8, dice  # loose floor: 8-bit activations of a briefly trained net


def test_tensorrt_without_cuda_is_a_typed_error(model3d, tmp_path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU test covers TensorRT")
    with pytest.raises(EngineUnavailableError, match="CUDA"):
        export_checkpoint(model3d.checkpoint, "tensorrt", tmp_path / "trt")
    with pytest.raises(EngineUnavailableError, match="CUDA"):
        Predictor.from_checkpoint(model3d.checkpoint, engine="tensorrt")
    assert not (tmp_path / "trt").exists()
    rc = main(
        ["export", "--checkpoint", str(model3d.checkpoint), "--format", "tensorrt", "-o", str(tmp_path / "t")]
    )
    assert rc == 1


def test_int8_torchscript_refused(model3d, tiny_ct, tmp_path) -> None:
    with pytest.raises(EngineError, match="int8"):
        export_checkpoint(model3d.checkpoint, "torchscript", tmp_path / "ts", int8=True, calibration=tiny_ct)


@pytest.mark.gpu
def test_tensorrt_labels_equal_pytorch(model3d, tmp_path) -> None:
    pytest.importorskip("tensorrt", reason="tensorrt is not installed")
    artifact = export_checkpoint(model3d.checkpoint, "tensorrt", tmp_path / "trt")
    assert artifact.meta["tensorrt"]["gpu"]
    predictor = Predictor.from_checkpoint(
        model3d.checkpoint, engine="tensorrt", engine_model=artifact.directory, device="cuda"
    )
    labels = predictor.predict(read_image(model3d.volume_path)).labels
    assert min(dice_per_label(labels, model3d.reference).values()) >= 0.99


def test_inference_json_forwards_engine(model3d, tmp_path) -> None:
    need("onnxruntime")
    from monai.bundle import run

    bundle = Path(__file__).resolve().parents[2] / "bundles" / "ct_organs"
    assert json.loads((bundle / "inference.json").read_text())["engine"] == "auto"
    out = tmp_path / "preds"
    run(
        "inference",
        config_file=str(bundle / "inference.json"),
        meta_file=str(bundle / "metadata.json"),
        checkpoint=str(model3d.checkpoint),
        input=str(model3d.volume_path),
        output_dir=str(out),
        device="cpu",
        engine="onnxruntime",
    )
    labels = read_image(out / "case_003_seg.nii.gz").array
    assert min(dice_per_label(labels, model3d.reference).values()) >= 0.99
