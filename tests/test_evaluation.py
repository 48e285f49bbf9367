"""Which cases evaluation scores: the split's test cases, else the dataset's labelled test set, else val."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medunet.data.datalist import Case, Datalist
from medunet.errors import DatasetError
from medunet.evaluation import evaluation_cases


def _datalist(tmp_path: Path, test_labelled: bool) -> Datalist:
    tr = [Case(f"c{i}", (tmp_path / f"c{i}.nii.gz",), tmp_path / f"c{i}_seg.nii.gz") for i in range(3)]
    te = [Case("t0", (tmp_path / "t0.nii.gz",), tmp_path / "t0_seg.nii.gz" if test_labelled else None)]
    return Datalist("d", tmp_path, {0: "background", 1: "liver"}, {0: "CT"}, training=tr, test=te)


def _split(run: Path, **parts: list[str]) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "split.json").write_text(json.dumps({"train": [], "val": [], "test": [], **parts}))
    return run


def test_split_test_cases_come_first(tmp_path):
    run = _split(tmp_path / "run", train=["c0"], val=["c1"], test=["c2"])
    assert [c.case_id for c in evaluation_cases(_datalist(tmp_path, True), run)] == ["c2"]


def test_labelled_dataset_test_set_before_validation(tmp_path):
    run = _split(tmp_path / "run", train=["c0", "c1"], val=["c2"])
    assert [c.case_id for c in evaluation_cases(_datalist(tmp_path, True), run)] == ["t0"]
    assert [c.case_id for c in evaluation_cases(_datalist(tmp_path, False), run)] == ["c2"]


def test_no_labelled_cases_is_a_dataset_error(tmp_path):
    dl = _datalist(tmp_path, False)
    dl.training = []
    with pytest.raises(DatasetError, match="no labelled test cases"):
        evaluation_cases(dl)
