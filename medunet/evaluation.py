"""Evaluate a checkpoint on held-out cases, and batch inference to ``<case>_seg.nii.gz`` files.

Both delegate segmentation to :class:`medunet.inference.Predictor`, so predictions lie on each case's
original grid and metrics are computed there (spacing of the source image). A bad case is reported
and skipped; the failures are raised together at the end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

from medunet.config import as_bool
from medunet.data.datalist import Case, Datalist
from medunet.errors import DatasetError, MedunetError
from medunet.io import is_nifti, read_image, write_nifti
from medunet.io.volume import Volume
from medunet.metrics import MetricsTable, OrganScore, organ_metrics
from medunet.progress import progress

if TYPE_CHECKING:
    from medunet.inference import Predictor

logger = logging.getLogger(__name__)


class EvaluationRecorder(Protocol):
    """Something that records a finished evaluation (:class:`medunet.tracking.MLflowEvaluationTracker`)."""

    def record(self, summary: Mapping[str, Any] | None, *, device: str | None = None) -> object: ...


@dataclass
class BatchReport:
    """What a batch run produced and which inputs failed (``(input, reason)``)."""

    outputs: list[Path] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def raise_if_failed(self) -> None:
        if self.failures:
            lines = "; ".join(f"{src}: {why}" for src, why in self.failures)
            raise DatasetError(None, f"{len(self.failures)} input(s) failed: {lines}")


def _predictor(checkpoint: str | Path | list[str | Path], device: str, **kwargs: object):  # noqa: ANN202
    """One checkpoint, or a list (an ensemble); ``tta`` defaults to the product default."""
    from medunet.inference import Predictor
    from medunet.inference.predictor import DEFAULT_TTA

    tta = kwargs.pop("tta", None)
    kwargs["tta_mirror"] = DEFAULT_TTA if tta is None else as_bool(tta, "tta")
    return Predictor.from_checkpoint(checkpoint, device=device, **kwargs)


def _read_case_image(case: Case) -> Volume:
    """One volume with channels last when a case has several channel files."""
    vols = [read_image(p) for p in case.images]
    if len(vols) == 1:
        return vols[0]
    return Volume(np.stack([v.array for v in vols], axis=-1), vols[0].affine, source=str(case.images[0]))


def evaluation_cases(
    datalist: Datalist, run_dir: str | Path | None = None, which: Literal["test", "val", "all"] = "test"
) -> list[Case]:
    """Labelled cases to evaluate: a run's saved split (``split.json``) when given, else the dataset's.

    ``which="test"`` uses the dataset's labelled test set (e.g. ``labelsTs/``) when the split holds no
    test cases, and the validation cases (with a warning) when there is none; ``"all"`` takes every
    labelled case.
    """
    from medunet.training.data import read_split

    if which == "all":
        cases = datalist.cases
    elif run_dir is not None and (Path(run_dir) / "split.json").is_file():
        cases = read_split(run_dir, datalist, which)
        if not cases and which == "test":
            cases = [c for c in datalist.test if c.label is not None]
            if cases:
                logger.info(
                    "%s: the split has no test cases; evaluating the dataset's labelled test set", run_dir
                )
            else:
                logger.warning("%s: no test cases anywhere; evaluating the split's validation cases", run_dir)
                cases = read_split(run_dir, datalist, "val")
    else:
        cases = datalist.test if which == "test" else datalist.training
    cases = [c for c in cases if c.label is not None]
    if not cases:
        raise DatasetError(datalist.root, f"no labelled {which} cases to evaluate")
    return cases


@dataclass
class CaseScore:
    """One evaluated case: per-organ scores, the organs it does not annotate, the saved prediction."""

    scores: dict[str, OrganScore]
    unannotated: list[str]
    output: Path | None = None


def score_case(
    predictor: Predictor, case: Case, labels: dict[int, str], output_dir: Path, save_predictions: bool
) -> CaseScore:
    """Segment one labelled case and score it on its grid (a bad case raises ``MedunetError``)."""
    image = _read_case_image(case)
    ref = read_image(case.label)  # type: ignore[arg-type]
    if not image.same_grid(ref, atol_mm=0.01):
        raise MedunetError(case.label, "label is not on the image grid")
    pred = predictor.predict(image)
    scored = {k: v for k, v in labels.items() if case.is_annotated(k)}
    unannotated = [v for k, v in sorted(labels.items()) if k not in scored]
    scores = organ_metrics(pred.labels, np.asarray(ref.array), scored, ref.spacing)
    output = None
    if save_predictions:
        output = write_nifti(
            output_dir / "predictions" / f"{case.case_id}_seg.nii.gz",
            pred.labels,
            pred.affine,
            dtype=np.uint8,
        )
    return CaseScore(dict(scores), unannotated, output)


def _score_or_error(
    predictor: Predictor, case: Case, labels: dict[int, str], output_dir: Path, save_predictions: bool
) -> CaseScore | str:
    try:
        return score_case(predictor, case, labels, output_dir, save_predictions)
    except MedunetError as exc:
        return str(exc)


def evaluate(
    checkpoint: str | Path,
    cases: list[Case],
    labels: dict[int, str],
    output_dir: str | Path,
    *,
    device: str = "auto",
    save_predictions: bool = False,
    largest_component: bool = False,
    tta: bool | None = None,
    tracker: EvaluationRecorder | None = None,
    ray: str | None = None,
    workers: int | None = None,
) -> dict:
    """Segment every case, score it on its original grid, write ``per_case.csv`` and ``summary.json``.

    Organs a case does not annotate (partially contoured data) are left out of its scores and counted.
    ``ray`` (``"local"``, ``"auto"`` or a cluster address) scores the cases on a pool of ``workers`` Ray
    actors that each load the model once (:func:`medunet.scale.ray_runner.score_on_ray`); the files
    are the same as a local run's.
    ``tracker`` (e.g. :class:`medunet.tracking.MLflowEvaluationTracker`) records the summary and the
    two files once they are written, also when some cases failed.

    Returns the summary (per organ: mean/std of Dice, HD95 mm, surface Dice; ``n_empty_ref``,
    ``n_empty_pred``; and ``"mean"`` over organs).
    """
    output_dir = Path(output_dir)
    table = MetricsTable()
    report = BatchReport()
    predictor = None
    if ray is None:
        predictor = _predictor(checkpoint, device, largest_component=largest_component, tta=tta)
        results = (
            (case, _score_or_error(predictor, case, labels, output_dir, save_predictions))
            for case in progress(cases, desc="evaluating", total=len(cases))
        )
    else:
        from medunet.scale.ray_runner import score_on_ray

        results = score_on_ray(
            checkpoint,
            cases,
            labels,
            output_dir,
            address=ray,
            workers=workers,
            device=device,
            predictor_kwargs={"largest_component": largest_component, "tta": tta},
            save_predictions=save_predictions,
        )
    for case, result in results:
        if isinstance(result, str):
            logger.error("case %s: %s", case.case_id, result)
            report.failures.append((case.case_id, result))
            continue
        table.add(case.case_id, result.scores, unannotated=result.unannotated)
        logger.info(
            "%s: %s",
            case.case_id,
            ", ".join(f"{o} {s.dice:.3f}/{s.hd95:.1f}mm" for o, s in result.scores.items()),
        )
        if result.output is not None:
            report.outputs.append(result.output)
    table.write_csv(output_dir / "per_case.csv")
    table.write_summary_json(output_dir / "summary.json")
    summary = table.summary()
    logger.info(
        "evaluated %d case(s) with %s: mean Dice %.4f, mean HD95 %.2f mm -> %s",
        len(cases) - len(report.failures),
        Path(checkpoint if isinstance(checkpoint, str | Path) else checkpoint[0]).name,
        summary["mean"]["val_dice_mean"],
        summary["mean"]["val_hd95_mean"],
        output_dir,
    )
    if tracker is not None:
        tracker.record(summary, device=str(predictor.device) if predictor is not None else device)
    report.raise_if_failed()
    return summary


def evaluate_run(
    checkpoint: str | Path,
    output_dir: str | Path,
    dataset_dir: str | Path | None = None,
    run_dir: str | Path | None = None,
    which: Literal["test", "val", "all"] = "test",
    device: str = "auto",
    save_predictions: bool = False,
    largest_component: bool = False,
    tta: bool | str | None = None,
    tracker: EvaluationRecorder | None = None,
    ray: str | None = None,
    workers: int | None = None,
) -> dict:
    """The ``evaluate.json`` entry: resolve the dataset and held-out cases of a run, then :func:`evaluate`.

    Without ``dataset_dir`` the dataset is the one the run was trained on (``split.json`` records it),
    else the default synthetic dataset. ``tracker`` records the evaluation (evaluate.json: MLflow).
    ``ray`` / ``workers``: score the cases on Ray actors (see :func:`evaluate`; ``null``: locally).
    """
    from medunet.training.data import resolve_dataset

    datalist = resolve_dataset(dataset_dir if dataset_dir not in (None, "") else _trained_dataset(run_dir))
    cases = evaluation_cases(datalist, run_dir, which)
    save_predictions = as_bool(save_predictions, "save_predictions")
    largest_component = as_bool(largest_component, "largest_component")
    return evaluate(
        checkpoint,
        cases,
        datalist.labels,
        output_dir,
        device=device,
        save_predictions=save_predictions,
        largest_component=largest_component,
        tta=None if tta in (None, "auto") else as_bool(tta, "tta"),
        tracker=tracker,
        ray=ray or None,
        workers=None if workers in (None, "") else int(workers),
    )


def _trained_dataset(run_dir: str | Path | None) -> str | None:
    """The dataset folder a run's ``split.json`` names, when it still exists (else ``None``)."""
    if run_dir is None:
        return None
    try:
        recorded = json.loads((Path(run_dir) / "split.json").read_text()).get("dataset")
    except (OSError, ValueError, AttributeError):
        return None
    if recorded and Path(recorded).exists():
        logger.info("dataset of %s: %s (from split.json)", run_dir, recorded)
        return str(recorded)
    return None


def expand_inputs(inputs: str | Path | list[str | Path]) -> list[Path]:
    """NIfTI/NRRD/MHA files, folders of them, and DICOM series folders -> one path per volume."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    out: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_file():
            out.append(path)
        elif path.is_dir():
            volumes = sorted(
                p for p in path.iterdir() if p.is_file() and (is_nifti(p) or p.suffix in (".nrrd", ".mha"))
            )
            subdirs = sorted(p for p in path.iterdir() if p.is_dir())
            if volumes:
                out += volumes
            elif subdirs and not any(p.is_file() for p in path.iterdir()):
                out += [d for d in subdirs]  # a folder of DICOM series folders
            else:
                out.append(path)  # a DICOM series folder
        else:
            raise DatasetError(path, "input does not exist")
    return out


def case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def infer(
    checkpoint: str | Path,
    inputs: str | Path | list[str | Path],
    output_dir: str | Path,
    *,
    device: str = "auto",
    largest_component: bool = False,
    tta: bool | str | None = None,
    rtstruct: bool | str = False,
    engine: str = "auto",
) -> BatchReport:
    """Segment each input volume; write ``<output_dir>/<case>_seg.nii.gz`` (uint8, source grid).

    A DICOM series input also gets ``<case>_seg.dcm`` (DICOM SEG) and, with ``rtstruct``,
    ``<case>_rtstruct.dcm`` (RT Structure Set), both referencing the source series.
    ``checkpoint`` may be a list: the models are ensembled (class probabilities averaged).
    ``engine`` runs the network forward in ``torch`` or an exported engine (``torchscript``,
    ``onnxruntime``, ``openvino``, ``tensorrt``: :mod:`medunet.engines`; the checkpoint's ``medunet
    export`` folder when present, else a cached export); ``"auto"`` (default) is OpenVINO on a CPU
    where it is installed, else PyTorch (:func:`medunet.engines.resolve_engine`).
    """
    from medunet.export.case import write_derived_dicom

    rtstruct = as_bool(rtstruct, "rtstruct")
    predictor = _predictor(
        checkpoint,
        device,
        largest_component=as_bool(largest_component, "largest_component"),
        tta=None if tta in (None, "auto") else as_bool(tta, "tta"),
        **({"engine": str(engine)} if engine not in (None, "", "torch") else {}),
    )
    report = BatchReport()
    paths = expand_inputs(inputs)
    for path in progress(paths, desc="segmenting", total=len(paths)):
        try:
            volume = read_image(path)
            pred = predictor.predict(volume)
            name = case_name(path)
            out = write_nifti(
                Path(output_dir) / f"{name}_seg.nii.gz", pred.labels, pred.affine, dtype=np.uint8
            )
            if path.is_dir():
                write_derived_dicom(
                    Path(output_dir) / f"{name}_seg.dcm",
                    Path(output_dir) / f"{name}_rtstruct.dcm" if rtstruct else None,
                    pred.labels,
                    volume,
                    pred.label_names,
                    description=f"medunet {name}",
                )
        except MedunetError as exc:
            logger.error("%s", exc)
            report.failures.append((str(path), exc.problem))
            continue
        report.outputs.append(out)
        logger.info("%s -> %s", path, out)
    report.raise_if_failed()
    return report
