"""Figures logged with a run: the training curve and validation previews (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medunet.io.atomic import atomic_path


def _figure(**kwargs: object):  # noqa: ANN202 - matplotlib types
    # The object-oriented API with an explicit Agg canvas: no pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def training_curve_png(
    path: str | Path,
    loss: Mapping[int, float],
    dice: Mapping[str, Mapping[int, float]],
    *,
    title: str = "",
) -> Path:
    """Two panels: training loss per epoch, and validation Dice per organ (and mean) per epoch."""
    fig = _figure(figsize=(10, 4), dpi=100, layout="constrained")
    ax_loss, ax_dice = fig.subplots(1, 2)
    if loss:
        epochs = sorted(loss)
        ax_loss.plot(epochs, [loss[e] for e in epochs], marker=".", color="black")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss")
    ax_loss.grid(alpha=0.3)
    for organ, series in dice.items():
        epochs = sorted(series)
        style = {"color": "black", "linewidth": 2.0, "linestyle": "--"} if organ == "mean" else {}
        ax_dice.plot(epochs, [series[e] for e in epochs], marker=".", label=organ, **style)
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="Validation Dice", ylim=(0.0, 1.0))
    ax_dice.grid(alpha=0.3)
    if dice:
        ax_dice.legend(fontsize="small", ncol=max(1, math.ceil(len(dice) / 12)), loc="lower right")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def best_slice(reference: np.ndarray, axis: int = -1) -> int:
    """Index along ``axis`` with the most foreground in ``reference`` (the middle when it is empty)."""
    fg = np.count_nonzero(np.moveaxis(reference, axis, 0).reshape(reference.shape[axis], -1), axis=1)
    return int(fg.argmax()) if fg.any() else reference.shape[axis] // 2


def preview_png(
    path: str | Path,
    image: np.ndarray,
    reference: np.ndarray | None,
    prediction: np.ndarray | None,
    *,
    num_classes: int | None = None,
    title: str = "",
) -> Path:
    """Image | reference overlay | prediction overlay for one 2D slice (label maps as integer arrays)."""
    from matplotlib import colormaps
    from matplotlib.colors import BoundaryNorm, ListedColormap

    labels = [a for a in (reference, prediction) if a is not None]
    n = num_classes or int(max([1, *[int(a.max()) + 1 for a in labels if a.size]]))
    base = colormaps["tab20"].resampled(max(n - 1, 1))
    cmap = ListedColormap([(0, 0, 0, 0)] + [base(i) for i in range(max(n - 1, 1))])
    norm = BoundaryNorm(np.arange(-0.5, max(n, 2) + 0.5), cmap.N)
    lo, hi = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    panels: Sequence[tuple[str, np.ndarray | None]] = [
        ("image", None),
        ("reference", reference),
        ("prediction", prediction),
    ]
    fig = _figure(figsize=(9, 3.3), dpi=100, layout="constrained")
    for ax, (name, overlay) in zip(fig.subplots(1, 3), panels, strict=True):
        ax.imshow(image.T, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower")
        if overlay is not None:
            ax.imshow(overlay.T, cmap=cmap, norm=norm, alpha=0.5, origin="lower", interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _save(fig: object, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")  # type: ignore[attr-defined]
    return path
