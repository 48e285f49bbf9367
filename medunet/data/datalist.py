"""The one datalist form every dataset layout is read into."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(frozen=True)
class Case:
    """One case: image channel files (one per modality channel) and an optional label file.

    ``annotated`` lists the label values (organs) that were contoured for this case; ``None`` means
    all of them. Voxels of an organ that is not listed read 0 in the label file but are *unknown*,
    not background (partially contoured clinical data): training must not punish predicting it and
    metrics must not score it.
    """

    case_id: str
    images: tuple[Path, ...]
    label: Path | None = None
    annotated: frozenset[int] | None = None

    def is_annotated(self, value: int) -> bool:
        """Whether label ``value`` was contoured in this case (background always is)."""
        return value == 0 or self.annotated is None or value in self.annotated

    def annotated_mask(self, num_classes: int) -> list[bool]:
        """One flag per class value ``0..num_classes-1``: was it contoured in this case."""
        return [self.is_annotated(k) for k in range(num_classes)]

    def to_monai(self, num_classes: int | None = None) -> dict[str, object]:
        """The MONAI dictionary form: ``{"image": str | [str, ...], "label": str, "case_id": str}``.

        With ``num_classes``, an ``annotated`` entry (one 0/1 flag per class) rides along so the
        partial-label loss sees which organs this case's label map can be trusted for.
        """
        item: dict[str, object] = {
            "case_id": self.case_id,
            "image": str(self.images[0]) if len(self.images) == 1 else [str(p) for p in self.images],
        }
        if self.label is not None:
            item["label"] = str(self.label)
        if num_classes is not None:
            # A tensor from the start: PersistentDataset reloads items as tensors, and one batch
            # may mix fresh and reloaded items.
            item["annotated"] = torch.tensor(self.annotated_mask(num_classes), dtype=torch.float32)
        return item


@dataclass
class Datalist:
    """A dataset in memory: where it lives, its channels and label names, and its cases.

    ``labels`` maps integer value -> name and always includes ``0: "background"``.
    ``modalities`` maps channel index -> modality name (``"CT"``, ``"MR"``, ``"T2"``...).
    """

    name: str
    root: Path
    labels: dict[int, str]
    modalities: dict[int, str]
    training: list[Case] = field(default_factory=list)
    test: list[Case] = field(default_factory=list)
    layout: str = "decathlon"
    #: Things a user should know about how the layout was read (labels derived from values, 4D
    #: multi-channel files our 3D readers refuse...). Logged as warnings when the dataset is loaded.
    notes: list[str] = field(default_factory=list)

    @property
    def organ_names(self) -> list[str]:
        """Foreground label names ordered by label value (what per-organ metrics are named after)."""
        return [self.labels[k] for k in sorted(self.labels) if k != 0]

    @property
    def num_classes(self) -> int:
        """Number of output channels a network needs (background included)."""
        return max(self.labels) + 1

    @property
    def is_partial(self) -> bool:
        """Whether any case lacks contours for some organs."""
        organs = set(self.labels) - {0}
        return any(c.annotated is not None and not organs <= c.annotated for c in self.training)

    @property
    def is_ct(self) -> bool:
        return self.modalities.get(0, "").upper() == "CT"

    @property
    def cases(self) -> list[Case]:
        """Training cases followed by test cases."""
        return [*self.training, *self.test]

    def to_monai(self, cases: list[Case] | None = None) -> list[dict[str, object]]:
        return [c.to_monai() for c in (self.training if cases is None else cases)]
