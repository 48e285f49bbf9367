"""Dataset layouts -> :class:`~medunet.data.datalist.Datalist`, and a content hash of a dataset.

Four layouts are understood; :data:`LAYOUTS` is the one registry that ``load_dataset``, the CLI choices
and the docs read:

* ``decathlon`` -- Medical Segmentation Decathlon: ``dataset.json`` with ``modality``, ``labels``
  (``{"0": "background", ...}``), ``training`` (``[{"image", "label"}]``) and ``test`` (paths).
* ``nnunet`` -- nnU-Net v2 raw: ``dataset.json`` with ``channel_names``, ``labels`` (name -> int),
  ``file_ending``, ``numTraining``; ``imagesTr/{case}_{XXXX}{ending}``, ``labelsTr/{case}{ending}``,
  ``imagesTs/``.
* ``folders`` -- ``images/`` + ``labels/`` (or ``imagesTr/`` + ``labelsTr/`` without ``dataset.json``),
  paired by file name.
* ``csv`` -- a CSV with columns ``image[,label][,case_id]``; paths relative to the CSV.

Loading checks the *layout* (keys, listed files exist, every image has its label, unique case ids) and
raises :class:`~medunet.errors.DatasetError` naming the file. It does not read voxels (except to derive
label names when a folders/CSV dataset declares none); ``medunet check`` validates the contents.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medunet.data.datalist import Case, Datalist
from medunet.errors import DatasetError

logger = logging.getLogger(__name__)

LayoutName = Literal["auto", "decathlon", "nnunet", "folders", "csv"]

#: File endings recognised as images in folder layouts, longest first so ``.nii.gz`` wins over ``.gz``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how to recognise it, how to load it, and a line for ``--help`` and docs."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    load: Callable[..., Datalist]


# --------------------------------------------------------------------------------------------- helpers


def _strip_suffix(name: str) -> str | None:
    """File name without a recognised image suffix, or None when it is not an image file."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DatasetError(path, f"cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise DatasetError(path, f"expected a JSON object at the top level, got {type(data).__name__}")
    return data


def _require(d: Mapping[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise DatasetError(path, f"missing required key(s) {', '.join(map(repr, missing))}")


def _resolve(root: Path, rel: object, where: str, source: Path) -> Path:
    """Resolve a path listed in ``source`` relative to ``root`` and require that it exists."""
    if not isinstance(rel, str) or not rel.strip():
        raise DatasetError(source, f"{where}: expected a file path, got {rel!r}")
    path = Path(rel)
    path = path if path.is_absolute() else root / path
    if not path.exists():
        raise DatasetError(path, f"listed in {source.name} ({where}) but does not exist")
    return path


def _parse_annotated(raw: object, labels: Mapping[int, str], where: str, source: Path) -> frozenset[int] | None:
    """An ``annotated`` entry (organ names or label values; a list or a ``;``-separated string).

    Returns the set of contoured label values, or ``None`` when the entry is absent (all contoured).
    Unknown names fail loudly: a typo would otherwise silently mark an organ as unknown everywhere.
    """
    if raw is None or raw == "":
        return None
    items = [x.strip() for x in raw.split(";")] if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple):
        raise DatasetError(source, f"{where}: 'annotated' must be a list of organ names, got {raw!r}")
    by_name = {name.lower(): value for value, name in labels.items()}
    values: set[int] = set()
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item in labels:
            values.add(int(item))
        elif isinstance(item, str) and item.strip().lower() in by_name:
            values.add(by_name[item.strip().lower()])
        elif isinstance(item, str) and item.strip().isdigit() and int(item) in labels:
            values.add(int(item))
        else:
            raise DatasetError(
                source, f"{where}: 'annotated' names {item!r}, not one of {', '.join(labels.values())}"
            )
    return frozenset(values - {0})


def _apply_sidecar(datalist_cases: list[Case], labels: Mapping[int, str], root: Path) -> list[Case]:
    """Read ``annotated.json`` (``{case_id: [organ, ...]}``) next to a dataset, for layouts without a key."""
    sidecar = root / "annotated.json"
    if not sidecar.is_file():
        return datalist_cases
    table = _read_json(sidecar)
    if not isinstance(table, dict):
        raise DatasetError(sidecar, "expected an object {case_id: [organ names]}")
    unknown = sorted(set(table) - {c.case_id for c in datalist_cases})
    if unknown:
        raise DatasetError(sidecar, f"names cases the dataset does not have: {', '.join(unknown[:5])}")
    return [
        replace(c, annotated=_parse_annotated(table.get(c.case_id), labels, c.case_id, sidecar))
        if c.case_id in table
        else c
        for c in datalist_cases
    ]


def _check_unique(cases: list[Case], source: Path) -> None:
    seen: dict[str, int] = {}
    for i, case in enumerate(cases):
        if case.case_id in seen:
            raise DatasetError(
                source, f"duplicate case id {case.case_id!r} (entries {seen[case.case_id]} and {i})"
            )
        seen[case.case_id] = i


def _int_labels(raw: Mapping[Any, Any], source: Path) -> dict[int, str]:
    """``{"0": "background", "1": "liver"}`` (Decathlon) -> ``{0: "background", 1: "liver"}``."""
    labels: dict[int, str] = {}
    for key, name in raw.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise DatasetError(
                source, f"label key {key!r} is not an integer (expected {{'1': 'liver'}})"
            ) from None
        if value < 0:
            raise DatasetError(source, f"label value {value} is negative")
        labels[value] = str(name)
    labels.setdefault(0, "background")
    return dict(sorted(labels.items()))


def _named_labels(raw: Mapping[str, Any], source: Path) -> dict[int, str]:
    """``{"background": 0, "liver": 1}`` (nnU-Net v2) -> ``{0: "background", 1: "liver"}``."""
    labels: dict[int, str] = {}
    for name, value in raw.items():
        if isinstance(value, list | tuple):
            raise DatasetError(
                source,
                f"label {name!r} is region-based ({value}); medunet trains one class per label value, "
                "convert the regions to plain integer labels",
            )
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise DatasetError(source, f"label {name!r} has a non-integer value {value!r}")
        try:
            ivalue = int(value)
        except ValueError:
            raise DatasetError(source, f"label {name!r} has a non-integer value {value!r}") from None
        if ivalue in labels:
            raise DatasetError(source, f"labels {labels[ivalue]!r} and {name!r} share value {ivalue}")
        labels[ivalue] = str(name)
    if 0 not in labels:
        raise DatasetError(source, "labels must declare background as value 0")
    return dict(sorted(labels.items()))


def _modalities(raw: Mapping[Any, Any], source: Path, key: str) -> dict[int, str]:
    if not isinstance(raw, Mapping) or not raw:
        raise DatasetError(source, f"{key!r} must be a non-empty object such as {{'0': 'CT'}}")
    try:
        mods = {int(k): str(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise DatasetError(source, f"{key!r} keys must be channel indices, got {list(raw)}") from None
    if sorted(mods) != list(range(len(mods))):
        raise DatasetError(
            source, f"{key!r} channels must be numbered 0..{len(mods) - 1}, got {sorted(mods)}"
        )
    return dict(sorted(mods.items()))


def _labels_from_values(label_files: list[Path]) -> dict[int, str]:
    """Derive ``{0: background, v: label_v}`` for v = 1..max value found in the label files.

    Used only when a folders/CSV dataset declares no label names; reads every label file once.
    """
    from medunet.io import read_image
    from medunet.progress import progress

    top = 0
    for path in progress(label_files, desc="scanning label values"):
        arr = np.asarray(read_image(path).array)
        if arr.size:
            top = max(top, int(np.nanmax(arr)))
    labels = {0: "background"}
    labels.update({v: f"label_{v}" for v in range(1, top + 1)})
    return labels


def _labels_file(directory: Path) -> Path | None:
    for name in ("labels.json", "labels.txt"):
        if (directory / name).is_file():
            return directory / name
    return None


def read_label_names(path: str | Path) -> dict[int, str]:
    """Read label names from ``labels.json`` or ``labels.txt``.

    JSON may be Decathlon style (``{"0": "background", "1": "liver"}``), nnU-Net style
    (``{"background": 0, "liver": 1}``) or either wrapped as ``{"labels": {...}}``. A text file holds one
    name per line: line 1 is value 1 (background is implied), or ``"<value> <name>"`` per line.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        raw = _read_json(path)
        raw = raw.get("labels", raw)
        if not isinstance(raw, dict) or not raw:
            raise DatasetError(path, "expected a non-empty object of label names")
        if all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()):
            return _named_labels(raw, path)
        return _int_labels(raw, path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"cannot read label names ({exc})") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    labels: dict[int, str] = {0: "background"}
    for i, line in enumerate(lines, start=1):
        first, _, rest = line.partition(" ")
        if first.isdigit() and rest.strip():
            labels[int(first)] = rest.strip()
        else:
            labels[i] = line
    return dict(sorted(labels.items()))


# ------------------------------------------------------------------------------------------- decathlon


def _find_dataset_json(path: Path) -> Path | None:
    if path.is_file() and path.name.endswith(".json"):
        return path
    candidate = path / "dataset.json"
    return candidate if candidate.is_file() else None


def _detect_decathlon(path: Path) -> bool:
    djson = _find_dataset_json(path)
    if djson is None:
        return False
    try:
        d = _read_json(djson)
    except DatasetError:
        return True  # a broken dataset.json without nnU-Net keys: let the Decathlon loader explain
    return "channel_names" not in d and "file_ending" not in d


def _decathlon_entry_images(entry: object, root: Path, where: str, source: Path) -> tuple[Path, ...]:
    if isinstance(entry, list):  # MONAI-style multi-channel list of files
        if not entry:
            raise DatasetError(source, f"{where}: empty image list")
        return tuple(_resolve(root, e, f"{where}[{i}]", source) for i, e in enumerate(entry))
    return (_resolve(root, entry, where, source),)


def load_decathlon(path: str | Path) -> Datalist:
    """Load a Medical Segmentation Decathlon dataset (a directory with ``dataset.json``, or the file)."""
    path = Path(path)
    djson = _find_dataset_json(path)
    if djson is None:
        raise DatasetError(path, "no dataset.json found (Decathlon layout)")
    root = djson.parent
    d = _read_json(djson)
    _require(d, ("labels", "training"), djson)
    if not isinstance(d["labels"], dict):
        raise DatasetError(djson, "'labels' must be an object like {'0': 'background', '1': 'liver'}")
    labels = _int_labels(d["labels"], djson)
    modalities = _modalities(d.get("modality", {"0": "CT"}), djson, "modality")
    if not isinstance(d["training"], list):
        raise DatasetError(djson, "'training' must be a list of {'image': ..., 'label': ...}")
    training: list[Case] = []
    for i, entry in enumerate(d["training"]):
        where = f"training[{i}]"
        if not isinstance(entry, dict) or "image" not in entry:
            raise DatasetError(djson, f"{where}: expected an object with 'image' and 'label'")
        if "label" not in entry:
            raise DatasetError(djson, f"{where}: image {entry['image']!r} has no 'label'")
        images = _decathlon_entry_images(entry["image"], root, f"{where}.image", djson)
        label = _resolve(root, entry["label"], f"{where}.label", djson)
        case_id = str(entry.get("case_id") or _strip_suffix(images[0].name) or images[0].stem)
        annotated = _parse_annotated(entry.get("annotated"), labels, where, djson)
        training.append(Case(case_id, images, label, annotated))
    test: list[Case] = []
    raw_test = d.get("test", [])
    if not isinstance(raw_test, list):
        raise DatasetError(djson, "'test' must be a list of paths")
    for i, entry in enumerate(raw_test):
        where = f"test[{i}]"
        image_entry = entry.get("image") if isinstance(entry, dict) else entry
        images = _decathlon_entry_images(image_entry, root, where, djson)
        test.append(
            Case(
                str(_strip_suffix(images[0].name) or images[0].stem),
                images,
                _test_label(entry, root, where, djson, images[0]),
            )
        )
    _check_unique(training + test, djson)
    notes: list[str] = []
    if len(modalities) > 1 and all(len(c.images) == 1 for c in training):
        notes.append(
            f"{len(modalities)} modalities packed as 4D files in one image each; medunet readers are "
            "3D, split them into one file per channel (nnU-Net layout: case_0000.nii.gz, ...)"
        )
    for key, count in (("numTraining", len(training)), ("numTest", len(test))):
        if key in d and isinstance(d[key], int) and d[key] != count:
            notes.append(f"{key} says {d[key]} but {count} cases are listed")
    return Datalist(
        name=str(d.get("name") or root.name),
        root=root,
        labels=labels,
        modalities=modalities,
        training=training,
        test=test,
        layout="decathlon",
        notes=notes,
    )


def _test_label(entry: object, root: Path, where: str, djson: Path, image: Path) -> Path | None:
    """A test case's reference label: ``{"image", "label"}`` entries, else ``labelsTs/<same name>``.

    The Decathlon format lists test images only; datasets that keep held-out references (ours, nnU-Net
    exports) put them in ``labelsTs/`` beside ``imagesTs/``, so evaluation can score the test set.
    """
    if isinstance(entry, dict) and entry.get("label"):
        return _resolve(root, entry["label"], f"{where}.label", djson)
    if image.parent.name == "imagesTs":
        candidate = image.parent.parent / "labelsTs" / image.name
        if candidate.is_file():
            return candidate
    return None


# ---------------------------------------------------------------------------------------------- nnunet


def _detect_nnunet(path: Path) -> bool:
    djson = _find_dataset_json(path)
    if djson is None:
        return False
    try:
        d = _read_json(djson)
    except DatasetError:
        return False
    return "channel_names" in d or "file_ending" in d


def _scan_channels(folder: Path, ending: str, source: Path, n_channels: int) -> dict[str, list[Path]]:
    """``{case: [channel 0 file, channel 1 file, ...]}`` for ``{case}_{XXXX}{ending}`` files in ``folder``."""
    found: dict[str, dict[int, Path]] = {}
    for file in sorted(folder.iterdir()):
        if not file.name.endswith(ending) or file.name.startswith("."):
            continue
        match = _CHANNEL_RE.match(file.name[: -len(ending)])
        if match is None:
            raise DatasetError(file, f"image name must be {{case}}_{{XXXX}}{ending} (channel as 4 digits)")
        found.setdefault(match["case"], {})[int(match["channel"])] = file
    cases: dict[str, list[Path]] = {}
    for case, channels in found.items():
        expected = list(range(n_channels))
        if sorted(channels) != expected:
            missing = [f"{case}_{c:04d}{ending}" for c in expected if c not in channels]
            extra = [channels[c].name for c in channels if c not in expected]
            detail = f"missing {', '.join(missing)}" if missing else f"unexpected {', '.join(extra)}"
            raise DatasetError(
                folder / f"{case}_0000{ending}",
                f"case {case!r} does not have exactly channels 0..{n_channels - 1} declared in "
                f"{source.name}: {detail}",
            )
        cases[case] = [channels[c] for c in expected]
    return cases


def load_nnunet(path: str | Path) -> Datalist:
    """Load an nnU-Net v2 raw dataset (``DatasetXXX_Name/`` with ``dataset.json``, ``imagesTr/``...)."""
    path = Path(path)
    djson = _find_dataset_json(path)
    if djson is None:
        raise DatasetError(path, "no dataset.json found (nnU-Net layout)")
    root = djson.parent
    d = _read_json(djson)
    _require(d, ("channel_names", "labels", "file_ending"), djson)
    if not isinstance(d["labels"], dict):
        raise DatasetError(djson, "'labels' must be an object like {'background': 0, 'liver': 1}")
    if "regions_class_order" in d:
        raise DatasetError(djson, "region-based labels (regions_class_order) are not supported")
    labels = _named_labels(d["labels"], djson)
    modalities = _modalities(d["channel_names"], djson, "channel_names")
    ending = str(d["file_ending"])
    if not ending.startswith("."):
        raise DatasetError(djson, f"file_ending must start with '.', got {ending!r}")
    notes: list[str] = []
    training: list[Case] = []
    test: list[Case] = []
    if isinstance(d.get("dataset"), dict):  # explicit file list (nnU-Net v2 'dataset' key)
        for case_id, entry in d["dataset"].items():
            where = f"dataset[{case_id!r}]"
            if not isinstance(entry, dict) or "images" not in entry or "label" not in entry:
                raise DatasetError(djson, f"{where}: expected {{'images': [...], 'label': ...}}")
            images = tuple(
                _resolve(root, p, f"{where}.images[{i}]", djson) for i, p in enumerate(entry["images"])
            )
            if len(images) != len(modalities):
                raise DatasetError(djson, f"{where}: {len(images)} images for {len(modalities)} channels")
            training.append(
                Case(str(case_id), images, _resolve(root, entry["label"], f"{where}.label", djson))
            )
    else:
        images_tr = root / "imagesTr"
        labels_tr = root / "labelsTr"
        for folder in (images_tr, labels_tr):
            if not folder.is_dir():
                raise DatasetError(folder, f"folder missing (required by the nnU-Net layout of {djson})")
        cases = _scan_channels(images_tr, ending, djson, len(modalities))
        label_files = {
            f.name[: -len(ending)]: f
            for f in sorted(labels_tr.iterdir())
            if f.name.endswith(ending) and not f.name.startswith(".")
        }
        for case_id, files in cases.items():
            if case_id not in label_files:
                raise DatasetError(
                    files[0], f"image has no label (expected {labels_tr / (case_id + ending)})"
                )
            training.append(Case(case_id, tuple(files), label_files[case_id]))
        orphans = sorted(set(label_files) - set(cases))
        if orphans:
            raise DatasetError(
                label_files[orphans[0]],
                f"label has no image (expected {images_tr / (orphans[0] + '_0000' + ending)})"
                + (f"; {len(orphans) - 1} more such labels" if len(orphans) > 1 else ""),
            )
        if (root / "imagesTs").is_dir():
            for case_id, files in _scan_channels(root / "imagesTs", ending, djson, len(modalities)).items():
                test.append(Case(case_id, tuple(files)))
    n_declared = d.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(training):
        raise DatasetError(
            djson, f"numTraining is {n_declared} but {len(training)} training cases were found"
        )
    if "ignore" in labels.values():
        notes.append("an 'ignore' label is declared; medunet treats it as an ordinary class")
    _check_unique(training + test, djson)
    return Datalist(
        name=str(d.get("name") or root.name),
        root=root,
        labels=labels,
        modalities=modalities,
        training=training,
        test=test,
        layout="nnunet",
        notes=notes,
    )


# --------------------------------------------------------------------------------------------- folders


_FOLDER_PAIRS = (("images", "labels"), ("imagesTr", "labelsTr"))


def _folder_pair(path: Path) -> tuple[Path, Path] | None:
    for img, lab in _FOLDER_PAIRS:
        if (path / img).is_dir() and (path / lab).is_dir():
            return path / img, path / lab
    return None


def _detect_folders(path: Path) -> bool:
    return path.is_dir() and not (path / "dataset.json").is_file() and _folder_pair(path) is not None


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        stem = _strip_suffix(file.name)
        if stem is None or file.name.startswith("."):
            continue
        if stem in files:
            raise DatasetError(file, f"duplicate case id {stem!r} (also {files[stem].name})")
        files[stem] = file
    return files


def _resolve_labels(
    labels: Mapping[int, str] | str | Path | None, search_dir: Path, label_files: list[Path], notes: list[str]
) -> dict[int, str]:
    if isinstance(labels, Mapping):
        out = {int(k): str(v) for k, v in labels.items()}
        out.setdefault(0, "background")
        return dict(sorted(out.items()))
    file = Path(labels) if labels is not None else _labels_file(search_dir)
    if file is not None:
        if not file.is_file():
            raise DatasetError(file, "label names file does not exist")
        return read_label_names(file)
    derived = _labels_from_values(label_files)
    notes.append(
        f"no labels.json: label names derived from values found ({', '.join(derived.values())}); "
        f"write {search_dir / 'labels.json'} to name them"
    )
    return derived


def load_folders(
    path: str | Path, *, labels: Mapping[int, str] | str | Path | None = None, modality: str = "CT"
) -> Datalist:
    """Load ``images/`` + ``labels/`` (or ``imagesTr/`` + ``labelsTr/``) paired by file name.

    The case id is the file name without its image suffix. Images named ``{case}_{XXXX}`` with a label
    ``{case}`` are grouped as channels of one case. Label names come from ``labels`` (a mapping or a
    file), else ``labels.json``/``labels.txt`` in the dataset folder, else are derived from the values
    present (``label_1..label_N``, N = the largest value found).
    """
    path = Path(path)
    pair = _folder_pair(path)
    if pair is None:
        raise DatasetError(path, "expected images/ and labels/ (or imagesTr/ and labelsTr/) folders")
    images_dir, labels_dir = pair
    image_files = _image_files(images_dir)
    label_files = _image_files(labels_dir)
    if not image_files:
        raise DatasetError(images_dir, "no image files (.nii.gz, .nii, .nrrd, .mha)")
    grouped: dict[str, dict[int, Path]] = {}
    for stem, file in image_files.items():
        match = _CHANNEL_RE.match(stem)
        if stem not in label_files and match is not None and match["case"] in label_files:
            grouped.setdefault(match["case"], {})[int(match["channel"])] = file
        else:
            grouped.setdefault(stem, {})[0] = file
    training: list[Case] = []
    n_channels = {len(ch) for ch in grouped.values()}
    for case_id, channels in grouped.items():
        if case_id not in label_files:
            raise DatasetError(channels[min(channels)], f"image has no label in {labels_dir}")
        if sorted(channels) != list(range(len(channels))) or len(n_channels) > 1:
            raise DatasetError(
                channels[min(channels)], f"case {case_id!r} has channels {sorted(channels)}, others differ"
            )
        training.append(Case(case_id, tuple(channels[c] for c in sorted(channels)), label_files[case_id]))
    orphans = sorted(set(label_files) - set(grouped))
    if orphans:
        raise DatasetError(label_files[orphans[0]], f"label has no image in {images_dir}")
    notes: list[str] = []
    names = _resolve_labels(labels, path, [c.label for c in training if c.label is not None], notes)
    test: list[Case] = []
    if (path / "imagesTs").is_dir():
        test = [Case(stem, (file,)) for stem, file in _image_files(path / "imagesTs").items()]
    _check_unique(training + test, images_dir)
    return Datalist(
        name=path.name,
        root=path,
        labels=names,
        modalities={i: modality for i in range(next(iter(n_channels)))},
        training=training,
        test=test,
        layout="folders",
        notes=notes,
    )


# ------------------------------------------------------------------------------------------------- csv


def _find_csv(path: Path) -> Path | None:
    if path.is_file() and path.suffix.lower() == ".csv":
        return path
    candidate = path / "dataset.csv"
    return candidate if candidate.is_file() else None


def _detect_csv(path: Path) -> bool:
    return _find_csv(path) is not None and not (path.is_dir() and (path / "dataset.json").is_file())


def load_csv(
    path: str | Path, *, labels: Mapping[int, str] | str | Path | None = None, modality: str = "CT"
) -> Datalist:
    """Load a CSV with columns ``image[,label][,case_id]`` (paths relative to the CSV's folder).

    Rows without a label become test cases. Multi-channel images: separate channel paths with ``;`` in
    the ``image`` cell. Label names as for :func:`load_folders` (``labels`` or ``labels.json`` next to
    the CSV, else derived from the values).
    """
    path = Path(path)
    csv_path = _find_csv(path)
    if csv_path is None:
        raise DatasetError(path, "not a .csv file and no dataset.csv inside")
    root = csv_path.parent
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(csv_path, f"cannot read CSV ({exc})") from None
    if "image" not in fields:
        raise DatasetError(
            csv_path, f"missing required column 'image' (columns: {', '.join(fields) or 'none'})"
        )
    training: list[Case] = []
    test: list[Case] = []
    raw_annotated: dict[str, tuple[str, str | None]] = {}  # parsed once the label names are known
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        where = f"line {i}"
        if not row.get("image"):
            raise DatasetError(csv_path, f"{where}: empty 'image'")
        images = tuple(
            _resolve(root, p.strip(), f"{where} image", csv_path)
            for p in row["image"].split(";")
            if p.strip()
        )
        case_id = row.get("case_id") or _strip_suffix(images[0].name) or images[0].stem
        if row.get("label"):
            label_path = _resolve(root, row["label"], f"{where} label", csv_path)
            training.append(Case(case_id, images, label_path))
            raw_annotated[case_id] = (where, row.get("annotated") or None)
        else:
            test.append(Case(case_id, images))
    if not training and not test:
        raise DatasetError(csv_path, "no rows")
    _check_unique(training + test, csv_path)
    n_channels = {len(c.images) for c in training + test}
    if len(n_channels) > 1:
        raise DatasetError(csv_path, f"rows have different numbers of channels: {sorted(n_channels)}")
    notes: list[str] = []
    names = _resolve_labels(labels, root, [c.label for c in training if c.label is not None], notes)
    training = [
        replace(c, annotated=_parse_annotated(raw_annotated[c.case_id][1], names, raw_annotated[c.case_id][0], csv_path))
        for c in training
    ]
    return Datalist(
        name=csv_path.stem if csv_path.stem != "dataset" else root.name,
        root=root,
        labels=names,
        modalities={i: modality for i in range(next(iter(n_channels)))},
        training=training,
        test=test,
        layout="csv",
        notes=notes,
    )


# -------------------------------------------------------------------------------------------- registry

#: Layout name -> loader, detector and description. Detection tries them in this order.
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout(
            "nnunet",
            "nnU-Net v2 raw: dataset.json (channel_names, labels name->int, file_ending), imagesTr/labelsTr",
            _detect_nnunet,
            load_nnunet,
        ),
        Layout(
            "decathlon",
            "Medical Segmentation Decathlon: dataset.json (modality, labels, training, test)",
            _detect_decathlon,
            load_decathlon,
        ),
        Layout(
            "folders",
            "images/ + labels/ (or imagesTr/ + labelsTr/) paired by file name; optional labels.json",
            _detect_folders,
            load_folders,
        ),
        Layout(
            "csv",
            "CSV with columns image[,label][,case_id], paths relative to the CSV; optional labels.json",
            _detect_csv,
            load_csv,
        ),
    )
}


def detect_layout(path: str | Path) -> str:
    """Name of the layout at ``path``; :class:`DatasetError` when none matches."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "dataset path does not exist")
    for layout in LAYOUTS.values():
        if layout.detect(path):
            return layout.name
    raise DatasetError(
        path,
        "not a recognised dataset layout; expected one of: "
        + "; ".join(f"{name} ({layout.description})" for name, layout in LAYOUTS.items()),
    )


def load_dataset(
    path: str | Path,
    *,
    layout: LayoutName = "auto",
    labels: Mapping[int, str] | str | Path | None = None,
    modality: str = "CT",
) -> Datalist:
    """Read a dataset in any supported layout into a :class:`Datalist`.

    Args:
        path: dataset folder (or its ``dataset.json`` / CSV file).
        layout: one of :data:`LAYOUTS` or ``"auto"`` to detect it.
        labels: label names for ``folders``/``csv`` (a mapping or a labels.json/labels.txt path).
        modality: modality name for ``folders``/``csv`` datasets, which do not declare one.
    """
    path = Path(path)
    name = detect_layout(path) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise DatasetError(path, f"unknown layout {name!r}; choose from {', '.join(LAYOUTS)}")
    if not path.exists():
        raise DatasetError(path, "dataset path does not exist")
    loader = LAYOUTS[name].load
    if name in ("folders", "csv"):
        datalist = loader(path, labels=labels, modality=modality)
    else:
        if labels is not None:
            logger.warning("%s: labels=... ignored; the %s layout declares its own labels", path, name)
        datalist = loader(path)
    if name != "decathlon":  # Decathlon declares 'annotated' per entry; the others may use a sidecar
        datalist.training = _apply_sidecar(datalist.training, datalist.labels, datalist.root)
    for note in datalist.notes:
        logger.warning("%s: %s", datalist.root, note)
    logger.debug(
        "%s: %s layout, %d training + %d test cases", path, name, len(datalist.training), len(datalist.test)
    )
    return datalist


# ---------------------------------------------------------------------------------------------- hashing


def _content_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, or of a DICOM series directory (every file, in path order)."""
    if not path.is_dir():
        with path.open("rb") as fh:
            return path.stat().st_size, hashlib.file_digest(fh, "sha256").hexdigest()
    inner, size = hashlib.sha256(), 0
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        file_size, digest = _content_digest(member)
        inner.update(f"{member.relative_to(path).as_posix()}\0{file_size}\0{digest}\n".encode())
        size += file_size
    return size, inner.hexdigest()


def dataset_hash(datalist: Datalist) -> str:
    """A content hash of a dataset: label names, modalities, and every file's name, size and bytes.

    SHA-256 over each file's full bytes (files are compressed on disk, so this is cheap: 34 OpenKBP
    128^3 CTs, 14.5 MB, hash in ~15-45 ms).
    Paths are taken relative to the dataset root so a moved copy hashes the same. Returns 16 hex chars.
    """
    outer = hashlib.sha256()
    outer.update(json.dumps({str(k): v for k, v in sorted(datalist.labels.items())}).encode())
    outer.update(json.dumps({str(k): v for k, v in sorted(datalist.modalities.items())}).encode())
    for split, cases in (("training", datalist.training), ("test", datalist.test)):
        for case in sorted(cases, key=lambda c: c.case_id):
            files = [*case.images, *([case.label] if case.label is not None else [])]
            outer.update(f"{split}:{case.case_id}\n".encode())
            for file in files:
                try:
                    rel = file.relative_to(datalist.root).as_posix()
                except ValueError:
                    rel = file.name
                try:
                    size, digest = _content_digest(file)
                except OSError as exc:
                    raise DatasetError(file, f"cannot read for hashing ({exc.strerror or exc})") from None
                outer.update(f"{rel}\0{size}\0{digest}\n".encode())
    return outer.hexdigest()[:16]


__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "Layout",
    "LayoutName",
    "dataset_hash",
    "detect_layout",
    "load_csv",
    "load_dataset",
    "load_decathlon",
    "load_folders",
    "load_nnunet",
    "read_label_names",
]
