import os

import pytest

from medunet.io.atomic import atomic_path, atomic_write_text, replace_dir


def test_atomic_write_leaves_no_temp_and_keeps_old_on_failure(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_replace_dir_swaps_complete_folder(tmp_path):
    final = tmp_path / "case"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new = tmp_path / ".case.tmp"
    new.mkdir()
    (new / "new.txt").write_text("new")
    assert replace_dir(new, final) == final
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case"]  # old copy removed, temp gone


def test_replace_dir_restores_old_folder_when_rename_fails(tmp_path, monkeypatch):
    final = tmp_path / "case"
    final.mkdir()
    (final / "old.txt").write_text("old")
    new = tmp_path / ".case.tmp"
    new.mkdir()
    real_replace = os.replace

    def flaky(src, dst):
        if str(src) == str(new):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="disk full"):
        replace_dir(new, final)
    assert (final / "old.txt").read_text() == "old"
