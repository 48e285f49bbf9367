"""Export of predictions: ITK-SNAP label file and workspace, DICOM SEG, volumes table, preview, case folders."""

from __future__ import annotations

from medunet.export.itksnap import (
    label_colors,
    label_file_text,
    workspace_text,
    write_label_file,
    write_workspace,
)
from medunet.export.report import (
    OrganStats,
    organ_stats,
    preview_png,
    write_preview,
    write_review_queue,
    write_volumes_csv,
)

__all__ = [
    "OrganStats",
    "label_colors",
    "label_file_text",
    "organ_stats",
    "preview_png",
    "workspace_text",
    "write_label_file",
    "write_preview",
    "write_review_queue",
    "write_volumes_csv",
    "write_workspace",
]
