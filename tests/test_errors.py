from medunet.errors import InvalidImageError, MedunetError


def test_error_names_file_and_problem():
    err = InvalidImageError("/data/a.nii.gz", "file is empty (0 bytes)")
    assert str(err) == "/data/a.nii.gz: file is empty (0 bytes)"
    assert isinstance(err, MedunetError)
    assert err.path == "/data/a.nii.gz" and err.problem == "file is empty (0 bytes)"
