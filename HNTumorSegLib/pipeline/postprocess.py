"""Connected-component clean-up of the network's label map, as the model file prescribes.

A patch-trained network leaves small, low-confidence islands far from any lesion; one such
island turns the Dice of a node-free case from 1 into 0. The model JSON's ``"postprocess"``
entry says, per structure, which components to drop: those smaller than ``min_volume_ml``,
those whose highest probability of that structure stays below ``min_peak_probability``, and
(``largest_only``) all but the largest; with ``keep_strongest``, a structure the network predicted
is never emptied: when the thresholds would drop every component, the one with the highest peak
probability stays. Why the last: on a centre the model has not seen, its confidence falls, and a
peak threshold chosen on familiar cases then deletes the whole primary (7 of 24 cases once) where
the weak prediction still overlapped it. The thresholds are chosen on training cases by
``hntumorseg-train postprocess``, never on the cases a model is evaluated on. Dropped voxels
become background. Components are 26-connected (SimpleITK), as in the GTVn lesion matching.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.imaging.geometry import voxel_volume_ml

#: Structure name -> label value.
LABEL_OF = {name: value for value, name in LABELS.items()}


@dataclass(frozen=True)
class StructureRule:
    """Which connected components of one structure to keep."""

    min_volume_ml: float = 0.0
    min_peak_probability: float = 0.0
    largest_only: bool = False
    keep_strongest: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"min_volume_ml": float(self.min_volume_ml),
                "min_peak_probability": float(self.min_peak_probability),
                "largest_only": bool(self.largest_only),
                "keep_strongest": bool(self.keep_strongest)}


@dataclass(frozen=True)
class Components:
    """The 26-connected components of one structure: voxel counts, peak probabilities, ids per voxel."""

    ids: np.ndarray  # int32 image, 0 outside, 1..n inside the components
    sizes: np.ndarray  # (n,) voxels
    peaks: np.ndarray  # (n,) highest probability of the structure inside each component


def components(mask: np.ndarray, probability: np.ndarray | None = None) -> Components:
    """Components of a boolean ``mask`` (Z, Y, X); ``probability`` of the structure, same shape."""
    cc = sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)), True)
    ids = sitk.GetArrayFromImage(cc).astype(np.int32, copy=False)
    n = int(ids.max()) if ids.size else 0
    sizes = np.bincount(ids.ravel(), minlength=n + 1)[1:]
    peaks = np.ones(n, dtype=np.float64)
    if probability is not None and n:
        inside = ids > 0
        peaks = np.zeros(n + 1, dtype=np.float64)
        np.maximum.at(peaks, ids[inside], probability[inside].astype(np.float64))
        peaks = peaks[1:]
    return Components(ids, sizes, peaks)


def kept_components(sizes: np.ndarray, peaks: np.ndarray, rule: StructureRule, voxel_ml: float) -> np.ndarray:
    """Boolean (n,) array: which of the components (``sizes`` in voxels, ``peaks``) ``rule`` keeps."""
    sizes, peaks = np.asarray(sizes), np.asarray(peaks)
    keep = (sizes * voxel_ml >= rule.min_volume_ml) & (peaks >= rule.min_peak_probability)
    if rule.keep_strongest and len(keep) and not keep.any():
        keep[int(np.lexsort((sizes, peaks))[-1])] = True  # the highest peak; ties: the larger
    if rule.largest_only and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, -1)))
        keep[:] = False
        keep[largest] = True
    return keep


#: The keys of one structure's rule in a model JSON's "postprocess" entry.
_RULE_KEYS = ("min_volume_ml", "min_peak_probability", "largest_only", "keep_strongest")


def _number(rule: Mapping[str, Any], key: str, name: str) -> float:
    value = rule.get(key, 0.0)
    top = 1.0 if key == "min_peak_probability" else math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and 0 <= value <= top):
        raise ValueError(f"{name}.{key} must be a number from 0{' to 1' if top == 1.0 else ' up'}, not {value!r}")
    return float(value)


def _flag(rule: Mapping[str, Any], key: str, name: str) -> bool:
    value = rule.get(key, False)
    if not isinstance(value, bool):  # "false" would be read as true
        raise ValueError(f"{name}.{key} must be true or false (JSON booleans), not {value!r}")
    return value


@dataclass(frozen=True)
class ComponentFilter:
    """Per-structure :class:`StructureRule` s (structures without a rule are left alone)."""

    rules: Mapping[str, StructureRule]

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str = "model") -> "ComponentFilter | None":
        """The filter a model JSON prescribes, or None when it prescribes none."""
        spec = meta.get("postprocess")
        if spec is None:
            return None
        try:
            if not isinstance(spec, Mapping) or not isinstance(spec.get("rules"), Mapping):
                raise ValueError('expected {"rules": {STRUCTURE: {...}}}')
            rules = {}
            for name, rule in spec["rules"].items():
                if name not in LABEL_OF:
                    raise ValueError(f"unknown structure {name!r} (expected {', '.join(LABEL_OF)})")
                if not isinstance(rule, Mapping):
                    raise ValueError(f"the rule of {name} is not an object")
                unknown = sorted(set(rule) - set(_RULE_KEYS))
                if unknown:
                    raise ValueError(f"{name}: unknown key(s) {', '.join(map(repr, unknown))} "
                                     f"(known: {', '.join(_RULE_KEYS)})")
                rules[name] = StructureRule(_number(rule, "min_volume_ml", name), _number(rule, "min_peak_probability", name),
                                            _flag(rule, "largest_only", name), _flag(rule, "keep_strongest", name))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{source}: invalid 'postprocess' entry: {exc}") from None
        return cls(rules)

    def to_dict(self) -> dict[str, Any]:
        return {"rules": {name: rule.to_dict() for name, rule in self.rules.items()}}

    def needs_probabilities(self) -> bool:
        return any(rule.min_peak_probability > 0 for rule in self.rules.values())

    def apply(self, label: np.ndarray, probabilities: np.ndarray | None, spacing_xyz: Sequence[float]) -> np.ndarray:
        """``label`` (Z, Y, X) with the dropped components set to 0; ``probabilities`` (C, Z, Y, X)."""
        if self.needs_probabilities() and probabilities is None:
            raise ValueError("this post-processing needs the network's probabilities")
        voxel_ml = voxel_volume_ml(spacing_xyz)
        out = label.copy()
        for name, rule in self.rules.items():
            value = LABEL_OF[name]
            comp = components(label == value, None if probabilities is None else probabilities[value])
            keep = kept_components(comp.sizes, comp.peaks, rule, voxel_ml)
            if not keep.all():
                out[np.isin(comp.ids, np.flatnonzero(~keep) + 1)] = 0
        return out
