"""Which loaded volumes are the CT and the PET: pre-filling the input selectors.

Why: a PET/CT study loaded from DICOM brings two or more volumes; asking the user to pick the
obvious pair is a chance to pick them the wrong way round. Evidence, strongest first: the DICOM
Modality attribute (CT / PT), then words in the volume's name (HECKTOR's ``__CT`` / ``__PT``,
"PET", "FDG", "SUV", "CTAC", ...), then, for CT only, values in Hounsfield units (air near -1000).
A PET in the same study as the chosen CT is preferred, and among PETs an attenuation-corrected one
(a NAC series has no SUV). A localizer (topogram) or a one-slice volume is never a candidate, nor is
anything but a 3D volume of one value per voxel (the caller leaves out vector/RGB volumes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

#: Name words that say PET; they win over CT words ("PET AC CTAC" is a PET).
PET_WORDS = frozenset({"pt", "pet", "fdg", "suv", "suvbw", "petct"})
#: Name words that say CT ("ctac": the attenuation-correction CT of a PET/CT).
CT_WORDS = frozenset({"ct", "ctac", "cect", "ldct"})
#: A volume whose minimum is at or below this is in Hounsfield units (air, outside the body).
CT_MIN_HU = -500.0

#: Evidence strengths, for ranking candidates.
_BY_MODALITY, _BY_NAME, _BY_VALUES = 3, 2, 1


@dataclass(frozen=True)
class VolumeCandidate:
    """What the module knows of one loaded scalar volume (none of it needs Slicer)."""

    key: str                          # node ID, or any identifier the caller wants back
    name: str
    modality: Optional[str] = None    # DICOM (0008,0060), when loaded from DICOM
    study: Optional[str] = None       # study instance UID or subject-hierarchy study item
    minimum: Optional[float] = None   # smallest voxel value, when cheap to know
    slices: Optional[int] = None      # the smallest dimension (1: a single image, such as a topogram)
    localizer: bool = False           # DICOM ImageType holds LOCALIZER
    attenuation_corrected: Optional[bool] = None  # DICOM CorrectedImage holds ATTN (None: not known)


def name_words(name: str) -> list[str]:
    """Lower-case alphanumeric words of a name: "T-001__PT" -> ["t", "001", "pt"]."""
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def classify(volume: VolumeCandidate) -> tuple[Optional[str], int]:
    """("CT" | "PT" | None, evidence strength) for one volume."""
    if volume.localizer or (volume.slices is not None and volume.slices < 2):
        return None, 0  # a topogram or a single image: never the CT or PET of a 3D segmentation
    modality = (volume.modality or "").strip().upper()
    if modality in ("CT", "PT"):
        return modality, _BY_MODALITY
    if modality:  # MR, SEG, RTDOSE, ...: DICOM says it is neither
        return None, 0
    words = set(name_words(volume.name))
    if words & PET_WORDS:
        return "PT", _BY_NAME
    if words & CT_WORDS:
        return "CT", _BY_NAME
    if volume.minimum is not None and volume.minimum <= CT_MIN_HU:
        return "CT", _BY_VALUES
    return None, 0


def choose_default_inputs(volumes: Sequence[VolumeCandidate]) -> tuple[Optional[str], Optional[str]]:
    """Keys of the default (CT, PET); None where nothing qualifies.

    Among several candidates the strongest evidence wins, then (for the CT) having a PET in its
    study, then the most recently loaded (later in ``volumes``). The PET is taken from the CT's
    study when one there qualifies, attenuation-corrected before not.
    """
    cts, pets = [], []
    for order, v in enumerate(volumes):
        kind, strength = classify(v)
        if kind == "CT":
            cts.append((strength, order, v))
        elif kind == "PT":
            pets.append((strength, order, v))
    pet_studies = {v.study for _, _, v in pets if v.study}

    def ct_rank(item):
        strength, order, v = item
        return (strength, v.study in pet_studies if v.study else False, order)

    ct = max(cts, key=ct_rank)[2] if cts else None

    def pet_rank(item):
        strength, order, v = item
        same_study = bool(ct is not None and ct.study and v.study == ct.study)
        return (same_study, strength, v.attenuation_corrected is not False, order)

    pet = max(pets, key=pet_rank)[2] if pets else None
    return (ct.key if ct else None, pet.key if pet else None)
