"""Typed errors. Every error that reaches a user names the file (or case) and the problem.

Library code raises these instead of letting a traceback from nibabel, pydicom or torch escape, so a
batch can report all failures at the end and a user knows which file to fix.
"""

from __future__ import annotations

from pathlib import Path


class MedunetError(Exception):
    """Base class: ``MedunetError(path, problem)`` renders as ``"<path>: <problem>"``."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class InvalidImageError(MedunetError):
    """A file is unreadable, truncated, has the wrong format, dimensionality or non-finite values."""


class GeometryError(MedunetError):
    """Geometry is unusable: non-orthonormal direction, sheared or tilted grid, absurd spacing."""


class GeometryMismatchError(MedunetError):
    """Two images that must share a grid (image and label, mask and source) do not."""


class LabelError(MedunetError):
    """A label map holds values that the dataset does not declare, or is not integer."""


class DatasetError(MedunetError):
    """A dataset layout is missing files or is malformed (dataset.json, CSV, folder pairs)."""


class DicomError(MedunetError):
    """A DICOM file or series cannot be read as a volume."""


class DicomHeaderError(DicomError):
    """A source series' header cannot give a valid derived object (SEG, RTSTRUCT) and cannot be repaired.

    Names the series (SeriesInstanceUID, or the folder when that is missing) and the DICOM attribute;
    never the attribute's value, which may identify the patient.
    """

    def __init__(self, path: str | Path | None, series: str, attribute: str, problem: str) -> None:
        self.series = series
        self.attribute = attribute
        super().__init__(path, f"series {series}: {attribute} {problem}")


class UnsupportedSeriesError(DicomError):
    """A DICOM series of a kind medunet refuses rather than misreads (tilt, mosaic, 4D, gaps...)."""


class MissingDecoderError(DicomError):
    """Pixel data uses a transfer syntax whose decoder plugin is not installed."""


class CheckpointError(MedunetError):
    """A checkpoint is missing, damaged or does not match the model."""


class ConfigError(MedunetError):
    """A configuration value is invalid (unknown network, bad override)."""


class DicomWebError(DicomError):
    """A request to a DICOMweb server (PACS) failed. Names the server by its URL without credentials."""


class DicomWebConnectionError(DicomWebError):
    """The server cannot be reached: refused, unknown host, TLS failure or timeout."""


class DicomWebAuthError(DicomWebError):
    """The server rejected the credentials (HTTP 401) or forbids the request with them (HTTP 403)."""


class DicomWebNotFoundError(DicomWebError):
    """The study, or the requested series in it, is not on the server."""


class DicomWebPushError(DicomWebError):
    """Storing (STOW-RS) derived objects failed part-way; says which were stored and which were not."""

    def __init__(self, path: str | Path | None, problem: str, stored: list[str], missing: list[str]) -> None:
        self.stored = stored
        self.missing = missing
        super().__init__(path, problem)


class EngineError(MedunetError):
    """An inference engine or an exported engine artefact cannot be used (``medunet export``/``predict``)."""


class EngineUnavailableError(EngineError):
    """The engine's runtime is not installed, or needs hardware this machine lacks (TensorRT: CUDA)."""


class EngineMismatchError(EngineError):
    """An engine artefact does not match what it claims or what it is used with: its plans were edited
    (hash mismatch), its model file changed, or the checkpoint/plans passed with it differ."""
