"""Intensity normalisation of the network input: paper section 2.2, "Intensity normalization".

Both channels end in (0, 1) through a logistic sigmoid, so CT (HU) and PET (SUV) reach the
network on a common scale whatever the scanner.
"""

from __future__ import annotations

import numpy as np

CT_CLIP_HU = (-1000.0, 1000.0)
#: Values used where the window reaches past the scan, before normalisation.
CT_PAD_HU = -1000.0
PET_PAD_SUV = 0.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.negative(x, dtype=np.float32)
    np.exp(out, out=out)
    out += 1.0
    np.reciprocal(out, out=out)
    return out


def normalize_ct(ct_hu: np.ndarray) -> np.ndarray:
    """sigmoid((clip(CT, -1000, 1000) + 1000) / 2000)."""
    lo, hi = CT_CLIP_HU
    x = np.clip(ct_hu, lo, hi).astype(np.float32)
    x -= lo
    x /= hi - lo
    return _sigmoid(x)


def pet_statistics(pet_real: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the real voxels of the cropped PET: those inside the CT lattice and
    inside the PET's own field of view (see :func:`~HNTumorSegLib.pipeline.preprocess.preprocess`)."""
    mu = float(pet_real.mean(dtype=np.float64))
    sigma = float(pet_real.std(dtype=np.float64))
    return mu, sigma


def normalize_pet(pet_suv: np.ndarray, mu: float, sigma: float) -> np.ndarray:
    """sigmoid((P - mu) / sigma); a constant PET (sigma = 0) maps to 0.5 everywhere."""
    x = pet_suv.astype(np.float32) - np.float32(mu)
    if sigma > 0:
        x /= np.float32(sigma)
    else:
        x[...] = 0.0
    return _sigmoid(x)
