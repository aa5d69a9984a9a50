"""What GTVp and GTVn are, in the words other software reads: names, colours and DICOM codes.

Why: a segment called "GTVp" means nothing to a planning system or a DICOM SEG reader; the
coded terms (SNOMED CT, as DICOM CID 7150/7151 use them) do. One definition here serves the
Slicer module (segment names, colours, terminology tags that its DICOM SEG and RTSTRUCT
exporters read) and the command-line exporters, so the codes cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator, code value, code meaning."""

    scheme: str
    value: str
    meaning: str

    def slicer_triplet(self) -> str:
        """``SCHEME^VALUE^MEANING``, the form Slicer's terminology strings use."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


#: Slicer's terminology context that holds the DICOM segmentation categories and types.
TYPE_CONTEXT = "Segmentation category and type - DICOM master list"
#: Slicer's anatomic-region context built from the DICOM anatomic codes.
ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: A coded value left empty in a terminology string.
_EMPTY = "^^"

# Meanings exactly as Slicer's terminology lists spell them (Modules/Loadable/Terminologies/Resources/
# SegmentationCategoryTypeModifier-DICOM-Master.json and AnatomicRegionAndModifier-DICOM-Master.json, unchanged
# since Slicer commit 5ae5564, 2020): its terminology selector matches an entry by these strings. The same
# meanings are the DICOM standard's (CID 7150, 7159, 4031), so RTSTRUCT and DICOM SEG carry them too.
MORPHOLOGICALLY_ALTERED_STRUCTURE = Code("SCT", "49755003", "Morphologically Altered Structure")
NEOPLASM_PRIMARY = Code("SCT", "86049000", "Neoplasm, Primary")
NEOPLASM_SECONDARY = Code("SCT", "14799000", "Neoplasm, Secondary")
HEAD_AND_NECK = Code("SCT", "774007", "Head and Neck")
LYMPH_NODE = Code("SCT", "59441001", "Lymph node")


@dataclass(frozen=True)
class SegmentDefinition:
    """A structure the network draws: its label value, name, display colour and codes."""

    label: int
    name: str
    description: str
    color: tuple[float, float, float]  # RGB in 0..1
    category: Code
    type: Code
    region: Code

    def terminology_entry(self) -> str:
        """The string Slicer stores in a segment's terminology tag.

        Format: type context ~ category ~ type ~ type modifier ~ anatomic context ~ region ~
        region modifier, each coded value as ``SCHEME^VALUE^MEANING`` (empty: ``^^``).
        """
        return "~".join([TYPE_CONTEXT, self.category.slicer_triplet(), self.type.slicer_triplet(), _EMPTY,
                         ANATOMIC_CONTEXT, self.region.slicer_triplet(), _EMPTY])

    @property
    def color_255(self) -> tuple[int, int, int]:
        return tuple(int(round(c * 255)) for c in self.color)


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i:i + 2], 16) / 255.0 for i in (0, 2, 4))


GTVP = SegmentDefinition(
    label=1, name="GTVp", description="Primary tumour gross tumour volume",
    color=_rgb("#e6194b"), category=MORPHOLOGICALLY_ALTERED_STRUCTURE, type=NEOPLASM_PRIMARY,
    region=HEAD_AND_NECK)
GTVN = SegmentDefinition(
    label=2, name="GTVn", description="Metastatic lymph node gross tumour volume",
    color=_rgb("#3cb44b"), category=MORPHOLOGICALLY_ALTERED_STRUCTURE, type=NEOPLASM_SECONDARY,
    region=LYMPH_NODE)

#: In label order; names and values are those of ``HNTumorSegLib.LABELS`` (a test holds them equal).
SEGMENTS: tuple[SegmentDefinition, ...] = (GTVP, GTVN)


def split_nodes(array: np.ndarray) -> tuple[np.ndarray, tuple[SegmentDefinition, ...]]:
    """GTVn written node by node: ``GTVn_1`` .. ``GTVn_k`` (26-connected, the largest first), for departments
    that contour nodes one by one.

    Returns a label array where GTVp keeps 1 and node i gets 1 + i, and the segment definitions of
    those values: GTVp, then each node with GTVn's colour and codes and its own name.
    """
    from HNTumorSegLib.imaging.components import lesion_ids

    ids, count = lesion_ids(array == GTVN.label)
    out = np.where(array == GTVP.label, GTVP.label, 0).astype(np.uint16 if count > 250 else np.uint8)
    out[ids > 0] = ids[ids > 0] + GTVP.label
    nodes = tuple(replace(GTVN, label=GTVP.label + i, name=f"{GTVN.name}_{i}",
                          description=f"{GTVN.description}, node {i} (by volume)") for i in range(1, count + 1))
    return out, (GTVP, *nodes)


def segment_by_name(name: str) -> SegmentDefinition:
    for s in SEGMENTS:
        if s.name == name:
            return s
    raise KeyError(f"no segment named {name!r}; known: {', '.join(s.name for s in SEGMENTS)}")
