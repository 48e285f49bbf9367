"""``medunet predict``: segment NIfTI files and DICOM series into review-ready case folders."""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medunet.errors import ConfigError, MedunetError
from medunet.progress import progress

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class CaseInput:
    """One case to predict: an image file, or one series of a DICOM directory."""

    name: str
    path: Path
    series_uid: str | None = None

    @property
    def is_dicom(self) -> bool:
        return self.path.is_dir()


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_IMAGE_SUFFIXES) and not path.name.startswith(".")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(_IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def safe_name(text: str, fallback: str = "case") -> str:
    """A file-system-safe case name (letters, digits, ``._-``; at most 64 characters)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")
    return cleaned[:64] or fallback


def _dicom_case_name(description: str, uid: str) -> str:
    """Series description plus a short UID suffix -- never the folder name (it may hold a patient name)."""
    suffix = uid.replace(".", "")[-8:] or "series"
    return safe_name(f"{description}_{suffix}" if description else f"series_{suffix}")


def collect_cases(inputs: Sequence[Path], series: str | None) -> tuple[list[CaseInput], list[str]]:
    """Expand inputs into cases; returns ``(cases, problems)`` (problems are per-input messages)."""
    cases: list[CaseInput] = []
    problems: list[str] = []
    for path in inputs:
        if not path.exists():
            problems.append(f"{path}: input does not exist")
        elif path.is_file():
            cases.append(CaseInput(safe_name(_stem(path)), path))
        else:
            images = sorted(p for p in path.iterdir() if _is_image_file(p))
            if images:
                cases += [CaseInput(safe_name(_stem(p)), p) for p in images]
                continue
            try:
                problems += _dicom_cases(path, series, cases)
            except MedunetError as exc:
                problems.append(str(exc))
    # Unique names: a second "ct" becomes "ct_2".
    seen: dict[str, int] = {}
    for case in cases:
        n = seen.get(case.name, 0) + 1
        seen[case.name] = n
        if n > 1:
            case.name = f"{case.name}_{n}"
    return cases, problems


def _dicom_cases(path: Path, series: str | None, cases: list[CaseInput]) -> list[str]:
    from medunet.io.dicom import list_series

    found = list_series(path)
    if not found:
        return [f"{path}: no NIfTI files and no DICOM series found"]
    if series and series != "all":
        chosen = [s for s in found if series in (s.uid, s.key)]
        if not chosen:
            return [f"{path}: series {series} not found; present: {', '.join(s.key for s in found)}"]
    elif len(found) > 1 and series != "all":
        listing = "; ".join(
            f"{s.key} ({s.description or 'no description'}, {s.n_files} files)" for s in found
        )
        return [f"{path}: holds {len(found)} series; pass --series UID or --series all: {listing}"]
    else:
        chosen = found
    for s in chosen:
        cases.append(CaseInput(_dicom_case_name(s.description, s.uid), path, s.key))
    return []


def check_output_location(output: Path, inputs: Sequence[Path]) -> None:
    """Refuse an output folder inside (or equal to) an input folder, or one that is an input file."""
    out = output.resolve()
    for path in inputs:
        p = path.resolve()
        folder = p if p.is_dir() else None
        if p.is_file() and out == p:
            raise ConfigError(output, f"output is the input file {path}")
        if folder is not None and (out == folder or folder in out.parents):
            raise ConfigError(output, f"output folder lies inside the input folder {path}; choose another")


def default_checkpoint(bundle: Path) -> Path:
    """The bundle's trained model: ``models/best.pt`` (or ``models/model.pt``), else the training run's."""
    candidates = [bundle / "models" / "best.pt", bundle / "models" / "model.pt"]
    train = bundle / "train.json"
    if train.is_file():
        try:
            out = json.loads(train.read_text()).get("output_dir")
        except (OSError, json.JSONDecodeError):
            out = None
        if isinstance(out, str) and "$" not in out and "@" not in out:
            candidates += [Path(out) / "best.pt", bundle / out / "best.pt"]
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(bundle, f"no trained model found (tried {tried}); pass --checkpoint FILE")


def run_predict(args: argparse.Namespace) -> int:
    """Handler for ``medunet predict``."""
    from medunet.export.case import write_case
    from medunet.export.report import write_review_queue
    from medunet.inference import Predictor
    from medunet.io import read_image

    inputs = [Path(p) for p in args.input]
    output = Path(args.output)
    check_output_location(output, inputs)
    cases, failures = collect_cases(inputs, args.series)
    if not cases and failures:
        for f in failures:
            logger.error("%s", f)
        return 1
    dicom_dirs = {c.path for c in cases if c.is_dicom}
    check_output_location(output, list(dicom_dirs))

    checkpoints = (
        [Path(c) for c in args.checkpoint] if args.checkpoint else [default_checkpoint(Path(args.bundle))]
    )
    checkpoint = checkpoints[0]
    tuning = {"overlap": args.overlap} if args.overlap is not None else {}
    from medunet.inference.predictor import DEFAULT_TTA

    if args.tta is None:
        args.tta = DEFAULT_TTA
    predictor = Predictor.from_checkpoint(
        checkpoints,
        device=args.device,
        sw_batch_size=args.sw_batch_size,
        crop_foreground=args.crop_foreground,
        **tuning,
        tta_mirror=args.tta,
        largest_component=args.largest_component,
        fill_holes=args.fill_holes,
        postprocess=args.postprocess,
        resample_scores=not args.resample_labels,
    )
    intensity = predictor.plans.intensity
    window = (intensity.a_min, intensity.a_max) if intensity.kind == "ct_window" else None
    options = {
        "tta_mirror": args.tta,
        "largest_component": args.largest_component,
        "fill_holes": args.fill_holes,
        "postprocessing": dict(predictor.plans.postprocessing) if args.postprocess else {},
        "resample_scores": not args.resample_labels,
        "ensemble": [str(c) for c in checkpoints],
        "overlap": predictor.overlap,
        "rtstruct": args.rtstruct,
    }
    logger.info("predicting %d case(s) with %s on %s", len(cases), checkpoint, predictor.device)
    queue = {}
    done = 0
    for case in progress(cases, desc="predict", total=len(cases)):
        try:
            if case.is_dicom:
                from medunet.io.dicom import read_dicom_series

                volume = read_dicom_series(case.path, case.series_uid)
            else:
                volume = read_image(case.path)
            prediction = predictor.predict(volume, uncertainty=args.uncertainty)
            result = write_case(
                output,
                case.name,
                volume,
                prediction,
                source=case.path,
                is_dicom=case.is_dicom,
                copy_image=args.copy_image,
                checkpoint=checkpoint,
                checkpoint_sha256=predictor.checkpoint_sha256,
                window=window,
                options=options,
                rtstruct=args.rtstruct,
            )
            queue[case.name] = result.stats
            done += 1
            logger.info("%s: wrote %s", case.name, result.directory)
        except MedunetError as exc:
            failures.append(f"{case.name}: {exc}")
            logger.error("%s: %s", case.name, exc)
        except Exception as exc:  # one broken case must not stop the batch
            failures.append(f"{case.name} ({case.path}): {type(exc).__name__}: {exc}")
            logger.error("%s: unexpected %s: %s", case.name, type(exc).__name__, exc)
            logger.debug("traceback", exc_info=True)
    if args.uncertainty and queue:
        path = write_review_queue(output / "review_queue.csv", queue)
        logger.info("review queue: %s", path)
    logger.info("%d of %d case(s) written to %s", done, len(cases), output)
    if failures:
        logger.error("%d failure(s):", len(failures))
        for f in failures:
            logger.error("  %s", f)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment NIfTI files / DICOM series into case folders for review",
        description="Segment images; each case gets a folder with the mask on the exact source grid, "
        "ITK-SNAP label file and workspace, DICOM SEG (and with --rtstruct an RT Structure Set; DICOM "
        "input), volumes and a preview.",
    )
    p.add_argument("--bundle", default="bundles/ct_organs", help="bundle folder (default: %(default)s)")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="FILE",
        help="model checkpoint(s); several (e.g. one per cross-validation fold) are ensembled by "
        "averaging their class probabilities (default: <bundle>/models/best.pt)",
    )
    p.add_argument(
        "--input",
        "-i",
        nargs="+",
        required=True,
        metavar="PATH",
        help="NIfTI files, folders of them, or DICOM series folders",
    )
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="where case folders are written")
    p.add_argument("--series", metavar="UID|all", help="which DICOM series when a folder holds several")
    p.add_argument(
        "--largest-component", action="store_true", help="keep every organ's largest component (forces it)"
    )
    p.add_argument("--fill-holes", action="store_true", help="fill enclosed holes in every organ (forces it)")
    p.add_argument(
        "--no-postprocess",
        dest="postprocess",
        action="store_false",
        help="skip the per-organ post-processing the model's validation selected (plans.json)",
    )
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mirror test-time augmentation along the axes the model was trained mirrored, "
        "left/right labels swapped back (default: on)",
    )
    p.add_argument(
        "--resample-labels",
        action="store_true",
        help="argmax on the network grid and nearest-neighbour labels back to the source grid "
        "(faster, staircase edges; default: class probabilities resampled, then argmax)",
    )
    p.add_argument(
        "--uncertainty",
        action="store_true",
        help="write uncertainty.nii.gz and a review_queue.csv ranking cases x organs",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    p.add_argument("--sw-batch-size", type=int, default=4, help="sliding-window batch (default: 4)")
    p.add_argument(
        "--overlap",
        type=float,
        default=None,
        help="sliding-window overlap (default: the predictor's, 0.25 with Gaussian blending)",
    )
    p.add_argument(
        "--no-crop",
        dest="crop_foreground",
        action="store_const",
        const=False,
        default=None,
        help="run the network over the whole volume (default for CT: only the body's bounding box)",
    )
    p.add_argument(
        "--copy-image",
        action="store_true",
        help="also copy NIfTI inputs into the case folder (self-contained review folder)",
    )
    p.add_argument(
        "--rtstruct",
        action="store_true",
        help="also write rtstruct.dcm, a DICOM RT Structure Set (one ROI per organ, contours per source "
        "slice) referencing the source series (DICOM input only)",
    )
    p.set_defaults(func=run_predict)
