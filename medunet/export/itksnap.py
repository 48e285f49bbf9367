"""ITK-SNAP files: the label description file and a workspace (``.itksnap``) for one case.

Both follow the formats ITK-SNAP itself writes. The label file is ITK-SNAP's plain-text "label
description" format (``IDX -R- -G- -B- -A-- VIS MSH "LABEL"``, index 0 = ``Clear Label``). The workspace is
ITK-SNAP's XML *registry*: ``Layers.Layer[000]`` is the main image (``MainRole``), ``Layers.Layer[001]``
the segmentation (``SegmentationRole``), and the label table is embedded in the main layer's project
metadata (``ProjectMetaData.IRIS.LabelTable``) as ITK-SNAP saves it.

Moving a case folder: ITK-SNAP records ``SaveLocation`` (the folder the workspace was saved in) and
each layer's path. When it opens a workspace that is no longer in ``SaveLocation`` it re-resolves every
layer *relative* to the workspace's new folder (``WorkspaceAPI::GetLayerActualPath``). Layer files are
written inside the case folder, so the relative location is ``segmentation.nii.gz`` and the folder can
be moved or copied as a whole.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Mapping
from pathlib import Path
from xml.sax.saxutils import quoteattr

from medunet.io.atomic import atomic_write_text

# ITK-SNAP 3.8 release date; ITK-SNAP refuses workspaces from versions newer than itself.
ITKSNAP_WORKSPACE_VERSION = "20190612"

# Distinct, colour-blind-friendlier first colours (then golden-ratio hues).
_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (0, 0, 128),
]

Color = tuple[int, int, int]


def label_colors(labels: Mapping[int, str]) -> dict[int, Color]:
    """A distinct RGB colour for every non-zero label (stable: depends on the label value only)."""
    colors: dict[int, Color] = {}
    for value in sorted(labels):
        if value == 0:
            continue
        if value <= len(_PALETTE):
            colors[value] = _PALETTE[value - 1]
        else:
            h = (value * 0.618033988749895) % 1.0
            r, g, b = colorsys.hsv_to_rgb(h, 0.75, 0.95)
            colors[value] = (round(r * 255), round(g * 255), round(b * 255))
    return colors


def _clean_name(name: str) -> str:
    return name.replace('"', "'").replace("\n", " ").strip() or "unnamed"


def label_file_text(labels: Mapping[int, str], colors: Mapping[int, Color] | None = None) -> str:
    """The text of an ITK-SNAP label description file for ``labels`` (value -> organ name)."""
    colors = dict(colors or label_colors(labels))
    lines = [
        "################################################",
        "# ITK-SnAP Label Description File",
        "# File format: ",
        "# IDX   -R-  -G-  -B-  -A--  VIS MSH  LABEL",
        "# Fields: ",
        "#    IDX:   Zero-based index ",
        "#    -R-:   Red color component (0..255)",
        "#    -G-:   Green color component (0..255)",
        "#    -B-:   Blue color component (0..255)",
        "#    -A-:   Label transparency (0.00 .. 1.00)",
        "#    VIS:   Label visibility (0 or 1)",
        "#    MSH:   Label mesh visibility (0 or 1)",
        "#  LABEL:   Label description ",
        "# Written by medunet",
        "################################################",
        f'{0:5d} {0:5d} {0:4d} {0:4d} {0:8g} {0:2d} {0:2d}    "Clear Label"',
    ]
    for value in sorted(labels):
        if value == 0:
            continue
        r, g, b = colors[value]
        name = _clean_name(labels[value])
        lines.append(f'{value:5d} {r:5d} {g:4d} {b:4d} {1:8g} {1:2d} {1:2d}    "{name}"')
    return "\n".join(lines) + "\n"


def write_label_file(
    path: str | Path, labels: Mapping[int, str], colors: Mapping[int, Color] | None = None
) -> Path:
    """Write an ITK-SNAP label description file (``labels.txt``) atomically."""
    return atomic_write_text(path, label_file_text(labels, colors))


class _Registry:
    """Tiny writer for ITK-SNAP's XML registry (nested folders of key/value entries)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.depth = 1

    def entry(self, key: str, value: object) -> None:
        self.lines.append(f"{'  ' * self.depth}<entry key={quoteattr(key)} value={quoteattr(str(value))} />")

    def open(self, key: str) -> None:
        self.lines.append(f"{'  ' * self.depth}<folder key={quoteattr(key)} >")
        self.depth += 1

    def close(self) -> None:
        self.depth -= 1
        self.lines.append(f"{'  ' * self.depth}</folder>")


_HEADER = """<?xml version="1.0" encoding="UTF-8" ?>
<!--ITK-SNAP (itksnap.org) Project File

This file can be moved/copied along with the images that it references
as long as the relative location of the images to the project file is
the same. Do not modify the SaveLocation entry, or this will not work.
-->
<!DOCTYPE registry [
<!ELEMENT registry (entry*,folder*)>
<!ELEMENT folder (entry*,folder*)>
<!ELEMENT entry EMPTY>
<!ATTLIST folder key CDATA #REQUIRED>
<!ATTLIST entry key CDATA #REQUIRED>
<!ATTLIST entry value CDATA #REQUIRED>
]>
"""


def workspace_text(
    *,
    save_location: str | Path,
    main_image: str | Path,
    segmentation: str | Path,
    labels: Mapping[int, str],
    dimensions: tuple[int, int, int],
    colors: Mapping[int, Color] | None = None,
    main_nickname: str = "image",
) -> str:
    """XML of an ITK-SNAP workspace. Relative layer paths are taken relative to ``save_location``."""
    save = Path(os.path.abspath(save_location))
    colors = dict(colors or label_colors(labels))

    def layer_path(p: str | Path) -> str:
        p = Path(p)
        return str(p if p.is_absolute() else save / p)

    reg = _Registry()
    reg.entry("SaveLocation", save)
    reg.entry("Version", ITKSNAP_WORKSPACE_VERSION)
    reg.open("Layers")

    reg.open("Layer[000]")
    reg.entry("AbsolutePath", layer_path(main_image))
    reg.entry("Role", "MainRole")
    reg.entry("Tags", "")
    reg.open("LayerMetaData")
    reg.entry("Alpha", 255)
    reg.entry("CustomNickName", main_nickname)
    reg.entry("Sticky", 0)
    reg.entry("Visible", 1)
    reg.close()  # LayerMetaData
    reg.open("ProjectMetaData")
    reg.open("Files")
    reg.open("Grey")
    reg.entry("Dimensions", " ".join(str(int(d)) for d in dimensions))
    reg.close()
    reg.close()
    reg.open("IRIS")
    reg.open("LabelTable")
    non_zero = [v for v in sorted(labels) if v != 0]
    reg.entry("NumberOfElements", len(non_zero))
    for i, value in enumerate(non_zero):
        reg.open(f"Element[{i}]")
        reg.entry("Alpha", 255)
        reg.entry("Color", " ".join(str(c) for c in colors[value]))
        reg.entry("Flags", "1 1")
        reg.entry("Index", value)
        reg.entry("Label", _clean_name(labels[value]))
        reg.close()
    reg.close()  # LabelTable
    reg.close()  # IRIS
    reg.close()  # ProjectMetaData
    reg.close()  # Layer[000]

    reg.open("Layer[001]")
    reg.entry("AbsolutePath", layer_path(segmentation))
    reg.entry("Role", "SegmentationRole")
    reg.entry("Tags", "")
    reg.open("LayerMetaData")
    reg.entry("Alpha", 0.5)
    reg.entry("CustomNickName", "segmentation")
    reg.entry("Sticky", 1)
    reg.entry("Visible", 1)
    reg.close()
    reg.close()  # Layer[001]
    reg.close()  # Layers
    return _HEADER + "<registry>\n" + "\n".join(reg.lines) + "\n</registry>\n"


def write_workspace(path: str | Path, **kwargs: object) -> Path:
    """Write :func:`workspace_text` to ``path`` atomically (``review.itksnap``)."""
    return atomic_write_text(path, workspace_text(**kwargs))  # type: ignore[arg-type]
