"""Dataset layouts -> Datalist: every layout reads the same tiny dataset to the same content."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medunet.data.layouts import LAYOUTS, dataset_hash, detect_layout, load_dataset, read_label_names
from medunet.errors import DatasetError
from medunet.io import read_nifti, write_nifti

LABELS = {0: "background", 1: "liver", 2: "spleen"}
CASES = ("case_a", "case_b", "case_c")
AFFINE = np.diag([1.5, 1.5, 3.0, 1.0])


def _arrays(i: int) -> tuple[np.ndarray, np.ndarray]:
    image = (np.arange(8 * 8 * 8, dtype=np.int16).reshape(8, 8, 8) + 100 * i).astype(np.int16)
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:4, 2:4, 2:4] = 1
    label[5:7, 5:7, 5:7] = 2 if i != 1 else 0
    return image, label


def _write_pairs(image_dir: Path, label_dir: Path, *, image_fmt: str = "{}.nii.gz") -> None:
    for i, case in enumerate(CASES):
        image, label = _arrays(i)
        write_nifti(image_dir / image_fmt.format(case), image, AFFINE)
        write_nifti(label_dir / f"{case}.nii.gz", label, AFFINE)


def make_decathlon(root: Path) -> Path:
    _write_pairs(root / "imagesTr", root / "labelsTr")
    write_nifti(root / "imagesTs" / "case_t.nii.gz", _arrays(9)[0], AFFINE)
    meta = {
        "name": "tiny",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in LABELS.items()},
        "numTraining": 3,
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in CASES],
        "test": ["./imagesTs/case_t.nii.gz"],
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_nnunet(root: Path, channels: tuple[str, ...] = ("CT",)) -> Path:
    for c in range(len(channels)):
        _write_pairs(root / "imagesTr", root / "labelsTr", image_fmt="{}_" + f"{c:04d}.nii.gz")
    for c in range(len(channels)):
        write_nifti(root / "imagesTs" / f"case_t_{c:04d}.nii.gz", _arrays(9)[0], AFFINE)
    meta = {
        "channel_names": {str(i): m for i, m in enumerate(channels)},
        "labels": {v: k for k, v in LABELS.items()},
        "numTraining": 3,
        "file_ending": ".nii.gz",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_folders(root: Path) -> Path:
    _write_pairs(root / "images", root / "labels")
    write_nifti(root / "imagesTs" / "case_t.nii.gz", _arrays(9)[0], AFFINE)
    (root / "labels.json").write_text(json.dumps({str(k): v for k, v in LABELS.items()}))
    return root


def make_csv(root: Path) -> Path:
    _write_pairs(root / "img", root / "lab")
    write_nifti(root / "img" / "case_t.nii.gz", _arrays(9)[0], AFFINE)
    with (root / "cases.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "case_id"])
        for c in CASES:
            writer.writerow([f"img/{c}.nii.gz", f"lab/{c}.nii.gz", c])
        writer.writerow(["img/case_t.nii.gz", "", "case_t"])
    (root / "labels.json").write_text(json.dumps({v: k for k, v in LABELS.items()}))  # nnU-Net style
    return root / "cases.csv"


MAKERS = {"decathlon": make_decathlon, "nnunet": make_nnunet, "folders": make_folders, "csv": make_csv}


def test_registry_lists_every_layout() -> None:
    assert set(LAYOUTS) == set(MAKERS)
    assert all(layout.description for layout in LAYOUTS.values())


@pytest.mark.parametrize("layout", list(MAKERS))
def test_each_layout_loads_to_the_same_datalist(tmp_path: Path, layout: str) -> None:
    path = MAKERS[layout](tmp_path)
    assert detect_layout(path) == layout
    dl = load_dataset(path)
    assert dl.layout == layout
    assert dl.labels == LABELS
    assert dl.modalities == {0: "CT"}
    assert [c.case_id for c in dl.training] == list(CASES)
    assert [c.case_id for c in dl.test] == ["case_t"]
    assert dl.test[0].label is None
    for i, case in enumerate(dl.training):
        assert len(case.images) == 1 and case.label is not None
        image, label = _arrays(i)
        np.testing.assert_array_equal(read_nifti(case.images[0]).array, image)
        np.testing.assert_array_equal(read_nifti(case.label).array, label)
    # forcing the layout gives the same as auto-detection
    assert load_dataset(path, layout=layout).training == dl.training


def test_nnunet_multichannel_ordered_by_channel(tmp_path: Path) -> None:
    make_nnunet(tmp_path, channels=("T1", "T2", "FLAIR"))
    dl = load_dataset(tmp_path)
    assert dl.modalities == {0: "T1", 1: "T2", 2: "FLAIR"}
    for case in dl.training:
        assert [p.name for p in case.images] == [f"{case.case_id}_{c:04d}.nii.gz" for c in range(3)]
    assert dl.to_monai()[0]["image"] == [str(p) for p in dl.training[0].images]


def test_nnunet_missing_channel_names_the_case(tmp_path: Path) -> None:
    make_nnunet(tmp_path, channels=("T1", "T2"))
    (tmp_path / "imagesTr" / "case_b_0001.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"case_b_0001\.nii\.gz") as exc:
        load_dataset(tmp_path)
    assert "case_b" in str(exc.value.path)


def test_nnunet_image_without_label(tmp_path: Path) -> None:
    make_nnunet(tmp_path)
    (tmp_path / "labelsTr" / "case_c.nii.gz").unlink()
    with pytest.raises(DatasetError, match="image has no label") as exc:
        load_dataset(tmp_path)
    assert exc.value.path == str(tmp_path / "imagesTr" / "case_c_0000.nii.gz")


def test_nnunet_region_labels_refused(tmp_path: Path) -> None:
    make_nnunet(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "whole_tumor": [1, 2], "core": 2}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="region-based") as exc:
        load_dataset(tmp_path)
    assert exc.value.path == str(tmp_path / "dataset.json")


def test_nnunet_num_training_mismatch(tmp_path: Path) -> None:
    make_nnunet(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["numTraining"] = 5
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="numTraining is 5 but 3"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("key", ["labels", "training"])
def test_decathlon_missing_key_names_dataset_json(tmp_path: Path, key: str) -> None:
    make_decathlon(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    del meta[key]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=f"missing required key.*'{key}'") as exc:
        load_dataset(tmp_path, layout="decathlon")
    assert exc.value.path == str(tmp_path / "dataset.json")


def test_decathlon_listed_file_missing_names_the_file(tmp_path: Path) -> None:
    make_decathlon(tmp_path)
    (tmp_path / "labelsTr" / "case_b.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"training\[1\]\.label.*does not exist") as exc:
        load_dataset(tmp_path)
    assert exc.value.path == str(tmp_path / "labelsTr" / "case_b.nii.gz")


def test_decathlon_image_without_label(tmp_path: Path) -> None:
    make_decathlon(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    del meta["training"][2]["label"]
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"training\[2\].*no 'label'"):
        load_dataset(tmp_path)


def test_decathlon_duplicate_case_ids(tmp_path: Path) -> None:
    make_decathlon(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["training"].append(dict(meta["training"][0]))
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match="duplicate case id 'case_a'") as exc:
        load_dataset(tmp_path)
    assert exc.value.path == str(tmp_path / "dataset.json")


def test_decathlon_invalid_json_names_file(tmp_path: Path) -> None:
    make_decathlon(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON") as exc:
        load_dataset(tmp_path)
    assert exc.value.path == str(tmp_path / "dataset.json")


def test_decathlon_packed_4d_channels_are_flagged(tmp_path: Path) -> None:
    make_decathlon(tmp_path)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    meta["modality"] = {"0": "FLAIR", "1": "T1w"}
    (tmp_path / "dataset.json").write_text(json.dumps(meta))
    dl = load_dataset(tmp_path)
    assert dl.modalities == {0: "FLAIR", 1: "T1w"}
    assert any("4D" in note for note in dl.notes)


def test_folders_image_without_label(tmp_path: Path) -> None:
    make_folders(tmp_path)
    (tmp_path / "labels" / "case_a.nii.gz").unlink()
    with pytest.raises(DatasetError, match="image has no label") as exc:
        load_dataset(tmp_path)
    assert exc.value.path == str(tmp_path / "images" / "case_a.nii.gz")


def test_folders_label_without_image(tmp_path: Path) -> None:
    make_folders(tmp_path)
    (tmp_path / "images" / "case_a.nii.gz").unlink()
    with pytest.raises(DatasetError, match="label has no image") as exc:
        load_dataset(tmp_path)
    assert exc.value.path == str(tmp_path / "labels" / "case_a.nii.gz")


def test_folders_labels_derived_from_values_when_undeclared(tmp_path: Path) -> None:
    make_folders(tmp_path)
    (tmp_path / "labels.json").unlink()
    dl = load_dataset(tmp_path)
    assert dl.labels == {0: "background", 1: "label_1", 2: "label_2"}
    assert any("derived" in note for note in dl.notes)


def test_folders_imagesTr_without_dataset_json_and_labels_txt(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "imagesTr", tmp_path / "labelsTr")
    (tmp_path / "labels.txt").write_text("liver\nspleen\n")
    dl = load_dataset(tmp_path)
    assert dl.layout == "folders"
    assert dl.labels == LABELS


def test_folders_channel_suffix_groups_channels(tmp_path: Path) -> None:
    for c in range(2):
        _write_pairs(tmp_path / "images", tmp_path / "labels", image_fmt="{}_" + f"{c:04d}.nii.gz")
    dl = load_dataset(tmp_path, labels=LABELS, modality="MR")
    assert [c.case_id for c in dl.training] == list(CASES)
    assert dl.modalities == {0: "MR", 1: "MR"}
    assert [p.name for p in dl.training[0].images] == ["case_a_0000.nii.gz", "case_a_0001.nii.gz"]


def test_csv_missing_image_column(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("img,label\na.nii.gz,b.nii.gz\n")
    with pytest.raises(DatasetError, match="missing required column 'image'") as exc:
        load_dataset(tmp_path / "x.csv")
    assert exc.value.path == str(tmp_path / "x.csv")


def test_csv_listed_file_missing(tmp_path: Path) -> None:
    csv_path = make_csv(tmp_path)
    (tmp_path / "img" / "case_b.nii.gz").unlink()
    with pytest.raises(DatasetError, match=r"line 3 image.*does not exist") as exc:
        load_dataset(csv_path)
    assert exc.value.path == str(tmp_path / "img" / "case_b.nii.gz")


def test_csv_duplicate_case_ids(tmp_path: Path) -> None:
    csv_path = make_csv(tmp_path)
    csv_path.write_text(csv_path.read_text() + "img/case_a.nii.gz,lab/case_a.nii.gz,case_a\n")
    with pytest.raises(DatasetError, match="duplicate case id 'case_a'"):
        load_dataset(csv_path)


def test_unknown_layout_lists_the_choices(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DatasetError, match="not a recognised dataset layout.*decathlon"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_read_label_names_forms(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps({"labels": {"0": "background", "3": "kidney"}}))
    (tmp_path / "b.txt").write_text("# comment\n1 liver\n4 kidney\n")
    assert read_label_names(tmp_path / "a.json") == {0: "background", 3: "kidney"}
    assert read_label_names(tmp_path / "b.txt") == {0: "background", 1: "liver", 4: "kidney"}


def test_dataset_hash_tracks_content_not_location(tmp_path: Path) -> None:
    root = make_decathlon(tmp_path / "one")
    h1 = dataset_hash(load_dataset(root))
    assert len(h1) == 16 and h1 == dataset_hash(load_dataset(root))
    copy = shutil.copytree(root, tmp_path / "two")
    assert dataset_hash(load_dataset(copy)) == h1  # same content elsewhere
    image, label = _arrays(0)
    label[0, 0, 0] = 1  # one voxel changes
    write_nifti(copy / "labelsTr" / "case_a.nii.gz", label, AFFINE)
    assert dataset_hash(load_dataset(copy)) != h1
    meta = json.loads((root / "dataset.json").read_text())
    meta["labels"]["2"] = "kidney"  # renaming a label changes what a fingerprint reports
    (root / "dataset.json").write_text(json.dumps(meta))
    assert dataset_hash(load_dataset(root)) != h1


@pytest.mark.realdata
def test_openkbp_loads(openkbp_dir: Path) -> None:
    dl = load_dataset(openkbp_dir)
    assert dl.layout == "decathlon"
    assert len(dl.training) == 34 and not dl.test
    assert dl.organ_names == [
        "Brainstem",
        "SpinalCord",
        "RightParotid",
        "LeftParotid",
        "Esophagus",
        "Larynx",
        "Mandible",
    ]
    assert dl.is_ct and dl.num_classes == 8
    assert len({c.case_id for c in dl.training}) == 34


def test_decathlon_test_cases_pick_up_labels_ts(tmp_path: Path) -> None:
    """Held-out references in labelsTs/ (beside imagesTs/) make the test set scoreable."""
    root = make_decathlon(tmp_path / "ds")
    assert load_dataset(root).test[0].label is None  # nothing to attach yet
    ref = write_nifti(root / "labelsTs" / "case_t.nii.gz", _arrays(9)[1], AFFINE)
    (case,) = load_dataset(root).test
    assert case.case_id == "case_t" and case.label == ref
    assert case.to_monai()["label"] == str(ref)


# ------------------------------------------------------------------------------ partial labels


def _organ(name_or_value: object) -> int:
    return {v: k for k, v in LABELS.items()}[name_or_value] if isinstance(name_or_value, str) else int(name_or_value)  # type: ignore[arg-type]


def test_decathlon_annotated_key_marks_partially_contoured_cases(tmp_path: Path) -> None:
    root = make_decathlon(tmp_path / "d")
    meta = json.loads((root / "dataset.json").read_text())
    organs = [v for k, v in LABELS.items() if k != 0]
    meta["training"][0]["annotated"] = organs[:1]
    meta["training"][1]["annotated"] = [str(_organ(organs[-1]))]  # values work too
    (root / "dataset.json").write_text(json.dumps(meta))
    dl = load_dataset(root)
    by_id = {c.case_id: c for c in dl.training}
    assert by_id[CASES[0]].annotated == frozenset({_organ(organs[0])})
    assert by_id[CASES[1]].annotated == frozenset({_organ(organs[-1])})
    assert by_id[CASES[2]].annotated is None and by_id[CASES[2]].is_annotated(_organ(organs[0]))
    assert dl.is_partial
    flags = by_id[CASES[0]].to_monai(dl.num_classes)["annotated"]
    assert flags.tolist() == [1.0] + [1.0 if k == _organ(organs[0]) else 0.0 for k in range(1, dl.num_classes)]


def test_annotated_unknown_organ_is_refused_with_the_entry(tmp_path: Path) -> None:
    root = make_decathlon(tmp_path / "d")
    meta = json.loads((root / "dataset.json").read_text())
    meta["training"][0]["annotated"] = ["Pancreas"]
    (root / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DatasetError, match=r"training\[0\].*Pancreas"):
        load_dataset(root)


def test_csv_annotated_column_and_sidecar_for_other_layouts(tmp_path: Path) -> None:
    organs = [v for k, v in LABELS.items() if k != 0]
    csv_path = make_csv(tmp_path / "c")
    rows = list(csv.reader(csv_path.open()))
    rows[0].append("annotated")
    rows[1].append(organs[0])
    rows[2].append(";".join(organs))
    rows[3].append("")
    rows[4].append("")
    with csv_path.open("w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    dl = load_dataset(csv_path)
    by_id = {c.case_id: c for c in dl.training}
    assert by_id[CASES[0]].annotated == frozenset({_organ(organs[0])})
    assert by_id[CASES[1]].annotated == frozenset(_organ(o) for o in organs)
    assert by_id[CASES[2]].annotated is None

    root = make_nnunet(tmp_path / "n")
    (root / "annotated.json").write_text(json.dumps({CASES[1]: [organs[-1]]}))
    dl = load_dataset(root)
    by_id = {c.case_id: c for c in dl.training}
    assert by_id[CASES[1]].annotated == frozenset({_organ(organs[-1])})
    assert by_id[CASES[0]].annotated is None
    (root / "annotated.json").write_text(json.dumps({"nobody": [organs[0]]}))
    with pytest.raises(DatasetError, match="nobody"):
        load_dataset(root)
