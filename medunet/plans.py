"""``Plans``: the single source of a model's configuration (the nnU-Net habit).

Training derives it from the dataset fingerprint plus user overrides, writes it as ``plans.json`` next
to the checkpoints and embeds it in every checkpoint; inference, evaluation and export read it back, so
preprocessing at inference is exactly what training used.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from medunet.errors import ConfigError
from medunet.io.atomic import atomic_write_text

IntensityKind = Literal["ct_window", "zscore_nonzero"]

#: Label-map clean-up steps a plan may select per organ (see ``medunet.inference.postprocess``).
POSTPROCESSING_STEPS = ("largest_component", "fill_holes")


#: CT voxels above this many HU are the body (air is about -1000 HU). Training, validation and
#: inference all crop a CT to the bounding box of these voxels, so the network sees the same field of
#: view in all three; a crop at the window's lower bound instead cut everything below it (fat, or the
#: whole body when the window starts above soft tissue) out of training only.
BODY_HU = -500.0


@dataclass(frozen=True)
class Intensity:
    """Intensity normalisation. CT: clip to ``[a_min, a_max]`` HU and scale to ``[0, 1]``.
    MR: z-score over non-zero voxels of each image (``a_min``/``a_max`` unused)."""

    kind: IntensityKind = "ct_window"
    a_min: float = -175.0
    a_max: float = 250.0

    def __post_init__(self) -> None:
        if self.kind not in ("ct_window", "zscore_nonzero"):
            raise ConfigError(None, f"unknown intensity kind {self.kind!r}")
        if self.kind == "ct_window" and not self.a_max > self.a_min:
            raise ConfigError(None, f"CT window needs a_max > a_min, got [{self.a_min}, {self.a_max}]")


@dataclass(frozen=True)
class Plans:
    """Everything needed to rebuild a model and preprocess a volume for it.

    ``target_spacing`` is in mm along R, A, S (images are reoriented to RAS first). ``patch_size`` has
    ``spatial_dims`` entries (2D patches are axial slices: the R and A axes).

    ``context_slices`` (2D only) gives the network that many neighbouring axial slices on each side of
    the slice it segments, stacked as extra input channels ("2.5D"): the network sees where along
    the body axis it is, which a single slice cannot tell (where the brainstem ends and the cord
    begins). The network then takes :attr:`network_in_channels` channels.

    ``mirror_axes`` are the RAS axes the network was trained to see mirrored (axis 0 = left/right,
    always with the left/right label pairs swapped); test-time augmentation mirrors only these.
    ``postprocessing`` maps an organ name to the clean-up steps validation showed to help it
    (``"largest_component"``, ``"fill_holes"``); inference applies them by default. ``rationale``
    says, per decision, why it was taken (so a reader of plans.json knows what came from where).
    """

    labels: dict[int, str]
    target_spacing: tuple[float, float, float]
    patch_size: tuple[int, ...]
    spatial_dims: int = 3
    modality: str = "CT"
    in_channels: int = 1
    intensity: Intensity = field(default_factory=Intensity)
    network: str = "unet"
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    mirror_axes: tuple[int, ...] = ()
    context_slices: int = 0
    postprocessing: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rationale: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spatial_dims not in (2, 3):
            raise ConfigError(None, f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if len(self.patch_size) != self.spatial_dims:
            raise ConfigError(None, f"patch_size {self.patch_size} does not have {self.spatial_dims} entries")
        if len(self.target_spacing) != 3 or min(self.target_spacing) <= 0:
            raise ConfigError(None, f"target_spacing must be 3 positive mm values, got {self.target_spacing}")
        if 0 not in self.labels:
            raise ConfigError(None, "labels must include 0 (background)")
        if any(a not in range(self.spatial_dims) for a in self.mirror_axes):
            raise ConfigError(
                None, f"mirror_axes {self.mirror_axes} must be spatial axes < {self.spatial_dims}"
            )
        if self.context_slices < 0 or (self.context_slices and self.spatial_dims != 2):
            raise ConfigError(
                None, f"context_slices must be >= 0 and needs a 2D network, got {self.context_slices}"
            )
        unknown = set(self.postprocessing) - set(self.organ_names)
        if unknown:
            raise ConfigError(None, f"postprocessing names unknown organs: {sorted(unknown)}")
        bad = {s for steps in self.postprocessing.values() for s in steps} - set(POSTPROCESSING_STEPS)
        if bad:
            raise ConfigError(
                None, f"unknown postprocessing steps {sorted(bad)}; valid: {POSTPROCESSING_STEPS}"
            )

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def slice_stack(self) -> int:
        """Axial slices one 2D network input covers (1 without context; 1 for 3D networks)."""
        return 2 * self.context_slices + 1

    @property
    def network_in_channels(self) -> int:
        """Input channels of the network: image channels times the slices of a 2.5D stack."""
        return self.in_channels * self.slice_stack

    @property
    def deep_supervision(self) -> bool:
        """Whether the network returns stacked deep-supervision heads while training (``resunet``)."""
        return bool(self.network_kwargs.get("deep_supervision", False))

    @property
    def organ_names(self) -> list[str]:
        return [self.labels[k] for k in sorted(self.labels) if k != 0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = {str(k): v for k, v in self.labels.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plans:
        try:
            return cls(
                labels={int(k): str(v) for k, v in d["labels"].items()},
                target_spacing=tuple(float(s) for s in d["target_spacing"]),  # type: ignore[arg-type]
                patch_size=tuple(int(p) for p in d["patch_size"]),
                spatial_dims=int(d.get("spatial_dims", 3)),
                modality=str(d.get("modality", "CT")),
                in_channels=int(d.get("in_channels", 1)),
                intensity=Intensity(**d.get("intensity", {})),
                network=str(d.get("network", "unet")),
                network_kwargs=dict(d.get("network_kwargs", {})),
                mirror_axes=tuple(int(a) for a in d.get("mirror_axes", ())),
                context_slices=int(d.get("context_slices", 0)),
                postprocessing={
                    str(k): tuple(str(x) for x in v) for k, v in d.get("postprocessing", {}).items()
                },
                rationale={str(k): str(v) for k, v in d.get("rationale", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(None, f"invalid plans: {exc}") from None

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Plans:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(path, f"cannot read plans: {exc}") from None
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise ConfigError(path, exc.problem) from None
