"""A quick-look picture of a result: what the network saw and what it drew.

Drawn on the analysis window (1 x 1 x 3 mm, LPS, patient left on the image's right as in
radiology), so it shows exactly the input the network received.
"""

from __future__ import annotations

import os

import numpy as np

from HNTumorSegLib import LABELS
from HNTumorSegLib.imaging.image_io import atomic_path

COLOURS = {1: "#e6194b", 2: "#3cb44b"}  # GTVp red, GTVn green (as in the Slicer module)


def _contours(ax, mask2d: np.ndarray, linestyle: str) -> None:
    for value, colour in COLOURS.items():
        m = (mask2d == value).astype(np.float32)
        if m.any():
            ax.contour(m, levels=[0.5], colors=[colour], linewidths=1.0, linestyles=linestyle)


def save_overlay(image: np.ndarray, prediction: np.ndarray, path: str | os.PathLike,
                 reference: np.ndarray | None = None, title: str = "") -> None:
    """PNG: PET coronal MIP, CT axial and CT coronal slices through the predicted (or true) tumour.

    ``image`` is the (2, Z, Y, X) network input, ``prediction`` and ``reference`` (Z, Y, X)
    label masks on it. Prediction contours are solid, reference contours dashed.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    ct, pet = image[0], image[1]
    focus = prediction if prediction.any() else (reference if reference is not None else prediction)
    if focus.any():
        z, y, x = (int(round(float(c))) for c in np.argwhere(focus == (1 if (focus == 1).any() else 2)).mean(0))
    else:
        z, y, x = (s // 2 for s in focus.shape)

    fig, axes = plt.subplots(1, 3, figsize=(13, 5.2))
    views = [
        ("PET, coronal MIP", pet.max(axis=1), prediction.max(axis=1),
         None if reference is None else reference.max(axis=1), "lower", 3.0, "hot"),
        (f"CT, axial slice z={z}", ct[z], prediction[z], None if reference is None else reference[z],
         "upper", 1.0, "gray"),
        (f"CT, coronal slice y={y}", ct[:, y], prediction[:, y],
         None if reference is None else reference[:, y], "lower", 3.0, "gray"),
    ]
    for ax, (name, img, pred, ref, origin, aspect, cmap) in zip(axes, views):
        ax.imshow(img, cmap=cmap, origin=origin, aspect=aspect, interpolation="nearest")
        if ref is not None:
            _contours(ax, ref, "dashed")
        _contours(ax, pred, "solid")
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=COLOURS[v], label=n) for v, n in LABELS.items()]
    if reference is not None:
        handles.append(Line2D([], [], color="k", linestyle="dashed", label="reference (dashed)"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.suptitle(title or "HNTumorSeg result on the 256 x 256 x 112 analysis window", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
