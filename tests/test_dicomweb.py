"""PACS round trip over DICOMweb against a real Orthanc: ``medunet predict --dicomweb URL --study UID --push``.

A session fixture starts Orthanc (Debian packages ``orthanc`` + ``orthanc-dicomweb``, installed by
``.ci/run``) with a temporary configuration and storage, the DICOMweb plugin, HTTP basic authentication and
local clients only; it stops the server at teardown. Studies are written with pydicom alone
(tests/dicom_variants.py) and uploaded through Orthanc's REST API; what medunet stored is checked through
that REST API too, never through medunet's own client. The model is a known-answer network behind a patched
``Predictor.from_checkpoint`` (no training, no weights).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import requests
import torch
from dicom_variants import LABELS, ct_series, reference_masks, save_series
from pydicom.uid import generate_uid

from medunet.cli import main
from medunet.errors import ConfigError, DicomWebConnectionError, DicomWebError
from medunet.inference import Predictor
from medunet.io.dicomweb import (
    ENV_PASSWORD,
    ENV_TOKEN,
    ENV_USER,
    DicomWebServer,
    server_url,
    session_from_env,
)
from medunet.plans import Intensity, Plans

pytestmark = pytest.mark.xdist_group("orthanc")  # one server per run, not one per xdist worker

USER = "medunet-test"
PASSWORD = "pw-7f3c91e2-not-in-logs"
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
PLANS = Plans(
    labels=LABELS,
    target_spacing=(1.0, 1.0, 2.0),
    patch_size=(16, 16, 8),
    intensity=Intensity("ct_window", 0.0, 100.0),
)
ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc", "/usr/local/bin/Orthanc")
DICOMWEB_PLUGINS = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


# ---------------------------------------------------------------------------------------------- Orthanc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_orthanc() -> tuple[str, str]:
    binary = shutil.which("Orthanc") or next((b for b in ORTHANC_BINARIES if Path(b).is_file()), None)
    if binary is None:
        pytest.skip(
            "Orthanc is not installed (Debian: apt-get install orthanc orthanc-dicomweb; .ci/run does)"
        )
    plugins = [
        *DICOMWEB_PLUGINS,
        *sorted(str(p) for p in Path("/usr/lib/orthanc").glob("libOrthancDicomWeb.so*")),
    ]
    plugin = next((p for p in plugins if Path(p).is_file()), None)
    if plugin is None:
        pytest.skip("the Orthanc DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")
    return binary, plugin


@dataclass
class Orthanc:
    """A running test server: REST API at ``url``, DICOMweb at ``dicomweb``."""

    url: str
    log: Path

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def rest(self, method: str, path: str, **kwargs: object) -> requests.Response:
        response = requests.request(method, f"{self.url}{path}", auth=(USER, PASSWORD), timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def upload(self, files: list[Path]) -> None:
        for f in files:
            status = self.rest("POST", "/instances", data=f.read_bytes()).json()["Status"]
            assert status == "Success", status

    def instance_count(self) -> int:
        return int(self.rest("GET", "/statistics").json()["CountInstances"])

    def study_instances(self, study_uid: str) -> list[pydicom.Dataset]:
        """Every instance Orthanc files under this StudyInstanceUID, read from the stored files."""
        found = self.rest("POST", "/tools/lookup", data=study_uid).json()
        studies = [f["ID"] for f in found if f["Type"] == "Study"]
        if not studies:
            return []
        instances = self.rest("GET", f"/studies/{studies[0]}/instances").json()
        return [
            pydicom.dcmread(io.BytesIO(self.rest("GET", f"/instances/{i['ID']}/file").content))
            for i in instances
        ]


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary, plugin = _find_orthanc()
    root = tmp_path_factory.mktemp("orthanc")
    http_port, dicom_port = _free_port(), _free_port()
    config = {
        "Name": "medunet-test",
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomServerEnabled": False,
        "RemoteAccessAllowed": False,  # local clients only
        "AuthenticationEnabled": True,
        "RegisteredUsers": {USER: PASSWORD},
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "HttpThreadsCount": 4,
        "ConcurrentJobs": 1,
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    log = root / "orthanc.log"
    with log.open("wb") as out:
        process = subprocess.Popen([binary, str(root / "config.json")], cwd=root, stdout=out, stderr=out)
    server = Orthanc(f"http://127.0.0.1:{http_port}", log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                pytest.fail(f"Orthanc exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                server.rest("GET", "/system")
                plugins = server.rest("GET", "/plugins").json()
                assert "dicom-web" in plugins, f"DICOMweb plugin not loaded: {plugins}"
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    pytest.fail(f"Orthanc did not answer /system in 60 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# ---------------------------------------------------------------------------------------------- model


class BandNet(torch.nn.Module):
    """Known answer: class k where the CT-windowed intensity is near k / 2 (the study has HU = 50 * label)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centers = torch.tensor([0.0, 0.5, 1.0]).view(1, -1, *([1] * (x.ndim - 2)))
        return -20.0 * (x - centers) ** 2


@pytest.fixture
def fake_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    ckpt = tmp_path / "model" / "best.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")

    def from_checkpoint(cls, path, **kw):  # noqa: ANN001
        kw.pop("engine", None), kw.pop("engine_model", None)  # known-answer net runs eagerly (tests/engines)
        paths = [Path(x) for x in ([path] if isinstance(path, str | Path) else path)]
        p = cls([BandNet() for _ in paths], PLANS, **kw)
        p.checkpoint, p.checkpoints, p.checkpoint_sha256 = paths[0], paths, "1" * 64
        return p

    monkeypatch.setattr(Predictor, "from_checkpoint", classmethod(from_checkpoint))
    return ckpt


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, PASSWORD)
    monkeypatch.delenv(ENV_TOKEN, raising=False)


@pytest.fixture
def private_tmp(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The temporary folder the pulled series go to (checked empty afterwards)."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@dataclass
class Study:
    uid: str
    series_uid: str
    sop_uids: set[str]
    folder: Path


def upload_study(
    orthanc: Orthanc, folder: Path, *, study_uid: str | None = None, description: str = "abdomen"
) -> Study:
    datasets = ct_series(reference_masks(), hu_per_label=50, series_description=description)
    if study_uid is not None:
        for ds in datasets:
            ds.StudyInstanceUID = study_uid
    files = save_series(datasets, folder)
    orthanc.upload(files)
    return Study(
        datasets[0].StudyInstanceUID,
        datasets[0].SeriesInstanceUID,
        {str(ds.SOPInstanceUID) for ds in datasets},
        folder,
    )


def predict_args(url: str, study: str, out: Path, ckpt: Path, *extra: str) -> list[str]:
    return [
        "predict",
        "--dicomweb",
        url,
        "--study",
        study,
        "--output",
        str(out),
        "--checkpoint",
        str(ckpt),
        "--device",
        "cpu",
        *extra,
    ]


def by_class(instances: list[pydicom.Dataset]) -> dict[str, list[pydicom.Dataset]]:
    out: dict[str, list[pydicom.Dataset]] = {}
    for ds in instances:
        out.setdefault(str(ds.SOPClassUID), []).append(ds)
    return out


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text
    assert base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in text


# ---------------------------------------------------------------------------------------------- no server


def test_url_with_credentials_is_refused_without_echoing_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        server_url("http://alice:s3cret-pw@pacs.example:8042/dicom-web")
    message = str(info.value)
    assert "s3cret-pw" not in message and "alice" not in message
    assert ENV_USER in message and ENV_PASSWORD in message
    assert "http://pacs.example:8042/dicom-web" in message
    rc = main(
        [
            "predict",
            "--dicomweb",
            "https://bob:s3cret-pw@pacs.example/dicom-web",
            "--study",
            "1.2.3",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and ENV_PASSWORD in err and "s3cret-pw" not in err
    assert not (tmp_path / "out").exists()


def test_credentials_come_from_environment_only() -> None:
    session, how = session_from_env({ENV_USER: "u", ENV_PASSWORD: "p"})
    assert session.auth == ("u", "p") and "Authorization" not in session.headers and "p" not in how.split()
    session, how = session_from_env({ENV_TOKEN: "tok-123"})
    assert (
        session.headers["Authorization"] == "Bearer tok-123" and session.auth is None and "tok-123" not in how
    )
    session, how = session_from_env({})
    assert session.auth is None and "Authorization" not in session.headers and how == "no credentials"
    with pytest.raises(ConfigError, match="together"):
        session_from_env({ENV_USER: "u"})
    with pytest.raises(ConfigError, match="not both"):
        session_from_env({ENV_USER: "u", ENV_PASSWORD: "p", ENV_TOKEN: "t"})


def test_push_and_study_need_dicomweb(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["predict", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--push", "seg"])
    assert rc == 1 and "--dicomweb" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "predict",
                "--dicomweb",
                "http://127.0.0.1:1/dicom-web",
                "--study",
                "1.2",
                "--output",
                "o",
                "--push",
                "nifti",
            ]
        )


def test_unreachable_server_is_a_clear_error_fast(
    fake_checkpoint: Path, credentials: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"http://127.0.0.1:{_free_port()}/dicom-web"  # nothing listens there
    start = time.monotonic()
    rc = main([*predict_args(url, "1.2.3.4", tmp_path / "out", fake_checkpoint), "--dicomweb-timeout", "2"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert rc == 1 and elapsed < 15
    assert "cannot reach the server (Connection refused)" in err and url in err
    assert_no_secret(err)
    assert not (tmp_path / "out").exists()


def test_server_that_never_answers_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as listener:  # accepts connections (kernel backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/dicom-web"
        server = DicomWebServer(url, timeout=1, environ={})
        start = time.monotonic()
        with pytest.raises(DicomWebConnectionError, match=r"no answer within 1 s \(timeout\)"):
            server.study_series("1.2.3.4")
        assert time.monotonic() - start < 10


def test_plain_http_credentials_to_another_host_warn(caplog: pytest.LogCaptureFixture) -> None:
    environ = {ENV_USER: USER, ENV_PASSWORD: PASSWORD}
    with caplog.at_level("WARNING", logger="medunet.io.dicomweb"):
        DicomWebServer("http://127.0.0.1:8042/dicom-web", environ=environ)
        assert not caplog.records
        DicomWebServer("https://pacs.example/dicom-web", environ=environ)
        assert not caplog.records
        DicomWebServer("http://pacs.example/dicom-web", environ=environ)
    assert "unencrypted" in caplog.text and "pacs.example" in caplog.text
    assert_no_secret(caplog.text)


# ---------------------------------------------------------------------------------------------- Orthanc


def test_round_trip_pushes_seg_and_rtstruct_into_the_study_idempotently(
    orthanc: Orthanc,
    fake_checkpoint: Path,
    credentials: None,
    private_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = upload_study(orthanc, tmp_path / "source")
    out = tmp_path / "out"
    args = ["-v", *predict_args(orthanc.dicomweb, study.uid, out, fake_checkpoint, "--push", "seg,rtstruct")]
    assert main(args) == 0
    logs = capsys.readouterr()
    assert_no_secret(logs.err + logs.out)
    assert not list(private_tmp.iterdir())  # pulled series removed

    stored = by_class(orthanc.study_instances(study.uid))
    assert {k: len(v) for k, v in stored.items()} == {
        "1.2.840.10008.5.1.4.1.1.2": 5,
        SEG_STORAGE: 1,
        RTSTRUCT_STORAGE: 1,
    }
    (seg,), (rt,) = stored[SEG_STORAGE], stored[RTSTRUCT_STORAGE]
    for ds in (seg, rt):
        assert ds.StudyInstanceUID == study.uid and ds.SeriesInstanceUID != study.series_uid
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == study.series_uid
    assert {r.ReferencedSOPInstanceUID for r in ref_series.ReferencedInstanceSequence} == study.sop_uids
    rt_series = (
        rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    )
    assert rt_series.SeriesInstanceUID == study.series_uid
    assert {r.ReferencedSOPInstanceUID for r in rt_series.ContourImageSequence} == study.sop_uids
    assert {r.ROIName for r in rt.StructureSetROISequence} == {"liver", "left_kidney"}
    assert seg.pixel_array.any()

    # The case folder is what a local DICOM folder gives, and it holds exactly what was pushed.
    (case,) = [p for p in out.iterdir()]
    assert pydicom.dcmread(case / "segmentation.dcm").SOPInstanceUID == seg.SOPInstanceUID
    assert pydicom.dcmread(case / "rtstruct.dcm").SOPInstanceUID == rt.SOPInstanceUID
    record = json.loads((case / "case.json").read_text())
    assert record["source"] == f"{orthanc.dicomweb}/studies/{study.uid}/series/{study.series_uid}"
    local = tmp_path / "local"
    assert (
        main(
            [
                "predict",
                "--input",
                str(study.folder),
                "--output",
                str(local),
                "--checkpoint",
                str(fake_checkpoint),
                "--device",
                "cpu",
                "--rtstruct",
            ]
        )
        == 0
    )
    (local_case,) = [p for p in local.iterdir()]
    assert local_case.name == case.name
    assert {p.name for p in local_case.iterdir()} == {p.name for p in case.iterdir()}
    a, b = nib.load(case / "segmentation.nii.gz"), nib.load(local_case / "segmentation.nii.gz")
    np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
    np.testing.assert_allclose(a.affine, b.affine)
    assert (case / "volumes.csv").read_text() == (local_case / "volumes.csv").read_text()
    np.testing.assert_array_equal(
        seg.pixel_array, pydicom.dcmread(local_case / "segmentation.dcm").pixel_array
    )

    # Same command again: same UIDs, found in the study, nothing stored, nothing duplicated.
    from dicomweb_client import DICOMwebClient

    calls: list[str] = []
    real_store = DICOMwebClient.store_instances

    def counting_store(self, datasets, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        calls.extend(str(ds.SOPInstanceUID) for ds in datasets)
        return real_store(self, datasets, *a, **kw)

    monkeypatch.setattr(DICOMwebClient, "store_instances", counting_store)
    count = orthanc.instance_count()
    assert main(args) == 0  # the study now also holds SEG and RTSTRUCT series: only the CT is picked
    err = capsys.readouterr().err
    assert calls == []
    assert "already in study" in err
    assert orthanc.instance_count() == count
    assert {k: len(v) for k, v in by_class(orthanc.study_instances(study.uid)).items()} == {
        "1.2.840.10008.5.1.4.1.1.2": 5,
        SEG_STORAGE: 1,
        RTSTRUCT_STORAGE: 1,
    }


def test_wrong_password_is_a_clear_error_and_pushes_nothing(
    orthanc: Orthanc,
    fake_checkpoint: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study = upload_study(orthanc, tmp_path / "source")
    wrong = "wrong-pw-d41d8cd9"
    monkeypatch.setenv(ENV_USER, USER)
    monkeypatch.setenv(ENV_PASSWORD, wrong)
    count = orthanc.instance_count()
    rc = main(
        ["-v", *predict_args(orthanc.dicomweb, study.uid, tmp_path / "out", fake_checkpoint, "--push", "seg")]
    )
    err = capsys.readouterr().err
    assert rc == 1
    assert "credentials rejected (HTTP 401" in err and ENV_PASSWORD in err
    assert wrong not in err and PASSWORD not in err
    assert orthanc.instance_count() == count
    assert not (tmp_path / "out").exists()


def test_unknown_study_is_a_clear_error(
    orthanc: Orthanc,
    fake_checkpoint: Path,
    credentials: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = generate_uid()
    rc = main(predict_args(orthanc.dicomweb, missing, tmp_path / "out", fake_checkpoint, "--push", "seg"))
    err = capsys.readouterr().err
    assert rc == 1 and f"study {missing} not found on the server" in err
    assert not (tmp_path / "out").exists()


def test_series_choice_in_a_study_with_two_image_series(
    orthanc: Orthanc, credentials: None, tmp_path: Path
) -> None:
    first = upload_study(orthanc, tmp_path / "a", description="arterial")
    second = upload_study(orthanc, tmp_path / "b", study_uid=first.uid, description="venous")
    server = DicomWebServer(orthanc.dicomweb, timeout=10)
    with pytest.raises(DicomWebError, match="holds 2 image series; pass --series UID or --series all"):
        server.image_series(first.uid)
    assert {s.uid for s in server.image_series(first.uid, "all")} == {first.series_uid, second.series_uid}
    (chosen,) = server.image_series(first.uid, second.series_uid)
    assert (chosen.uid, chosen.modality, chosen.description, chosen.instances) == (
        second.series_uid,
        "CT",
        "venous",
        5,
    )
    with pytest.raises(DicomWebError, match="not in study"):
        server.image_series(first.uid, generate_uid())


def test_push_failing_half_way_reports_and_a_retry_completes_without_duplicates(
    orthanc: Orthanc,
    fake_checkpoint: Path,
    credentials: None,
    private_tmp: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dicomweb_client import DICOMwebClient

    study = upload_study(orthanc, tmp_path / "source")
    out = tmp_path / "out"
    args = predict_args(orthanc.dicomweb, study.uid, out, fake_checkpoint, "--push", "seg,rtstruct")
    real_store = DICOMwebClient.store_instances
    calls: list[str] = []

    def store_then_drop(self, datasets, *a, **kw):  # noqa: ANN001, ANN002, ANN003
        calls.extend(str(ds.Modality) for ds in datasets)
        if len(calls) == 2:  # the RTSTRUCT, after the SEG went through
            raise requests.ConnectionError(
                "('Connection aborted.', ConnectionResetError(104, '[Errno 104] Connection reset by peer'))"
            )
        return real_store(self, datasets, *a, **kw)

    monkeypatch.setattr(DICOMwebClient, "store_instances", store_then_drop)
    assert main(args) == 1
    err = capsys.readouterr().err
    assert calls == ["SEG", "RTSTRUCT"]
    assert not list(private_tmp.iterdir())  # pulled series removed after the failed run too
    assert "push to study" in err and "Connection reset by peer" in err
    assert "In the study: segmentation.dcm; not stored: rtstruct.dcm" in err
    assert_no_secret(err)
    stored = by_class(orthanc.study_instances(study.uid))
    assert len(stored[SEG_STORAGE]) == 1 and RTSTRUCT_STORAGE not in stored
    # Nothing half-written locally: one complete case folder, no temporary leftovers.
    (case,) = list(out.iterdir())
    assert {"segmentation.dcm", "rtstruct.dcm", "case.json", "segmentation.nii.gz"} <= {
        p.name for p in case.iterdir()
    }

    calls.clear()
    monkeypatch.setattr(
        DICOMwebClient,
        "store_instances",
        lambda self, datasets, *a, **kw: (
            calls.extend(str(ds.Modality) for ds in datasets) or real_store(self, datasets, *a, **kw)
        ),
    )
    assert main(args) == 0
    assert calls == ["RTSTRUCT"]  # the SEG is found in the study and skipped
    stored = by_class(orthanc.study_instances(study.uid))
    assert len(stored[SEG_STORAGE]) == 1 and len(stored[RTSTRUCT_STORAGE]) == 1
    assert stored[SEG_STORAGE][0].SOPInstanceUID == pydicom.dcmread(case / "segmentation.dcm").SOPInstanceUID
