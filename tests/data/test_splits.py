"""Splits and k-fold: deterministic by seed, order-independent, stable when cases are added."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from medunet.data.datalist import Case
from medunet.data.splits import case_hash, fold_assignment, kfold, split_cases
from medunet.errors import ConfigError


def _cases(n: int, start: int = 0) -> list[Case]:
    return [
        Case(f"case_{i:03d}", (Path(f"img/case_{i:03d}.nii.gz"),), Path(f"lab/{i}.nii.gz"))
        for i in range(start, start + n)
    ]


def _where(split) -> dict[str, str]:  # noqa: ANN001
    return {cid: name for name, ids in split.ids().items() for cid in ids}


def test_split_is_a_deterministic_partition() -> None:
    cases = _cases(50)
    a = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=3)
    b = split_cases(list(reversed(cases)), val_fraction=0.2, test_fraction=0.1, seed=3)
    assert _where(a) == _where(b)  # same seed, any input order: same placement
    assert sorted(_where(a)) == sorted(c.case_id for c in cases)  # every case exactly once
    assert len(a.train) + len(a.val) + len(a.test) == 50
    assert a.train == [c for c in cases if c in a.train]  # input order kept
    assert 3 <= len(a.val) <= 18 and 1 <= len(a.test) <= 12  # fractions hold roughly (binomial)
    c = split_cases(cases, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert _where(c) != _where(a)  # the seed matters


def _u(case_id: str, seed: int) -> float:
    """The documented hash, written out independently: the first 8 bytes of sha256("<seed>\\0<id>")."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{case_id}".encode()).digest()[:8], "big") / 2.0**64


def test_case_hash_known_values() -> None:
    # Pinned numbers: a change of hash (and so of every published split) fails here.
    assert case_hash("case_000", 0) == 0.820569023965388
    assert case_hash("case_001", 7) == 0.8319938142148637
    assert case_hash("p3", 4) == 0.3443090023939553
    for cid, seed in (("case_000", 0), ("case_017", 3), ("hn_train_004", 11)):
        assert case_hash(cid, seed) == _u(cid, seed)


def test_placement_known_answer() -> None:
    """30 cases, val 0.3, test 0.2, seed 7: the split written out (the same on every machine)."""
    split = split_cases(_cases(30), val_fraction=0.3, test_fraction=0.2, seed=7)
    ids = {name: [int(cid[-3:]) for cid in cids] for name, cids in split.ids().items()}
    assert ids == {
        "train": [1, 3, 4, 6, 7, 15, 16, 17, 22, 28, 29],
        "val": [5, 8, 12, 13, 14, 21, 24, 25, 27],
        "test": [0, 2, 9, 10, 11, 18, 19, 20, 23, 26],
    }
    # ...and it is the documented rule: test below 0.2, validation below 0.5, else training.
    for cid, where in _where(split).items():
        u = _u(cid, 7)
        assert where == ("test" if u < 0.2 else "val" if u < 0.5 else "train")


def test_existing_cases_never_move_when_cases_are_added() -> None:
    old = _cases(40)
    new = old + _cases(25, start=40)
    before = _where(split_cases(old, val_fraction=0.2, test_fraction=0.1, seed=1))
    after = _where(split_cases(new, val_fraction=0.2, test_fraction=0.1, seed=1))
    assert {cid: after[cid] for cid in before} == before


def test_at_least_one_validation_case() -> None:
    # Seed 0: case_000 hashes to 0.82 and case_001 to 0.26, so hashing alone validates neither at 0.2;
    # the training case nearest the validation band (case_001) moves to validation.
    cases = _cases(2)
    assert _u("case_000", 0) > 0.8 and 0.2 < _u("case_001", 0) < 0.3
    split = split_cases(cases, val_fraction=0.2, seed=0)
    assert split.ids() == {"train": ["case_000"], "val": ["case_001"], "test": []}
    assert split_cases(cases, val_fraction=0.0, seed=0).val == []
    assert len(split_cases(_cases(1), val_fraction=0.2).train) == 1  # one case: it trains


def test_at_least_one_training_case() -> None:
    cases = _cases(3)
    split = split_cases(cases, val_fraction=0.5, test_fraction=0.49, seed=0)
    assert len(split.train) >= 1


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.0), (1.0, 0.0), (0.6, 0.5)])
def test_bad_fractions(val: float, test: float) -> None:
    with pytest.raises(ConfigError):
        split_cases(_cases(5), val_fraction=val, test_fraction=test)


def test_duplicate_ids_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate case id 'case_000'"):
        split_cases(_cases(3) + _cases(1))


@pytest.mark.parametrize(("n", "k"), [(34, 5), (7, 5), (5, 5), (12, 3)])
def test_kfold_validates_every_case_exactly_once(n: int, k: int) -> None:
    cases = _cases(n)
    folds = [kfold(cases, k, f, seed=2) for f in range(k)]
    validated = [c.case_id for s in folds for c in s.val]
    assert sorted(validated) == sorted(c.case_id for c in cases)
    for s in folds:
        assert s.val, "every fold validates on something when n >= k"
        assert not set(c.case_id for c in s.val) & set(c.case_id for c in s.train)
        assert len(s.val) + len(s.train) == n and s.test == []


def test_fold_assignment_known_answers() -> None:
    # Fold = floor(5 u); 7 cases at seed 2 hash to folds 3 4 3 2 4 2 2, leaving folds 0 and 1 empty.
    # Fold 0 takes from the largest fold (2) the case nearest its band centre 0.1 (case_006, u 0.503),
    # then fold 1 the one nearest 0.3 from fold 2 again (case_003, u 0.517).
    assignment = fold_assignment(_cases(7), 5, seed=2)
    assert [assignment[f"case_{i:03d}"] for i in range(7)] == [3, 4, 3, 1, 4, 2, 0]
    # 5 cases, 5 folds: one case per fold.
    assignment = fold_assignment(_cases(5), 5, seed=2)
    assert [assignment[f"case_{i:03d}"] for i in range(5)] == [3, 1, 0, 2, 4]
    # Without the small-dataset rule (more folds than cases), the plain hash folds.
    assert fold_assignment(_cases(3), 5, seed=2) == {"case_000": 3, "case_001": 4, "case_002": 3}


def test_kfold_stable_when_cases_are_added() -> None:
    old = _cases(60)
    before = fold_assignment(old, 5, seed=0)
    after = fold_assignment(old + _cases(30, start=60), 5, seed=0)
    assert {cid: after[cid] for cid in before} == before


def test_kfold_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="k >= 2"):
        kfold(_cases(5), 1, 0)
    with pytest.raises(ConfigError, match="fold must be in 0..4"):
        kfold(_cases(5), 5, 5)


def test_cli_datalist_writes_the_split(tmp_path: Path) -> None:
    import json

    from medunet.cli import main
    from medunet.io import write_nifti

    affine = np.eye(4)
    for i in range(6):
        write_nifti(tmp_path / "images" / f"p{i}.nii.gz", np.full((4, 4, 4), i, np.int16), affine)
        write_nifti(tmp_path / "labels" / f"p{i}.nii.gz", np.ones((4, 4, 4), np.uint8), affine)
    (tmp_path / "labels.json").write_text('{"0": "background", "1": "liver"}')
    out = tmp_path / "datalist.json"
    assert (
        main(["datalist", str(tmp_path), "-o", str(out), "--folds", "3", "--fold", "1", "--seed", "4"]) == 0
    )
    written = json.loads(out.read_text())
    # Known answer: seed 4 puts p0..p5 in folds 0 1 0 1 1 2, so fold 1 validates p1, p3, p4.
    assert [d["case_id"] for d in written["validation"]] == ["p1", "p3", "p4"]
    assert [d["case_id"] for d in written["training"]] == ["p0", "p2", "p5"]
    assert written["labels"] == {"0": "background", "1": "liver"}
    assert written["training"][0]["image"].endswith(".nii.gz")


def test_bundle_fold_split_never_overlaps_and_covers_every_case(tmp_path: Path) -> None:
    """``--fold k --folds n`` in the bundle: folds are disjoint, cover every case, train never sees val."""
    from medunet.data.datalist import Datalist
    from medunet.training.data import make_split

    cases = [
        Case(f"c{i:02d}", (Path(f"/x/c{i:02d}.nii.gz"),), Path(f"/y/c{i:02d}.nii.gz")) for i in range(23)
    ]
    dl = Datalist("d", tmp_path, {0: "background", 1: "a"}, {0: "CT"}, training=cases)
    seen: list[str] = []
    for k in range(5):
        split = make_split(dl, tmp_path / f"f{k}", fold=k, folds=5, check_files=False)
        train, val = {c.case_id for c in split.train}, {c.case_id for c in split.val}
        assert not train & val
        assert train | val == {c.case_id for c in cases}
        seen += sorted(val)
        assert json.loads((tmp_path / f"f{k}" / "split.json").read_text())["fold"] == k
    assert sorted(seen) == sorted(c.case_id for c in cases)


def test_validation_cap_moves_the_surplus_to_training(tmp_path: Path) -> None:
    from medunet.data.datalist import Datalist
    from medunet.training.data import make_split

    cases = [Case(f"c{i:03d}", (Path(f"/x/{i}.nii.gz"),), Path(f"/y/{i}.nii.gz")) for i in range(200)]
    dl = Datalist("d", tmp_path, {0: "background", 1: "a"}, {0: "CT"}, training=cases)
    uncapped = make_split(dl, tmp_path / "a", max_val_cases=None, check_files=False)
    capped = make_split(dl, tmp_path / "b", max_val_cases=12, check_files=False)
    assert len(uncapped.val) > 12 and len(capped.val) == 12
    assert {c.case_id for c in capped.val} <= {c.case_id for c in uncapped.val}
    assert len(capped.train) == 200 - 12
