"""A network that draws the lymph node at a click: what a fixed threshold cannot see.

Why: a threshold draws a node as the voxels above a fraction of its SUVmax. On PET that is blurred and noisy
that fraction is wrong for small nodes (the blur widens them), for weak ones (the noise lifts the SUVmax) and for
a hot node matted to a weak one (the weak part is below it): on 26 nodes of 12 unseen phantoms, each drawn from
its SUVmax voxel, the threshold's mean Dice was 0.74 and the best fraction chosen per node with the reference
0.79. A small PSAM U-Net (the segmentation network's blocks) looking at a 96 mm cube of CT and PET around the
click learns the scanner's blur and noise from phantoms and draws the node whole.

The contract, shared with the training package (``HNTumorSegTraining.click_model``), is this module's:

- the crop: :data:`CROP_VOXELS` cubed at :data:`CROP_SPACING_MM` isotropic, axis-aligned in patient LPS,
  centred on the click (the click is the centre voxel), CT and PET resampled linearly into it;
- the inputs (:func:`network_inputs`): CT clipped to +-250 HU over 250; PET over its highest value within
  :data:`PEAK_RADIUS_MM` of the click (the shape of the uptake whatever its level; clipped at 4); log(1 + SUV)
  over 2 (its level);
- the output: two channels (background, the clicked lesion); the lesion is where its softmax, averaged over the
  crop and its seven mirror images (:func:`lesion_probability`), is >= 0.5, resampled linearly back onto the
  label's grid. The editor asks twice, at the click and at the centre of what it drew, and averages the two
  (``_network_region`` in :mod:`.clicks`).

A click model is a model file as the segmentation's (:mod:`HNTumorSegLib.pipeline.model_file`: safetensors +
JSON, verified on load) whose JSON holds a ``"click_model"`` entry naming the crop, the inputs and the structure
it draws. Torch is imported when a model is loaded, not before: the Slicer module loads without it.
"""

from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.errors import ModelFileError
from HNTumorSegLib.imaging.geometry import Geometry

#: The crop the network sees: this many voxels a side ...
CROP_VOXELS = 48
#: ... of this size (mm), isotropic: a 96 mm cube, room for a 35 mm node matted to another.
CROP_SPACING_MM = 2.0
#: The PET is scaled by its highest value within this distance (mm) of the click.
PEAK_RADIUS_MM = 6.0
#: CT window of the inputs (HU): soft tissue, fat and the edge of bone.
CT_CLIP_HU = 250.0
#: The key of a click model's JSON entry, and what it must say (checked on load).
CLICK_MODEL_KEY = "click_model"
CONTRACT = {"crop_voxels": CROP_VOXELS, "crop_spacing_mm": CROP_SPACING_MM, "peak_radius_mm": PEAK_RADIUS_MM,
            "inputs": ["ct_clip250", "pet_over_peak", "log1p_suv_over_2"], "outputs": ["background", "lesion"]}
#: The bundled click model (trained on phantoms, as the bundled segmentation model is).
DEFAULT_CLICK_MODEL = Path(__file__).resolve().parents[1] / "models" / "hntumorseg_phantom_node_clicks.json"


def crop_grid(point_mm: Sequence[float]) -> sitk.Image:
    """The (empty) crop grid centred on ``point_mm``: its centre voxel, index CROP_VOXELS // 2, is the click."""
    grid = sitk.Image([CROP_VOXELS] * 3, sitk.sitkFloat32)
    grid.SetSpacing([CROP_SPACING_MM] * 3)
    grid.SetOrigin(tuple(float(p) - CROP_SPACING_MM * (CROP_VOXELS // 2) for p in point_mm))
    return grid


def crops(ct: sitk.Image, pet: sitk.Image, point_mm: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """CT (HU; -1000 outside it) and PET (SUV; 0 outside it) resampled linearly into the crop at ``point_mm``,
    (z, y, x) float32 arrays."""
    grid = crop_grid(point_mm)
    out = []
    for image, outside in ((ct, -1000.0), (pet, 0.0)):
        resampled = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, outside, sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(resampled))
    return out[0], out[1]


@functools.lru_cache(maxsize=1)
def _near_centre() -> np.ndarray:
    z, y, x = np.indices((CROP_VOXELS,) * 3) - CROP_VOXELS // 2
    return (z * z + y * y + x * x) * CROP_SPACING_MM ** 2 <= PEAK_RADIUS_MM ** 2


def network_inputs(ct: np.ndarray, pet: np.ndarray) -> np.ndarray:
    """(B, 3, N, N, N) float32 inputs from (B, N, N, N) CT (HU) and PET (SUV) crops: see the module's contract."""
    ct = np.clip(np.asarray(ct, np.float32), -CT_CLIP_HU, CT_CLIP_HU) / CT_CLIP_HU
    pet = np.maximum(np.asarray(pet, np.float32), 0.0)
    peak = np.maximum(np.where(_near_centre(), pet, 0.0).reshape(len(pet), -1).max(axis=1), 0.1)
    over_peak = np.clip(pet / peak[:, None, None, None], 0.0, 4.0)
    return np.stack([ct, over_peak, np.log1p(pet) / 2.0], axis=1)


#: The mirror images a click is drawn on, as (z, y, x) axes flipped: all eight, the flips the click model is trained
#: with (``HNTumorSegTraining.click_model.training_batch``).
FLIPS = tuple(axes for n in range(4) for axes in itertools.combinations((0, 1, 2), n))


def lesion_probability(network, inputs: np.ndarray) -> np.ndarray:
    """The lesion's softmax for (1, 3, N, N, N) :func:`network_inputs`, averaged over the crop's :data:`FLIPS`,
    each mapped back: (N, N, N) float32.

    Why: one pass draws a node a little differently from its mirror image (nodes lie left and right alike); the
    average of the eight is the same whichever way the scan is stored and draws nodes better: on the 53 nodes of
    24 unseen phantoms (``Testing/benchmarks/click_nodes.py``) mean Dice 0.864 -> 0.873 from the node's centre,
    0.822 -> 0.826 from its SUVmax voxel, for 0.25 s more a click on a 2-core CPU (one batch of eight)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(inputs, np.float32))
    batch = torch.cat([torch.flip(x, [a + 2 for a in axes]) if axes else x for axes in FLIPS])
    with torch.inference_mode():
        lesion = torch.softmax(network(batch).float(), dim=1)[:, 1]
    mean = sum(torch.flip(lesion[k], list(axes)) if axes else lesion[k] for k, axes in enumerate(FLIPS))
    return (mean / len(FLIPS)).numpy().astype(np.float32)


class ClickModel:
    """A loaded click model: :meth:`probability` of the lesion at a click, on a label's grid."""

    def __init__(self, path: str | os.PathLike):
        from HNTumorSegLib.pipeline.model_file import load_model

        loaded = load_model(path)
        name = loaded.paths.json.name
        entry = loaded.meta.get(CLICK_MODEL_KEY)
        if not isinstance(entry, dict):
            raise ModelFileError(f"{name}: not a click model (no {CLICK_MODEL_KEY!r} entry): a segmentation model "
                                 "segments, it does not draw at clicks")
        differs = sorted(k for k, v in CONTRACT.items() if entry.get(k) != v)
        if differs or loaded.config.in_channels != 3 or loaded.config.out_channels != 2:
            raise ModelFileError(f"{name}: a click model of another version (its {', '.join(differs) or 'channels'} "
                                 "differ from this software's)")
        self.network = loaded.model
        self.structure = str(entry.get("structure", "GTVn"))
        self.name = name

    def probability(self, ct: sitk.Image, pet: sitk.Image, box: Geometry, point_mm: Sequence[float]) -> np.ndarray:
        """The lesion's probability at the click, resampled linearly onto ``box`` (a part of a label's grid;
        (z, y, x) float32, 0 beyond the crop)."""
        ct_crop, pet_crop = crops(ct, pet, point_mm)
        lesion = lesion_probability(self.network, network_inputs(ct_crop[None], pet_crop[None]))
        image = sitk.GetImageFromArray(np.ascontiguousarray(lesion, np.float32))
        image.CopyInformation(crop_grid(point_mm))
        back = sitk.Resample(image, box.reference(sitk.sitkFloat32), sitk.Transform(), sitk.sitkLinear, 0.0,
                             sitk.sitkFloat32)
        return sitk.GetArrayFromImage(back)


@functools.lru_cache(maxsize=4)
def load_click_model(path: str = str(DEFAULT_CLICK_MODEL)) -> ClickModel:
    """The click model at ``path`` (the bundled one by default), loaded once per process."""
    return ClickModel(path)
