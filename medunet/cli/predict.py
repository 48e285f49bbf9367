"""``medunet predict``: segment NIfTI files, DICOM series or a PACS study into review-ready case folders."""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medunet.errors import ConfigError, MedunetError
from medunet.progress import progress

if TYPE_CHECKING:
    from medunet.export.case import CaseResult
    from medunet.export.report import OrganStats
    from medunet.inference import Predictor

logger = logging.getLogger(__name__)

_IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass
class CaseInput:
    """One case to predict: an image file, or one series of a DICOM directory."""

    name: str
    path: Path
    series_uid: str | None = None
    #: Recorded in case.json as the source instead of ``path`` (a DICOMweb series pulled to a temp folder).
    source_uri: str | None = None

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
    """Expand inputs into cases; returns ``(cases, problems)`` (problems are per-input messages).

    An input is an image file, a folder of images, a DICOM folder, or a case list (``.txt`` one path per
    line, ``.csv`` manifest with ``input[,case,series]`` columns: :mod:`medunet.scale.manifest`).
    """
    from medunet.scale.manifest import is_manifest, read_manifest

    cases: list[CaseInput] = []
    problems: list[str] = []
    for path in inputs:
        if not is_manifest(path):
            _collect_path(path, series, cases, problems)
            continue
        try:
            entries = read_manifest(path)
        except MedunetError as exc:
            problems.append(str(exc))
            continue
        for entry in entries:
            found: list[CaseInput] = []
            _collect_path(entry.input, entry.series or series, found, problems)
            if entry.case and len(found) == 1:
                found[0].name = safe_name(entry.case)
            cases += found
    _unique_names(cases)
    return cases, problems


def _collect_path(path: Path, series: str | None, cases: list[CaseInput], problems: list[str]) -> None:
    if not path.exists():
        problems.append(f"{path}: input does not exist")
    elif path.is_file():
        cases.append(CaseInput(safe_name(_stem(path)), path))
    else:
        images = sorted(p for p in path.iterdir() if _is_image_file(p))
        if images:
            cases += [CaseInput(safe_name(_stem(p)), p) for p in images]
            return
        try:
            problems += _dicom_cases(path, series, cases)
        except MedunetError as exc:
            problems.append(str(exc))


def _unique_names(cases: Sequence[CaseInput]) -> None:
    """Make case names unique in place: a second "ct" becomes "ct_2"."""
    seen: dict[str, int] = {}
    for case in cases:
        n = seen.get(case.name, 0) + 1
        seen[case.name] = n
        if n > 1:
            case.name = f"{case.name}_{n}"


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


@dataclass
class _Setup:
    """What every case of one run shares: the predictor and what is recorded about it."""

    predictor: Predictor
    checkpoint: Path
    window: tuple[float, float] | None
    options: dict[str, object]


#: ``--precision`` as the Predictor's ``amp``: auto = bf16 on a GPU or a CPU with native bf16, else fp32
PRECISION_AMP: dict[str, bool | None] = {"auto": None, "fp32": False, "bf16": True}


def load_predictor(args: argparse.Namespace) -> _Setup:
    """Load the model(s) the options name, once per run (or once per Ray worker)."""
    from medunet.inference import Predictor
    from medunet.inference.predictor import DEFAULT_TTA

    tuning = {"overlap": args.overlap} if args.overlap is not None else {}
    if args.tta is None:
        args.tta = DEFAULT_TTA
    engine = getattr(args, "engine", "auto") or "auto"
    engine_model = getattr(args, "engine_model", None)
    if engine == "auto" and engine_model:  # the artefact says which runtime runs it
        from medunet.engines import EngineArtifact, engine_for_format

        engine = engine_for_format(EngineArtifact.load(engine_model).format)
    if engine == "torch" and engine_model:
        raise ConfigError(
            engine_model, "--engine-model needs --engine onnxruntime/openvino/torchscript/tensorrt"
        )
    settings: dict = dict(
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
    amp = PRECISION_AMP[getattr(args, "precision", "auto")]
    if amp is not None:
        settings["amp"] = amp
    if engine != "torch" and engine_model and not args.checkpoint:
        # the artefact alone: plans and model identity come from its metadata
        checkpoints = [Path(engine_model)]
        predictor = Predictor.from_engine(engine_model, engine=engine, **settings)
    else:
        checkpoints = (
            [Path(c) for c in args.checkpoint] if args.checkpoint else [default_checkpoint(Path(args.bundle))]
        )
        if engine != "torch":
            settings.update(engine=engine, engine_model=engine_model)
        predictor = Predictor.from_checkpoint(checkpoints, **settings)
    intensity = predictor.plans.intensity
    window = (intensity.a_min, intensity.a_max) if intensity.kind == "ct_window" else None
    options = {
        "tta_mirror": args.tta,
        "largest_component": args.largest_component,
        "fill_holes": args.fill_holes,
        "postprocessing": dict(predictor.plans.postprocessing) if args.postprocess else {},
        "resample_scores": not args.resample_labels,
        "ensemble": [str(c.resolve()) for c in checkpoints],  # the same whichever node/cwd writes it
        "overlap": predictor.overlap,
        "rtstruct": args.rtstruct,
    }
    if predictor.engine_artifact is not None:  # recorded only off PyTorch, so torch runs keep their ids
        artifact = predictor.engine_artifact
        options["engine"] = {
            "name": predictor.engine,
            "format": artifact.format,
            "precision": artifact.precision,
        }
    return _Setup(predictor, checkpoints[0], window, options)


def derived_object_seed(series_uid: str, checkpoint_sha256: str | None, options: dict[str, object]) -> str:
    """Seed for the UIDs of a case's SEG/RTSTRUCT: same source series, model and result options, same UIDs.

    Paths (``ensemble``) and which objects are written (``rtstruct``) are left out, so moving the model or
    adding ``--push rtstruct`` later does not give the SEG a new identity.
    """
    from medunet import __version__

    result_options = {k: v for k, v in options.items() if k not in ("ensemble", "rtstruct")}
    return json.dumps(
        {
            "series": series_uid,
            "model": checkpoint_sha256,
            "medunet": __version__,
            "options": result_options,
        },
        sort_keys=True,
        default=str,
    )


AfterWrite = Callable[[CaseInput, Path], None]


def predict_one(
    args: argparse.Namespace,
    case: CaseInput,
    output: Path,
    setup: _Setup,
    *,
    derived_uids: bool = False,
) -> tuple[CaseResult, dict[str, float]]:
    """Read, predict and write one case folder (atomically); returns it and seconds per stage.

    The one per-case path of ``medunet predict``: the local loop and the Ray workers
    (:mod:`medunet.scale.ray_runner`) both call it, so their case folders are the same bytes.
    """
    from medunet.export.case import write_case
    from medunet.io import read_image

    predictor = setup.predictor
    t0 = time.perf_counter()
    if case.is_dicom:
        from medunet.io.dicom import read_dicom_series

        volume = read_dicom_series(case.path, case.series_uid)
    else:
        volume = read_image(case.path)
    t1 = time.perf_counter()
    prediction = predictor.predict(volume, uncertainty=args.uncertainty)
    t2 = time.perf_counter()
    seed = None
    if derived_uids and case.is_dicom:
        # The series key (``UID`` or ``UID#n`` when one UID holds several geometries) keeps the
        # objects of each geometry distinct.
        series_key = case.series_uid or str(volume.meta.get("series_instance_uid") or "")
        seed = derived_object_seed(series_key, predictor.checkpoint_sha256, setup.options)
    result = write_case(
        output,
        case.name,
        volume,
        prediction,
        source=case.path,
        is_dicom=case.is_dicom,
        copy_image=args.copy_image,
        checkpoint=setup.checkpoint,
        checkpoint_sha256=predictor.checkpoint_sha256,
        window=setup.window,
        options=setup.options,
        rtstruct=args.rtstruct,
        uid_seed=seed,
        source_uri=case.source_uri,
    )
    seconds = {"read": t1 - t0, "predict": t2 - t1, "write": time.perf_counter() - t2}
    return result, seconds


def describe_failure(case: CaseInput, exc: Exception) -> str:
    """The failure message of one case (the same text locally, in failures.csv and in the log)."""
    if isinstance(exc, MedunetError):
        return f"{case.name}: {exc}"
    return f"{case.name} ({case.path}): {type(exc).__name__}: {exc}"


def _predict_cases(
    args: argparse.Namespace,
    cases: Sequence[CaseInput],
    output: Path,
    setup: _Setup,
    *,
    derived_uids: bool = False,
    after_write: AfterWrite | None = None,
) -> tuple[dict[str, list[OrganStats]], list[str]]:
    """Predict and write every case (a failing case is logged and the batch goes on).

    ``after_write(case, case_folder)`` runs after a case folder is complete (e.g. a PACS push); its
    MedunetError counts as that case's failure. Returns ``(stats per written case, failure messages)``.
    """
    queue: dict[str, list[OrganStats]] = {}
    failures: list[str] = []
    for case in progress(cases, desc="predict", total=len(cases)):
        try:
            result, _ = predict_one(args, case, output, setup, derived_uids=derived_uids)
            queue[case.name] = result.stats
            logger.info("%s: wrote %s", case.name, result.directory)
            if after_write is not None:
                after_write(case, result.directory)
        except Exception as exc:  # one broken case must not stop the batch
            failures.append(describe_failure(case, exc))
            logger.error("%s", failures[-1])
            logger.debug("traceback", exc_info=True)
    return queue, failures


def _finish(
    args: argparse.Namespace,
    output: Path,
    queue: dict[str, list[OrganStats]],
    total: int,
    failures: list[str],
) -> int:
    from medunet.export.report import write_review_queue

    if args.uncertainty and queue:
        path = write_review_queue(output / "review_queue.csv", queue)
        logger.info("review queue: %s", path)
    logger.info("%d of %d case(s) written to %s", len(queue), total, output)
    if failures:
        logger.error("%d failure(s):", len(failures))
        for f in failures:
            logger.error("  %s", f)
        return 1
    return 0


def run_predict(args: argparse.Namespace) -> int:
    """Handler for ``medunet predict``."""
    if args.dicomweb:
        if args.ray is not None or args.resume:
            raise ConfigError(None, "--ray and --resume work on --input cases, not on --dicomweb")
        return run_predict_dicomweb(args)
    if args.study or args.push:
        raise ConfigError(None, "--study and --push need --dicomweb URL")
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
    if args.ray is not None:
        from medunet.scale.ray_runner import run_predict_ray

        return run_predict_ray(args, cases, failures, output)
    setup = load_predictor(args)
    if args.resume:
        from medunet.scale.runlog import remove_stale_partials, split_complete

        cases, done = split_complete(cases, output, setup.predictor.checkpoint_sha256, setup.options)
        remove_stale_partials(output)
        logger.info("resume: %d case(s) already complete for this model, skipped", len(done))
    logger.info(
        "predicting %d case(s) with %s on %s",
        len(cases),
        setup.checkpoint,
        setup.predictor.device,
    )
    queue, case_failures = _predict_cases(args, cases, output, setup)
    return _finish(args, output, queue, len(cases), failures + case_failures)


def run_predict_dicomweb(args: argparse.Namespace) -> int:
    """``medunet predict --dicomweb URL --study UID``: pull the study's image series, predict, push back.

    The server is asked first (reachable, credentials accepted, study and series present), then the model
    is loaded, the series are pulled (WADO-RS) into a temporary folder that is removed afterwards, and
    each case goes through the same path as a local DICOM folder. With ``--push``, the case's SEG and/or
    RTSTRUCT are stored (STOW-RS) in the same study once its folder is complete; their UIDs derive from
    the source series and the model, and objects the study already holds are skipped.
    """
    from medunet.export.case import RTSTRUCT
    from medunet.io.dicomweb import DicomWebServer, check_uid

    if not args.study:
        raise ConfigError(None, "--dicomweb needs --study UID (the StudyInstanceUID to segment)")
    study = check_uid(args.study, "study")
    push = args.push or frozenset()
    if "rtstruct" in push:
        args.rtstruct = True  # pushing an RTSTRUCT means writing one
    output = Path(args.output)
    server = DicomWebServer(args.dicomweb, timeout=args.dicomweb_timeout)
    logger.info("DICOMweb server %s (%s)", server.url, server.auth)
    series = server.image_series(study, args.series)
    setup = load_predictor(args)

    def push_case(case: CaseInput, folder: Path) -> None:
        files = [folder / "segmentation.dcm"] if "seg" in push else []
        files += [folder / RTSTRUCT] if "rtstruct" in push else []
        result = server.push(study, files)
        logger.info(
            "%s: stored in study %s: %s; already there: %s",
            case.name,
            study,
            ", ".join(result.stored) or "nothing",
            ", ".join(result.already_present) or "nothing",
        )

    with tempfile.TemporaryDirectory(prefix="medunet-dicomweb-") as tmp:
        cases: list[CaseInput] = []
        failures: list[str] = []
        for n, remote in enumerate(series, start=1):
            folder = Path(tmp) / f"series{n:03d}"
            server.pull_series(study, remote.uid, folder)
            found, problems = collect_cases([folder], remote.uid)
            for case in found:
                case.source_uri = server.series_uri(study, remote.uid)
            cases += found
            failures += problems
        _unique_names(cases)
        logger.info(
            "predicting %d series of study %s with %s on %s",
            len(cases),
            study,
            setup.checkpoint,
            setup.predictor.device,
        )
        queue, case_failures = _predict_cases(
            args, cases, output, setup, derived_uids=True, after_write=push_case if push else None
        )
    return _finish(args, output, queue, len(cases), failures + case_failures)


def _push_kinds(text: str) -> frozenset[str]:
    kinds = frozenset(k.strip().lower() for k in text.split(",") if k.strip())
    if not kinds or kinds - {"seg", "rtstruct"}:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seg, rtstruct or seg,rtstruct")
    return kinds


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="segment NIfTI files / DICOM series / a PACS study into case folders for review",
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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--input",
        "-i",
        nargs="+",
        metavar="PATH",
        help="NIfTI files, folders of them, or DICOM series folders",
    )
    source.add_argument(
        "--dicomweb",
        metavar="URL",
        help="DICOMweb service root of a PACS (e.g. http://pacs:8042/dicom-web): pull the --study's CT/MR "
        "series (QIDO-RS, WADO-RS) instead of reading --input; credentials only from the environment: "
        "MEDUNET_DICOMWEB_USER + MEDUNET_DICOMWEB_PASSWORD, or MEDUNET_DICOMWEB_TOKEN",
    )
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="where case folders are written")
    p.add_argument(
        "--series",
        metavar="UID|all",
        help="which DICOM series when a folder (or the --study) holds several image series",
    )
    p.add_argument("--study", metavar="UID", help="StudyInstanceUID to segment (with --dicomweb)")
    p.add_argument(
        "--push",
        type=_push_kinds,
        metavar="seg,rtstruct",
        help="with --dicomweb: store the SEG and/or RTSTRUCT in the same study (STOW-RS); objects the "
        "study already holds (same SOP Instance UID, derived from source series and model) are skipped",
    )
    p.add_argument(
        "--dicomweb-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="connect / read timeout of each DICOMweb request (default: %(default)s)",
    )
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
    p.add_argument(
        "--precision",
        choices=sorted(PRECISION_AMP),
        default="auto",
        help="PyTorch compute precision: auto = bf16 autocast on a GPU or on a CPU with native bf16 "
        "(avx512_bf16/amx_bf16), else fp32; fp32 reproduces float32 scores exactly; bf16 runs PyTorch "
        "even under --engine auto (default: %(default)s)",
    )
    from medunet.cli.engines import add_engine_arguments

    add_engine_arguments(p)
    p.add_argument(
        "--sw-batch-size",
        type=int,
        default=None,
        help="sliding-window batch (default: 2 for 3D models on CPU, measured fastest there; else 4)",
    )
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
    from medunet.scale.ray_runner import add_arguments

    add_arguments(p)
    p.set_defaults(func=run_predict)
