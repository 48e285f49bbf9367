"""Where a run is recorded and what may be recorded: tracking URI resolution and config flattening.

Nothing here talks to MLflow except :func:`check_tracking_backend`; everything else is plain data
handling so it can be tested without a server.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Literal

from medunet.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
DEFAULT_EXPERIMENT = "ct_organs"
DEFAULT_DB_NAME = "mlflow.db"
DEFAULT_ARTIFACT_DIR = "mlartifacts"

UriSource = Literal["bundle", "env", "default"]

# MLflow limits (mlflow.utils.validation): keep well inside them.
MAX_PARAM_VALUE = 6000
MAX_PARAM_KEY = 250
# Keys whose values are never recorded, whatever they hold.
_SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|credential)", re.IGNORECASE)
# A list of dicts holding any of these keys is a list of cases (file paths): counted, never flattened.
_CASE_KEYS = frozenset({"image", "label", "img", "seg", "mask", "images", "labels_file"})
_ABS_PATH_IN_TEXT = re.compile(r"(?:(?<=^)|(?<=[\s'\"(=,\[]))(?:/|~/|[A-Za-z]:\\)[^\s'\"(),\[\]]+")


@dataclass(frozen=True)
class TrackingTarget:
    """A resolved MLflow destination.

    ``artifact_location`` is set only for the embedded default (artifacts next to the sqlite file);
    servers decide their own artifact store (``--artifacts-destination``).
    """

    uri: str
    source: UriSource
    artifact_location: str | None = None

    @property
    def is_remote(self) -> bool:
        return urllib.parse.urlparse(self.uri).scheme in ("http", "https")

    @property
    def display_uri(self) -> str:
        """The URI without credentials, safe for logs, messages and tags."""
        return redact_uri(self.uri)


def resolve_tracking_uri(
    tracking_uri: str | None,
    output_dir: str | Path,
    env: Mapping[str, str] | None = None,
) -> TrackingTarget:
    """Pick the tracking URI: bundle ``tracking_uri`` > env ``MLFLOW_TRACKING_URI`` > local default.

    The default is ``sqlite:///<output_dir>/mlflow.db`` with artifacts in ``<output_dir>/mlartifacts``:
    a complete store (runs, artifacts, model registry) that needs no server and no network.
    ``env`` defaults to ``os.environ`` (read at call time, never at import).
    """
    env = os.environ if env is None else env
    explicit = (tracking_uri or "").strip()
    if explicit:
        return TrackingTarget(explicit, "bundle")
    from_env = (env.get(ENV_TRACKING_URI) or "").strip()
    if from_env:
        return TrackingTarget(from_env, "env")
    out = Path(output_dir).expanduser().resolve()
    return TrackingTarget(
        uri=f"sqlite:///{(out / DEFAULT_DB_NAME).as_posix()}",
        source="default",
        artifact_location=(out / DEFAULT_ARTIFACT_DIR).as_uri(),
    )


def redact_uri(uri: str) -> str:
    """``http://user:pw@host:5000`` -> ``http://***@host:5000``; other URIs unchanged."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.username or parsed.password:
        host = parsed.hostname or ""
        netloc = f"***@{host}" + (f":{parsed.port}" if parsed.port else "")
        return urllib.parse.urlunparse(parsed._replace(netloc=netloc))
    return uri


def check_tracking_backend(target: TrackingTarget, timeout_s: float = 5.0) -> None:
    """Fail early with :class:`ConfigError` when the tracking backend cannot be used.

    For a server: ``GET /health`` within ``timeout_s``, then one authenticated API call (so a wrong
    password is reported now, not after the first epoch). For a database: create its folder and open it.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    where = f"MLflow tracking URI {target.display_uri!r} (from {target.source})"
    if target.is_remote:
        health = target.uri.rstrip("/") + "/health"
        parsed = urllib.parse.urlparse(health)
        if parsed.username or parsed.password:  # credentials belong in headers, not in the health URL
            health = urllib.parse.urlunparse(
                parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else ""))
            )
        try:
            with urllib.request.urlopen(health, timeout=timeout_s) as resp:  # noqa: S310 (http(s) only)
                resp.read(64)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ConfigError(
                None,
                f"{where} is not reachable ({getattr(exc, 'reason', exc)}). Start the server "
                "(docker compose up mlflow, see docker/README.md), fix tracking_uri, or unset it and "
                f"{ENV_TRACKING_URI} to record into <output_dir>/mlflow.db.",
            ) from None
    elif target.uri.startswith("sqlite:///"):
        db = Path(target.uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(db, f"cannot create the MLflow database folder ({exc.strerror})") from None
    try:
        MlflowClient(tracking_uri=target.uri, registry_uri=target.uri).search_experiments(max_results=1)
    except MlflowException as exc:
        code = getattr(exc, "error_code", "")
        hint = (
            " Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for a server with basic auth."
            if code in ("UNAUTHENTICATED", "PERMISSION_DENIED")
            else ""
        )
        raise ConfigError(None, f"{where} refused the connection check: {exc.message}.{hint}") from None
    except Exception as exc:  # sqlalchemy / requests errors come in many types
        raise ConfigError(None, f"{where} cannot be used: {type(exc).__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Flattening a configuration into MLflow params
# --------------------------------------------------------------------------------------------------


def looks_like_path(value: str) -> bool:
    """Whether a string is a file-system path (absolute, home- or dot-relative, or with separators)."""
    if not value or "://" in value or any(c.isspace() or c in "'\"()$=,;" for c in value):
        return False
    if value.startswith(("/", "~", "./", "../", ".\\", "..\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    return "/" in value or "\\" in value


def strip_path(value: str) -> str:
    """The last component of a path (``/data/Task09_Spleen/`` -> ``Task09_Spleen``)."""
    pure = PureWindowsPath(value) if "\\" in value else PurePosixPath(value)
    return pure.name or value.strip("/\\")


def scrub_text(text: str) -> str:
    """Replace absolute paths inside free text (e.g. a ``$`` expression) by their last component."""
    return _ABS_PATH_IN_TEXT.sub(lambda m: strip_path(m.group(0)), text)


def scrub(obj: Any) -> Any:
    """A JSON-able copy of ``obj`` with paths reduced to names, secrets and case lists removed."""
    if isinstance(obj, Mapping):
        return {
            str(k): scrub(v)
            for k, v in obj.items()
            if not _SECRET_KEY.search(str(k)) and not _is_case_list(v)
        }
    if isinstance(obj, list | tuple):
        return [scrub(v) for v in obj]
    if isinstance(obj, Path):
        return obj.name
    if isinstance(obj, str):
        if "://" in obj:
            return redact_uri(obj)
        return strip_path(obj) if looks_like_path(obj) else scrub_text(obj)
    return obj


def flatten_config(
    config: Mapping[str, Any], *, prefix: str = "", sep: str = ".", max_list: int = 32
) -> dict[str, str]:
    """Flatten a (resolved) configuration into ``{"a.b.c": "value"}`` strings for MLflow params.

    * nested mappings become dotted keys; lists of scalars become one JSON value (``"[96, 96, 96]"``);
      lists of mappings are indexed (``transforms.3._target_``) up to ``max_list`` items;
    * paths are reduced to their last component (a dataset folder to the dataset name), URIs lose
      their credentials, secrets (``password``, ``token``...) are dropped;
    * lists of cases (dicts with ``image``/``label``) are never expanded: only ``<key>.num_items``;
    * unresolved bundle references and expressions (``@x``, ``$...``, ``%...``) are skipped;
    * objects are described, not dumped: a module or optimizer by its class, a dataclass by its fields.
    """
    out: dict[str, str] = {}
    _flatten(config, prefix, sep, max_list, out)
    return {k[:MAX_PARAM_KEY]: _truncate(v) for k, v in out.items()}


def _flatten(value: Any, key: str, sep: str, max_list: int, out: dict[str, str]) -> None:
    if key and _SECRET_KEY.search(key.rsplit(sep, 1)[-1]):
        return
    value = _describe(value)
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(v, f"{key}{sep}{k}" if key else str(k), sep, max_list, out)
        return
    if isinstance(value, list | tuple):
        if _is_case_list(value):
            out[f"{key}{sep}num_items"] = str(len(value))
        elif all(_is_scalar(v) for v in value):
            scalars = [_scalar(v) for v in value[:max_list]]
            if len(value) > max_list:
                out[f"{key}{sep}num_items"] = str(len(value))
            out[key] = json.dumps(scalars)
        else:
            for i, v in enumerate(value[:max_list]):
                _flatten(v, f"{key}{sep}{i}", sep, max_list, out)
            if len(value) > max_list:
                out[f"{key}{sep}num_items"] = str(len(value))
        return
    if isinstance(value, str) and value[:1] in ("@", "$", "%"):
        return  # unresolved bundle syntax: not a value
    if key:
        out[key] = str(_scalar(value))


def _describe(value: Any) -> Any:
    """Turn objects into mappings or scalars that describe them without their data."""
    if isinstance(value, Mapping | list | tuple | str | int | float | bool) or value is None:
        return value
    if isinstance(value, Path):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        return to_dict() if callable(to_dict) else dataclasses.asdict(value)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        torch = None  # type: ignore[assignment]
    if torch is not None:
        if isinstance(value, torch.optim.Optimizer):
            return {
                "name": type(value).__name__,
                **{k: v for k, v in value.defaults.items() if _is_scalar(v) or isinstance(v, tuple)},
            }
        if isinstance(value, torch.nn.Module):
            return type(value).__name__
        if isinstance(value, torch.device | torch.dtype):
            return str(value)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.item()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "size", None) == 1:  # numpy scalar
        return item()
    return type(value).__name__


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool | Path)


def _scalar(value: Any) -> Any:
    if isinstance(value, Path):
        return value.name
    if isinstance(value, str):
        if "://" in value:
            return redact_uri(value)
        return strip_path(value) if looks_like_path(value) else scrub_text(value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def _is_case_list(value: Any) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
        and any(_CASE_KEYS & set(map(str, v.keys())) for v in value)
    )


def _truncate(value: str) -> str:
    return value if len(value) <= MAX_PARAM_VALUE else value[: MAX_PARAM_VALUE - 3] + "..."


# --------------------------------------------------------------------------------------------------
# Metric names and environment tags
# --------------------------------------------------------------------------------------------------


def sanitize_metric_name(name: str) -> str:
    """An organ name as a metric-name fragment: lower case, ``[a-z0-9_]`` only (``"Spinal Cord"`` ->
    ``spinal_cord``, ``"Lung (L)"`` -> ``lung_l``)."""
    cleaned = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
    return cleaned or "unnamed"


def organ_keys(organs: Sequence[str]) -> dict[str, str]:
    """Map each organ name to a unique sanitized key (collisions get ``_2``, ``_3``...)."""
    keys: dict[str, str] = {}
    used: set[str] = set()
    for organ in organs:
        base = sanitize_metric_name(organ)
        key, n = base, 2
        while key in used:
            key, n = f"{base}_{n}", n + 1
        used.add(key)
        keys[organ] = key
    return keys


def git_commit(cwd: str | Path | None = None, timeout_s: float = 3.0) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout holding ``cwd`` (default: the medunet package), or ``None``s."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return (head or None), bool(status.strip())


def environment_tags(device: str | None = None, git_cwd: str | Path | None = None) -> dict[str, str]:
    """Tags that say what produced a run: code version, library versions, device."""
    import mlflow
    import monai
    import torch

    import medunet

    tags = {
        "medunet.version": medunet.__version__,
        "medunet.torch_version": torch.__version__,
        "medunet.monai_version": monai.__version__,
        "medunet.mlflow_version": mlflow.__version__,
    }
    commit, dirty = git_commit(git_cwd)
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["medunet.git_commit"] = commit
        tags["medunet.git_dirty"] = str(dirty).lower()
    if device:
        tags["medunet.device"] = device
        if device.startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            tags["medunet.gpu"] = torch.cuda.get_device_name(index)
    return tags


def read_bundle_metadata(metadata: str | Path | Mapping[str, Any] | None) -> dict[str, str]:
    """``{"name", "version"}`` from a bundle ``metadata.json`` (path or dict); empty when absent."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        path = Path(metadata)
        if not path.is_file():
            logger.debug("no bundle metadata at %s", path)
            return {}
        try:
            metadata = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("cannot read bundle metadata %s: %s", path, exc)
            return {}
    assert isinstance(metadata, Mapping)
    out = {}
    for key in ("name", "version"):
        if metadata.get(key) is not None:
            out[key] = str(metadata[key])
    return out
