"""``engine="auto"``: OpenVINO on a CPU where it is installed, PyTorch elsewhere; exports cached per checkpoint.

``medunet predict`` and ``inference.json`` default to ``auto``. The choice is a known answer of the
device, the number of models, native bf16 and whether OpenVINO imports; the export it needs is made once
per checkpoint digest into ``$MEDUNET_CACHE_DIR/engines`` (the test session points that at a temporary
folder) and reused by the next run; whatever runs must reproduce PyTorch's labels.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_engines import dice_per_label

import medunet.engines as engines
from medunet.cli import main
from medunet.engines import engine_cache_dir, resolve_engine, runtime_available
from medunet.errors import ConfigError, EngineError
from medunet.inference import Predictor
from medunet.inference.predictor import default_sw_batch_size
from medunet.io import read_image
from medunet.training.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A cache folder of this test alone."""
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "engines"


def test_auto_picks_openvino_only_on_a_cpu_with_one_model(monkeypatch) -> None:
    monkeypatch.setattr(engines, "runtime_available", lambda e: e == "openvino")
    assert resolve_engine("auto", device="cpu", bf16_native=False)[0] == "openvino"
    # "auto" device (the CLI default) is the Predictor's: CUDA when present, else the CPU
    expected = "torch" if torch.cuda.is_available() else "openvino"
    assert resolve_engine("auto", device="auto", bf16_native=False)[0] == expected
    # a GPU, an ensemble, a CPU with native bf16: PyTorch, each with its reason
    engine, why = resolve_engine("auto", device="cuda", bf16_native=False)
    assert (engine, why) == ("torch", "auto: PyTorch on cuda")
    assert resolve_engine("auto", device="cpu", models=2, bf16_native=False)[0] == "torch"
    assert "bf16" in resolve_engine("auto", device="cpu", bf16_native=True)[1]
    # OpenVINO missing: PyTorch, and the reason says how to get the faster path
    monkeypatch.setattr(engines, "runtime_available", lambda e: False)
    engine, why = resolve_engine("auto", device="cpu", bf16_native=False)
    assert engine == "torch" and "pip install" in why
    # an explicit engine is kept; an unknown one is refused
    assert resolve_engine("onnxruntime", device="cpu") == ("onnxruntime", "requested")
    with pytest.raises(ConfigError, match="unknown engine 'onnx'"):
        resolve_engine("onnx")


def test_openvino_runs_3d_windows_one_at_a_time_on_cpu() -> None:
    """Measured per window on a 2-core EPYC: OpenVINO fastest at batch 1, PyTorch at 2 (docstring)."""
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_sw_batch_size(cpu, 3, "openvino") == 1
    assert default_sw_batch_size(cpu, 3) == 2
    assert default_sw_batch_size(cpu, 2, "openvino") == default_sw_batch_size(cuda, 3) == 4


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(engines.CACHE_ENV, str(tmp_path / "c"))
    assert engine_cache_dir() == tmp_path / "c" / "engines"
    monkeypatch.delenv(engines.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert engine_cache_dir() == tmp_path / "xdg" / "medunet" / "engines"


def test_auto_exports_once_per_checkpoint_and_keeps_the_labels(model2d, cache, monkeypatch, tmp_path) -> None:
    if not runtime_available("openvino"):
        pytest.skip("openvino is not installed here (pip install 'medunet[engines]')")
    monkeypatch.setattr(engines, "resolve_engine", _auto_without_bf16(engines.resolve_engine))
    volume = read_image(model2d.volume_path)
    first = Predictor.from_checkpoint(model2d.checkpoint, engine="auto", device="cpu")
    assert first.engine == "openvino" and first.engine_reason.startswith("auto: OpenVINO")
    folders = [p for p in cache.iterdir()]
    assert len(folders) == 1 and folders[0].name.endswith("_openvino")
    assert first.engine_artifact.directory == folders[0]
    assert min(dice_per_label(first.predict(volume).labels, model2d.reference).values()) >= 0.99

    # the second run loads the cached export: exporting again would fail here
    import medunet.engines.export as export

    def no_export(*a, **k):
        raise AssertionError("exported again although the cache holds this checkpoint's export")

    with monkeypatch.context() as m:
        m.setattr(export, "export_checkpoint", no_export)
        second = Predictor.from_checkpoint(model2d.checkpoint, engine="auto", device="cpu")
    assert second.engine_artifact.directory == folders[0]

    # another checkpoint (other weights): its own export, never the first one's
    state = load_checkpoint(model2d.checkpoint)
    state["model"] = {k: v * 1.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    other = save_checkpoint(tmp_path / "other" / "best.pt", state)
    third = Predictor.from_checkpoint(other, engine="auto", device="cpu")
    assert third.engine_artifact.directory != folders[0]
    assert len(list(cache.iterdir())) == 2


def test_auto_falls_back_to_pytorch_when_the_engine_fails_but_a_named_engine_does_not(
    model2d, cache, monkeypatch
) -> None:
    """A model OpenVINO cannot export or compile still predicts under ``auto`` (PyTorch, with the
    reason); asking for ``openvino`` by name keeps the error."""
    monkeypatch.setattr(engines, "resolve_engine", lambda *a, **k: ("openvino", "auto: test"))

    def broken(*a, **k):
        raise EngineError(None, "openvino cannot compile the model: unsupported op")

    monkeypatch.setattr(engines, "open_engine", broken)
    # fp32, the precision of the reference (bf16 autocast would be PyTorch's default on a bf16 CPU)
    predictor = Predictor.from_checkpoint(model2d.checkpoint, engine="auto", device="cpu", amp=False)
    assert predictor.engine == "torch" and predictor.engine_artifact is None
    assert predictor.engine_reason == "auto: openvino failed (EngineError), PyTorch"
    assert (predictor.predict(read_image(model2d.volume_path)).labels == model2d.reference).all()
    with pytest.raises(EngineError, match="unsupported op"):
        Predictor.from_checkpoint(model2d.checkpoint, engine="openvino", device="cpu")


def test_a_concurrent_export_that_lands_first_is_used(model2d, cache, monkeypatch) -> None:
    """Two processes exporting the same checkpoint: the loser of the rename uses the winner's folder."""
    if not runtime_available("openvino"):
        pytest.skip("openvino is not installed here")
    import medunet.engines.export as export

    real = export.export_checkpoint

    def export_while_another_finishes(checkpoint, fmt, output, **kw):
        artifact = real(checkpoint, fmt, output, **kw)
        final = Path(output).parent / Path(output).name.split(".")[1]  # .<final>.<pid>.<tag>
        shutil.copytree(output, final)  # the other process renames its export into place first
        return artifact

    monkeypatch.setattr(export, "export_checkpoint", export_while_another_finishes)
    folder = engines._cached_export(model2d.checkpoint, "openvino")
    assert folder.is_dir() and (folder / engines.METADATA_NAME).is_file()
    assert [p.name for p in cache.iterdir()] == [folder.name]  # our own partial export was removed


def test_an_unwritable_cache_falls_back_to_a_temporary_export(model2d, tmp_path, monkeypatch) -> None:
    if not runtime_available("openvino"):
        pytest.skip("openvino is not installed here")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(engines.CACHE_ENV, str(blocker))  # mkdir under a file fails, even as root
    predictor = Predictor.from_checkpoint(model2d.checkpoint, engine="openvino", device="cpu")
    labels = predictor.predict(read_image(model2d.volume_path)).labels
    assert min(dice_per_label(labels, model2d.reference).values()) >= 0.99
    assert blocker.read_text() == "not a folder"


def test_predict_cli_defaults_to_auto_and_records_the_engine(model3d, cache, monkeypatch, tmp_path) -> None:
    if not runtime_available("openvino"):
        pytest.skip("openvino is not installed here")
    monkeypatch.setattr(engines, "resolve_engine", _auto_without_bf16(engines.resolve_engine))
    if torch.cuda.is_available():
        pytest.skip("the CLI's default device is CUDA here: auto runs PyTorch (checked above)")
    argv = ["predict", "--checkpoint", str(model3d.checkpoint), "--input", str(model3d.volume_path)]
    assert main([*argv, "--output", str(tmp_path / "auto")]) == 0  # every default: device auto, engine auto
    case = json.loads((tmp_path / "auto" / "case_003" / "case.json").read_text())
    assert case["options"]["engine"] == {"name": "openvino", "format": "openvino", "precision": "fp32"}
    assert Predictor.from_checkpoint(model3d.checkpoint, engine="auto", device="cpu").sw_batch_size == 1
    labels = read_image(tmp_path / "auto" / "case_003" / "segmentation.nii.gz").array
    assert min(dice_per_label(labels, model3d.reference).values()) >= 0.99
    # --engine torch: the eager network, nothing recorded (a torch run keeps its identity); fp32 as the
    # reference (the torch default on a CPU with native bf16 is bf16 autocast)
    torch_argv = ["--device", "cpu", "--engine", "torch", "--precision", "fp32"]
    assert main([*argv, "--output", str(tmp_path / "torch"), *torch_argv]) == 0
    case = json.loads((tmp_path / "torch" / "case_003" / "case.json").read_text())
    assert "engine" not in case["options"]
    assert (
        read_image(tmp_path / "torch" / "case_003" / "segmentation.nii.gz").array == model3d.reference
    ).all()


def test_auto_with_an_engine_model_runs_the_artefacts_runtime(model3d, tmp_path) -> None:
    if not runtime_available("onnxruntime"):
        pytest.skip("onnxruntime is not installed here")
    out = tmp_path / "onnx"
    assert (
        main(["export", "--checkpoint", str(model3d.checkpoint), "--format", "onnx", "--output", str(out)])
        == 0
    )
    argv = [
        "predict",
        "--input",
        str(model3d.volume_path),
        "--output",
        str(tmp_path / "p"),
        "--device",
        "cpu",
    ]
    assert main([*argv, "--engine-model", str(out)]) == 0
    case = json.loads((tmp_path / "p" / "case_003" / "case.json").read_text())
    assert case["options"]["engine"]["name"] == "onnxruntime"


def _auto_without_bf16(resolve):  # noqa: ANN001, ANN202
    """This machine's answer whatever its CPU: ``auto`` as on a CPU without native bf16."""

    def wrapped(engine, **kw):  # noqa: ANN001, ANN202
        kw["bf16_native"] = False
        return resolve(engine, **kw)

    return wrapped
