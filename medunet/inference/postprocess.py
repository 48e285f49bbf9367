"""Label-map clean-up on the source grid: largest connected component per organ, hole filling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cc3d
import fill_voids
import numpy as np
from scipy import ndimage


def apply_postprocessing(
    labels: np.ndarray, names: Mapping[int, str], steps: Mapping[str, Sequence[str]]
) -> np.ndarray:
    """Apply per-organ steps (``{"Mandible": ["largest_component"], ...}``) as chosen in the plans."""
    by_name = {v: k for k, v in names.items()}
    largest = [by_name[o] for o, s in steps.items() if "largest_component" in s and o in by_name]
    holes = [by_name[o] for o, s in steps.items() if "fill_holes" in s and o in by_name]
    if largest:
        labels = keep_largest_component(labels, organs=largest)
    if holes:
        labels = fill_holes(labels, organs=holes)
    return labels


def keep_largest_component(
    labels: np.ndarray, connectivity: int = 26, organs: Sequence[int] | None = None
) -> np.ndarray:
    """Keep only the largest connected component of every non-zero label (others become background).

    One multi-label ``cc3d`` pass labels the components of all organs at once; per organ the biggest
    component survives. ``organs`` limits this to those label values (the others keep everything).
    """
    if not labels.any():
        return labels.copy()
    components, n = cc3d.connected_components(labels, connectivity=connectivity, return_N=True)
    if n == 0:
        return labels.copy()
    flat_cc = components.ravel()
    sizes = np.bincount(flat_cc, minlength=n + 1)
    # The organ each component belongs to (all voxels of a component share one label).
    owner = np.zeros(n + 1, dtype=labels.dtype)
    owner[flat_cc] = labels.ravel()
    keep = np.zeros(n + 1, dtype=bool)
    only = None if organs is None else {int(o) for o in organs}
    for organ in np.unique(owner[1:]):
        if organ == 0:
            continue
        if only is not None and int(organ) not in only:
            keep[owner == organ] = True
            continue
        ids = np.flatnonzero(owner == organ)
        ids = ids[ids > 0]
        keep[ids[np.argmax(sizes[ids])]] = True
    out = labels.copy()
    out[~keep[components]] = 0
    return out


def fill_holes(labels: np.ndarray, organs: Sequence[int] | None = None) -> np.ndarray:
    """Fill enclosed background cavities of every organ, or of ``organs`` (never overwrites another)."""
    out = labels.copy()
    only = None if organs is None else {int(o) for o in organs}
    for organ in np.unique(labels):
        if organ == 0 or (only is not None and int(organ) not in only):
            continue
        mask = labels == organ
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        filled = fill_voids.fill(mask[box], in_place=False)
        sub = out[box]
        sub[filled & (sub == 0)] = organ
    return out
