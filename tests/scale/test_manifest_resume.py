"""Case lists and CSV manifests as ``--input``, and ``--resume`` on the local path (no Ray needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray_helpers import file_hashes, make_cases, make_checkpoint

from medunet.cli import main
from medunet.cli.predict import collect_cases
from medunet.errors import DatasetError
from medunet.scale.manifest import read_manifest
from medunet.scale.runlog import is_complete, remove_stale_partials


def test_list_file_and_csv_manifest(tmp_path: Path) -> None:
    (tmp_path / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.nii.gz").write_bytes(b"x")
    listing = tmp_path / "cases.txt"
    listing.write_text("# archive batch 1\na.nii.gz\n\n  sub  \nmissing.nii.gz\n")
    assert [e.input for e in read_manifest(listing)] == [
        tmp_path / "a.nii.gz",
        tmp_path / "sub",
        tmp_path / "missing.nii.gz",
    ]
    cases, problems = collect_cases([listing], None)
    assert [(c.name, c.path) for c in cases] == [
        ("a", tmp_path / "a.nii.gz"),
        ("b", tmp_path / "sub" / "b.nii.gz"),
    ]
    assert problems == [f"{tmp_path / 'missing.nii.gz'}: input does not exist"]

    manifest = tmp_path / "m.csv"
    manifest.write_text("case,input,series\npatient 7 / CT,a.nii.gz,\n,sub/b.nii.gz,\n")
    entries = read_manifest(manifest)
    assert entries[0].case == "patient 7 / CT" and entries[1].case is None and entries[0].series is None
    cases, problems = collect_cases([manifest], None)
    assert [c.name for c in cases] == ["patient_7_CT", "b"] and problems == []

    bad = tmp_path / "bad.csv"
    bad.write_text("file,case\na.nii.gz,x\n")
    with pytest.raises(DatasetError, match="'input' column"):
        read_manifest(bad)


def test_local_resume_skips_complete_cases_and_redoes_others(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "model")
    make_cases(tmp_path / "in", 3)
    listing = tmp_path / "cases.csv"
    listing.write_text("input\n" + "".join(f"in/ct_{i}.nii.gz\n" for i in range(3)))
    out = tmp_path / "out"
    args = [
        "predict",
        "--checkpoint",
        str(ckpt),
        "--input",
        str(listing),
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    first = file_hashes(out)
    # ct_1 from another model (hash), ct_2 left half-written by a killed run: only those are redone.
    record = json.loads((out / "ct_1" / "case.json").read_text())
    record["checkpoint_sha256"] = "f" * 64
    (out / "ct_1" / "case.json").write_text(json.dumps(record))
    (out / "ct_2" / "case.json").unlink()
    (out / ".ct_2.partial-abc").mkdir()
    source = str((tmp_path / "in" / "ct_0.nii.gz").resolve())
    options = json.loads((out / "ct_0" / "case.json").read_text())["options"]
    assert is_complete(out / "ct_0", source, first_sha(out), options)
    assert not is_complete(out / "ct_0", source, "0" * 64, options)
    assert not is_complete(
        out / "ct_0", source, first_sha(out), {**options, "tta_mirror": not options["tta_mirror"]}
    )
    assert main([*args, "--resume"]) == 0
    assert file_hashes(out / "ct_0") == {k[5:]: v for k, v in first.items() if k.startswith("ct_0/")}
    assert json.loads((out / "ct_1" / "case.json").read_text())["checkpoint_sha256"] == first_sha(out)
    assert (out / "ct_2" / "case.json").is_file()
    assert not (out / ".ct_2.partial-abc").exists()  # the killed run's leftovers are cleared
    (out / ".ct_0.partial-xyz").mkdir()
    assert remove_stale_partials(out, ["ct_1"]) == 0 and remove_stale_partials(out) == 1


def first_sha(out: Path) -> str:
    return json.loads((out / "ct_0" / "case.json").read_text())["checkpoint_sha256"]
