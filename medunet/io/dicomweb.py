"""A DICOMweb server (PACS) as medunet uses it: find a study's image series, pull them, push results back.

Built on ``dicomweb-client``: QIDO-RS finds the CT/MR image series of a study, WADO-RS retrieves a series'
instances as the server stores them (any transfer syntax) into a local folder, and STOW-RS stores derived
objects (SEG, RTSTRUCT) in the same study. A push is idempotent by SOP Instance UID: before each object is
stored, QIDO-RS asks whether the study already holds an instance with that UID, and an object already
there is skipped -- so re-running a command after a failure stores what is missing and duplicates nothing
(given the same UIDs, which ``medunet predict --dicomweb`` derives from the source series and the model).

Credentials come only from the environment: ``MEDUNET_DICOMWEB_USER`` and ``MEDUNET_DICOMWEB_PASSWORD``
(HTTP basic auth) or ``MEDUNET_DICOMWEB_TOKEN`` (``Authorization: Bearer``). A URL with ``user:password@``
is refused, and the URL is only ever logged or shown without user information or query. Every failure is
a typed :class:`~medunet.errors.DicomWebError` that names the server and the step, never a credential.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from medunet.errors import (
    ConfigError,
    DicomWebAuthError,
    DicomWebConnectionError,
    DicomWebError,
    DicomWebNotFoundError,
    DicomWebPushError,
)

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

ENV_USER = "MEDUNET_DICOMWEB_USER"
ENV_PASSWORD = "MEDUNET_DICOMWEB_PASSWORD"
ENV_TOKEN = "MEDUNET_DICOMWEB_TOKEN"
#: Modalities of the image series medunet segments; SEG, RTSTRUCT, SR... in the same study are ignored.
IMAGE_MODALITIES = ("CT", "MR")

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
# DICOM JSON tags of the QIDO-RS attributes read here.
_SERIES_UID, _SOP_UID, _MODALITY = "0020000E", "00080018", "00080060"
_SERIES_DESCRIPTION, _N_INSTANCES = "0008103E", "00201209"


def check_uid(uid: str, what: str) -> str:
    """``uid`` if it is a valid DICOM UID (digits and dots, at most 64 characters), else ConfigError."""
    uid = uid.strip()
    if len(uid) > 64 or not _UID.match(uid):
        raise ConfigError(None, f"{what} {uid!r} is not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def server_url(url: str) -> str:
    """The DICOMweb base URL, checked: http(s), a host, no credentials, no query; no trailing slash.

    A URL with ``user:password@`` is refused (credentials go in environment variables, never on a command
    line); the error shows the URL without them.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(None, f"DICOMweb URL is malformed ({exc})") from None
    host = parts.hostname or ""
    shown = f"{parts.scheme}://{host}{f':{port}' if port else ''}{parts.path}".rstrip("/")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            shown,
            "DICOMweb URL holds user information; credentials must not be on the command line: set "
            f"{ENV_USER} and {ENV_PASSWORD} (or {ENV_TOKEN}) in the environment and pass the URL without them",
        )
    if parts.scheme not in ("http", "https") or not host:
        raise ConfigError(shown or None, "DICOMweb URL must be http:// or https:// with a host")
    if parts.query or parts.fragment:
        raise ConfigError(shown, "DICOMweb URL must not have a query or fragment (it is the service root)")
    return shown


def session_from_env(environ: Mapping[str, str] | None = None) -> tuple[requests.Session, str]:
    """A ``requests.Session`` carrying the credentials from the environment, and how it authenticates.

    ``MEDUNET_DICOMWEB_USER`` + ``MEDUNET_DICOMWEB_PASSWORD``: HTTP basic auth; ``MEDUNET_DICOMWEB_TOKEN``:
    bearer token; neither: no credentials. Both kinds at once, or a user without a password, is an error.
    The description names the variables, never their values.
    """
    import requests

    env = os.environ if environ is None else environ
    user, password, token = (env.get(k) or "" for k in (ENV_USER, ENV_PASSWORD, ENV_TOKEN))
    if token and (user or password):
        raise ConfigError(None, f"set either {ENV_TOKEN} or {ENV_USER}/{ENV_PASSWORD}, not both")
    if bool(user) != bool(password):
        raise ConfigError(None, f"{ENV_USER} and {ENV_PASSWORD} must be set together")
    session = requests.Session()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
        return session, f"bearer token from {ENV_TOKEN}"
    if user:
        session.auth = (user, password)
        return session, f"basic auth from {ENV_USER}/{ENV_PASSWORD}"
    return session, "no credentials"


@dataclass(frozen=True)
class RemoteSeries:
    """One series of a study on the server, as QIDO-RS describes it."""

    uid: str
    modality: str
    description: str
    instances: int | None


@dataclass
class PushResult:
    """File names of the objects stored by a push, and of those the study already held."""

    stored: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)


def _value(entry: Mapping[str, object], tag: str) -> object:
    item = entry.get(tag)
    values = item.get("Value") if isinstance(item, Mapping) else None
    return values[0] if isinstance(values, list) and values else None


def _listing(series: Sequence[RemoteSeries]) -> str:
    return "; ".join(
        f"{s.uid} ({s.modality or '?'}, {s.description or 'no description'}, "
        f"{'?' if s.instances is None else s.instances} instances)"
        for s in series
    )


def _connection_reason(exc: BaseException) -> str:
    """``Connection refused``, ``Name or service not known``...: the OS reason inside a requests error."""
    match = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", str(exc))
    return match.group(1).strip() if match else type(exc).__name__


class DicomWebServer:
    """One DICOMweb service root (e.g. Orthanc's ``http://host:8042/dicom-web``).

    ``url`` is the checked URL without credentials (safe to log); ``timeout`` (seconds) bounds connecting
    and every wait for data. Requests answered 429/408/503/504 are retried twice with back-off.
    """

    def __init__(self, url: str, *, timeout: float = 60.0, environ: Mapping[str, str] | None = None) -> None:
        try:
            from dicomweb_client import DICOMwebClient
        except ModuleNotFoundError:
            raise ConfigError(
                None, "--dicomweb needs the dicomweb-client package: pip install 'medunet[dicom]'"
            ) from None

        self.url = server_url(url)
        self.timeout = float(timeout)
        session, self.auth = session_from_env(environ)
        if self.auth != "no credentials" and self.url.startswith("http://"):
            host = urlsplit(self.url).hostname
            if host not in ("localhost", "127.0.0.1", "::1"):
                logger.warning("DICOMweb credentials go to %s unencrypted (http, not https)", host)
        self._client = DICOMwebClient(self.url, session=session, timeout=self.timeout)
        self._client.set_http_retry_params(retry=True, max_attempts=3, wait_exponential_multiplier=500)

    def series_uri(self, study: str, series: str) -> str:
        """Where a series lives on this server (no credentials)."""
        return f"{self.url}/studies/{study}/series/{series}"

    @contextlib.contextmanager
    def _errors(self, step: str, not_found: str | None = None) -> Iterator[None]:
        """Turn requests / dicomweb-client failures into typed errors naming the step (never credentials)."""
        import requests

        try:
            yield
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 0
            if status == 401:
                raise DicomWebAuthError(
                    self.url,
                    f"{step}: credentials rejected (HTTP 401, {self.auth}); set {ENV_USER} and "
                    f"{ENV_PASSWORD}, or {ENV_TOKEN}, to an account of this server",
                ) from None
            if status == 403:
                raise DicomWebAuthError(
                    self.url, f"{step}: forbidden (HTTP 403) for these credentials ({self.auth})"
                ) from None
            if status == 404:
                raise DicomWebNotFoundError(
                    self.url, f"{step}: {not_found or 'not found'} (HTTP 404)"
                ) from None
            reason = exc.response.reason if exc.response is not None else ""
            raise DicomWebError(
                self.url, f"{step}: server answered HTTP {status} {reason}".rstrip()
            ) from None
        except requests.Timeout:
            raise DicomWebConnectionError(
                self.url, f"{step}: no answer within {self.timeout:g} s (timeout)"
            ) from None
        except requests.ConnectionError as exc:
            raise DicomWebConnectionError(
                self.url, f"{step}: cannot reach the server ({_connection_reason(exc)})"
            ) from None
        except requests.RequestException as exc:
            raise DicomWebError(self.url, f"{step}: request failed ({type(exc).__name__})") from None
        except ValueError as exc:  # dicomweb-client: malformed response or multipart message
            raise DicomWebError(self.url, f"{step}: unexpected response ({exc})") from None

    # ------------------------------------------------------------------ QIDO-RS
    def study_series(self, study: str) -> list[RemoteSeries]:
        """Every series of ``study`` (DicomWebNotFoundError when the server has no such study)."""
        study = check_uid(study, "study")
        missing = f"study {study} not found on the server"
        with self._errors(f"searching the series of study {study}", not_found=missing):
            found = self._client.search_for_series(
                study,
                fields=["Modality", "SeriesDescription", "NumberOfSeriesRelatedInstances"],
                get_remaining=True,
            )
        series = []
        for entry in found:
            uid = _value(entry, _SERIES_UID)
            if not uid:
                continue
            n = _value(entry, _N_INSTANCES)
            series.append(
                RemoteSeries(
                    uid=str(uid),
                    modality=str(_value(entry, _MODALITY) or "").upper(),
                    description=str(_value(entry, _SERIES_DESCRIPTION) or ""),
                    instances=int(n) if isinstance(n, int | str) and str(n).isdigit() else None,
                )
            )
        if not series:
            raise DicomWebNotFoundError(self.url, missing)
        return series

    def image_series(self, study: str, series: str | None = None) -> list[RemoteSeries]:
        """The CT/MR image series to segment: the only one, ``series`` (a UID) or every one (``"all"``)."""
        found = self.study_series(study)
        images = [s for s in found if s.modality in IMAGE_MODALITIES]
        if series and series != "all":
            series = check_uid(series, "series")
            chosen = [s for s in images if s.uid == series]
            if chosen:
                return chosen
            other = [s for s in found if s.uid == series]
            if other:
                raise DicomWebNotFoundError(
                    self.url, f"series {series} of study {study} is {other[0].modality}, not a CT or MR image"
                )
            raise DicomWebNotFoundError(
                self.url,
                f"series {series} not in study {study}; image series there: {_listing(images) or 'none'}",
            )
        if not images:
            kinds = ", ".join(sorted({s.modality or "?" for s in found}))
            raise DicomWebNotFoundError(
                self.url, f"study {study} has no CT or MR image series (only {kinds})"
            )
        if len(images) > 1 and series != "all":
            raise DicomWebError(
                self.url,
                f"study {study} holds {len(images)} image series; pass --series UID or --series all: "
                f"{_listing(images)}",
            )
        return images

    def instance_present(self, study: str, sop_instance_uid: str) -> bool:
        """Whether ``study`` already holds an instance with this SOP Instance UID."""
        try:
            with self._errors(f"looking for instance {sop_instance_uid} in study {study}"):
                found = self._client.search_for_instances(
                    study, search_filters={"SOPInstanceUID": sop_instance_uid}, fields=["SOPInstanceUID"]
                )
        except DicomWebNotFoundError:
            return False
        # Compare the values: a server that ignores the filter must not make every object look present.
        return any(_value(e, _SOP_UID) == sop_instance_uid for e in found)

    # ------------------------------------------------------------------ WADO-RS
    def pull_series(self, study: str, series: str, folder: str | Path) -> list[Path]:
        """Retrieve every instance of a series into ``folder``, as stored (original transfer syntax)."""
        import pydicom

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        step = f"retrieving series {series} of study {study}"
        with self._errors(step, not_found=f"series {series} of study {study} not found"):
            instances = self._client.iter_series(study, series, media_types=(("application/dicom", "*"),))
            for ds in instances:
                path = folder / f"{len(paths):05d}.dcm"
                pydicom.dcmwrite(path, ds, enforce_file_format=False)  # as received: Part 10 file
                paths.append(path)
        if not paths:
            raise DicomWebNotFoundError(self.url, f"{step}: the server returned no instances")
        logger.info("retrieved %d instance(s) of series %s", len(paths), series)
        return paths

    # ------------------------------------------------------------------ STOW-RS
    def push(self, study: str, files: Sequence[str | Path]) -> PushResult:
        """Store DICOM files in ``study``, in order, skipping any whose SOP Instance UID the study holds.

        A failure raises :class:`DicomWebPushError` naming what is stored and what is not; running the
        same push again stores only the rest.
        """
        import pydicom

        study = check_uid(study, "study")
        result = PushResult()
        paths = [Path(f) for f in files]
        for i, path in enumerate(paths):
            try:
                ds = pydicom.dcmread(path)
                if str(ds.get("StudyInstanceUID", "")) != study:
                    raise DicomWebError(self.url, f"{path.name} belongs to another study; not pushed")
                uid = str(ds.SOPInstanceUID)
                if self.instance_present(study, uid):
                    logger.info("%s (%s) is already in study %s; not pushed again", path.name, uid, study)
                    result.already_present.append(path.name)
                    continue
                with self._errors(f"storing {path.name} in study {study}"):
                    response = self._client.store_instances([ds], study_instance_uid=study)
                failed = response.get("FailedSOPSequence") if response is not None else None
                if failed:
                    code = failed[0].get("FailureReason", "?")
                    raise DicomWebError(self.url, f"the server refused {path.name} (failure reason {code})")
                result.stored.append(path.name)
                logger.info("stored %s (%s) in study %s", path.name, uid, study)
            except DicomWebError as exc:
                missing = [p.name for p in paths[i:]]
                done = result.stored + result.already_present
                raise DicomWebPushError(
                    self.url,
                    f"push to study {study} stopped: {exc.problem}. In the study: "
                    f"{', '.join(done) or 'none of them'}; not stored: {', '.join(missing)}. Run the same "
                    "command again to store the rest (objects already in the study are skipped)",
                    stored=done,
                    missing=missing,
                ) from None
        return result


__all__ = [
    "ENV_PASSWORD",
    "ENV_TOKEN",
    "ENV_USER",
    "IMAGE_MODALITIES",
    "DicomWebServer",
    "PushResult",
    "RemoteSeries",
    "check_uid",
    "server_url",
    "session_from_env",
]
