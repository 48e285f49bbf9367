"""Label-map clean-up on the source grid: largest connected component per organ, hole filling."""

from __future__ import annotations

import cc3d
import fill_voids
import numpy as np
from scipy import ndimage


def keep_largest_component(labels: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Keep only the largest connected component of every non-zero label (others become background).

    One multi-label ``cc3d`` pass labels the components of all organs at once; per organ the biggest
    component survives.
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
    for organ in np.unique(owner[1:]):
        if organ == 0:
            continue
        ids = np.flatnonzero(owner == organ)
        ids = ids[ids > 0]
        keep[ids[np.argmax(sizes[ids])]] = True
    out = labels.copy()
    out[~keep[components]] = 0
    return out


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill enclosed background cavities of every organ (never overwrites another organ)."""
    out = labels.copy()
    for organ in np.unique(labels):
        if organ == 0:
            continue
        mask = labels == organ
        box = ndimage.find_objects(mask.astype(np.uint8))[0]
        filled = fill_voids.fill(mask[box], in_place=False)
        sub = out[box]
        sub[filled & (sub == 0)] = organ
    return out
