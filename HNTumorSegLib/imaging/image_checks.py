"""What a readable image must also be before it is segmented: sane geometry, a size that fits in memory, and
(for the CT) values in Hounsfield units.

Why: SimpleITK reads many headers that describe no usable grid without a word. A NIfTI ``pixdim`` of 0, NaN
or infinity is read as 1 mm; a MetaImage ``ElementSpacing`` of NaN as 0; a sheared or scaled NRRD/MetaImage
direction matrix is kept as it is, and resampling through it puts every voxel in the wrong place. A volume
too large for the machine is read in full before the first allocation of preprocessing fails (or the kernel
kills the process). A CT exported as unsigned values without its RescaleIntercept (HU + 1024: air at 0,
soft tissue near 1024) reads as a valid image whose every voxel looks like bone. Each of these becomes one
:class:`~HNTumorSegLib.errors.InputError` line naming the file, what is wrong and the fix; the header checks
run before any voxel is read (see :func:`HNTumorSegLib.imaging.image_io.read_image`).

Checked:

- spacing (:func:`spacing_problem`, :func:`raw_header_spacing_problem`): every spacing finite and > 0, in
  the grid SimpleITK reports and, for NIfTI, NRRD and MetaImage, in the header text itself (where SimpleITK
  silently substitutes 1 or 0). A negative spacing is refused too: readers disagree whether it flips the axis.
- direction (:func:`direction_problem`): finite, not singular, and orthonormal within
  :data:`DIRECTION_TOLERANCE` (an oblique grid is fine; a sheared or scaled one is not).
- memory (:func:`memory_problem`): the bytes a volume needs, from its header, against the memory available
  (``/proc/meminfo`` MemAvailable, and a cgroup v2 limit when lower); ``HNTUMORSEG_MEMORY_LIMIT_MIB`` sets
  the limit instead (tests; or to keep a shared server's jobs smaller).
- CT units (:func:`ct_offset_problem`): see its docstring for the rule.
- A mask or an empty image given as the PET (:func:`pet_mask_problem`).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.imaging.input_integrity import NIFTI_NAMES, text_header_fields

#: Largest |D^T D - I| entry of a direction matrix still taken as orthonormal. Headers store direction
#: cosines with 6 to 17 digits (rounding errors below 1e-6); a gantry tilt stored as a shear is 0.01 or more.
DIRECTION_TOLERANCE = 1e-3
#: Preprocessing holds an image about this many times over: as read, a snapped or LPS-oriented copy, and the
#: region handed to the B-spline resampler (measured: 2.4 times a 512 x 512 x 300 CT, int16 or float32); the
#: rest is margin for the label map and measurements on the CT grid.
WORKING_COPIES = 3
#: Environment variable: the memory (MiB) inputs may take, instead of what the machine has available.
MEMORY_LIMIT_ENV = "HNTUMORSEG_MEMORY_LIMIT_MIB"

#: Bytes per voxel component of SimpleITK's pixel types (vector types: per component).
_COMPONENT_BYTES = {
    sitk.sitkUInt8: 1, sitk.sitkInt8: 1, sitk.sitkUInt16: 2, sitk.sitkInt16: 2, sitk.sitkUInt32: 4,
    sitk.sitkInt32: 4, sitk.sitkUInt64: 8, sitk.sitkInt64: 8, sitk.sitkFloat32: 4, sitk.sitkFloat64: 8,
    sitk.sitkVectorUInt8: 1, sitk.sitkVectorInt8: 1, sitk.sitkVectorUInt16: 2, sitk.sitkVectorInt16: 2,
    sitk.sitkVectorUInt32: 4, sitk.sitkVectorInt32: 4, sitk.sitkVectorUInt64: 8, sitk.sitkVectorInt64: 8,
    sitk.sitkVectorFloat32: 4, sitk.sitkVectorFloat64: 8, sitk.sitkComplexFloat32: 8, sitk.sitkComplexFloat64: 16,
}
_AXES = "xyz"


def component_bytes(pixel_id: int) -> int:
    """Bytes of one voxel component of a SimpleITK pixel type (8 for a type not listed)."""
    return _COMPONENT_BYTES.get(pixel_id, 8)


# ------------------------------------------------------------------------------------- geometry

def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def spacing_problem(spacing: Sequence[float]) -> str | None:
    """What is wrong with a grid's spacing (mm), or None: each must be finite and positive."""
    for axis, value in zip(_AXES, spacing):
        if not math.isfinite(value):
            return (f"spacing {_numbers(spacing)} mm is not finite along {axis}; the header is damaged: write the "
                    "voxel size (mm) into it")
        if value <= 0:
            kind = "zero" if value == 0 else "negative"
            return (f"spacing {_numbers(spacing)} mm is {kind} along {axis}; every voxel size must be positive "
                    "(a flipped axis belongs in the direction matrix): fix the header")
    return None


def direction_problem(direction: Sequence[float]) -> str | None:
    """What is wrong with a 3 x 3 direction matrix (row-major), or None: finite, not singular, orthonormal."""
    d = np.asarray(direction, float).reshape(3, 3)
    shown = _numbers(np.round(d, 4).ravel())
    if not np.all(np.isfinite(d)):
        return f"direction matrix {shown} is not finite; the header is damaged: fix its orientation"
    if abs(np.linalg.det(d)) < 1e-6:
        return (f"direction matrix {shown} is degenerate (singular: two axes point the same way or one is "
                "zero); the grid cannot be placed in space: fix the header's orientation")
    error = float(np.abs(d.T @ d - np.eye(3)).max())
    if error > DIRECTION_TOLERANCE:
        return (f"direction matrix {shown} is not orthonormal (axes sheared or scaled, off by {error:.3g}); "
                "resample the image to an orthogonal grid first (a gantry tilt must be resampled away)")
    return None


def spatial_direction(direction: Sequence[float], dimension: int) -> tuple[float, ...]:
    """The 3 x 3 spatial block of an N x N direction matrix (N = 3 or 4)."""
    d = np.asarray(direction, float).reshape(dimension, dimension)
    return tuple(float(v) for v in d[:3, :3].ravel())


# --------------------------------------------------------------------------- spacing in headers

_HEADER_BYTES = 544


def raw_header_spacing_problem(path: str | os.PathLike) -> str | None:
    """A spacing in the header text that SimpleITK would silently replace: NIfTI ``pixdim``, NRRD
    ``spacings``/``space directions``, MetaImage ``ElementSpacing``/``ElementSize`` (None when fine, or
    when the file is of another format or too damaged to tell: its reader decides then). The NRRD and
    MetaImage headers are read by the integrity checks' own readers."""
    path = Path(path)
    header = text_header_fields(path)
    if header is not None:
        kind, fields = header
        return _nrrd_spacing_problem(fields) if kind == "NRRD" else _metaimage_spacing_problem(fields)
    if not path.name.lower().endswith(NIFTI_NAMES):
        return None
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            return _nifti_pixdim_problem(fh.read(_HEADER_BYTES))
    except (OSError, EOFError, ValueError, struct.error, gzip.BadGzipFile):
        return None  # the integrity checks and the reader say what is wrong with such a file


def _nifti_pixdim_problem(head: bytes) -> str | None:
    for endian in "<>":
        if len(head) >= 348 and struct.unpack_from(endian + "i", head)[0] == 348:
            ndim = struct.unpack_from(endian + "h", head, 40)[0]
            pixdim = struct.unpack_from(endian + "8f", head, 76)
            break
        if len(head) >= 540 and struct.unpack_from(endian + "i", head)[0] == 540:
            ndim = struct.unpack_from(endian + "q", head, 16)[0]
            pixdim = struct.unpack_from(endian + "8d", head, 104)
            break
    else:
        return None
    spatial = pixdim[1: 1 + max(0, min(int(ndim), 3))]
    problem = spacing_problem(spatial)
    return f"NIfTI pixdim {problem}" if problem else None


def _floats(text: str) -> list[float]:
    out = []
    for token in re.split(r"[\s,()]+", text.strip()):
        if token and token.lower() != "none":
            out.append(float(token))  # "nan", "inf" parse; anything else raises ValueError (reader decides)
    return out


def _nrrd_spacing_problem(fields: dict[str, str]) -> str | None:
    try:
        if "spacings" in fields:
            problem = spacing_problem(_floats(fields["spacings"]))
            if problem:
                return f"NRRD spacings: {problem}"
        directions = fields.get("spacedirections", "")
        if not all(math.isfinite(v) for v in _floats(directions)):
            return (f"NRRD space directions {directions!r} hold values that are not finite; the header is "
                    "damaged: write the voxel axes (mm) into it")
    except ValueError:
        return None  # a field that is not numbers: the reader decides
    return None


def _metaimage_spacing_problem(fields: dict[str, str]) -> str | None:
    try:
        for key, shown in (("elementspacing", "ElementSpacing"), ("elementsize", "ElementSize")):
            problem = spacing_problem(_floats(fields[key])) if key in fields else None
            if problem:
                return f"MetaImage {shown}: {problem}"
    except ValueError:
        return None  # a field that is not numbers: the reader decides
    return None


# --------------------------------------------------------------------------------------- memory

def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """Room left under a cgroup v2 memory limit (a container's), or None when there is none."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def available_memory_bytes() -> int | None:
    """Memory the inputs may take: ``HNTUMORSEG_MEMORY_LIMIT_MIB`` when set, else what the machine (or its
    container) has available now; None when unknown (then nothing is refused)."""
    text = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if text:
        try:
            mib = float(text)
        except ValueError:
            mib = float("nan")
        if not math.isfinite(mib) or mib <= 0:  # inf overflowed int() with a traceback; -1 was taken as a limit
            from HNTumorSegLib.errors import InputError

            raise InputError(f"{MEMORY_LIMIT_ENV}={text}: not a positive number of MiB (unset it to use the memory "
                             "the machine has available)")
        return int(mib * (1 << 20))
    known = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(known) if known else None


def _bytes_text(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1024:.1f} KiB"


def memory_problem(role: str, size: Sequence[int], needed: int, what: str) -> str | None:
    """A message when ``needed`` bytes (to read and preprocess a ``role`` volume of ``size``) exceed the
    memory available; ``what`` says what the figure counts."""
    available = available_memory_bytes()
    if available is None or needed <= available:
        return None
    source = f"allowed by {MEMORY_LIMIT_ENV}" if os.environ.get(MEMORY_LIMIT_ENV, "").strip() else "available"
    return (f"the {role} image ({' x '.join(str(int(n)) for n in size)} voxels) needs about {_bytes_text(needed)} "
            f"of memory to preprocess ({what}), more than the {_bytes_text(available)} {source}; crop it or "
            "resample it to a coarser grid first, or use a machine with more memory")


def image_memory_problem(role: str, size: Sequence[int], pixel_id: int, components: int = 1) -> str | None:
    """:func:`memory_problem` for an image file: :data:`WORKING_COPIES` times its voxels in their own type."""
    nbytes = component_bytes(pixel_id) * max(components, 1)
    needed = int(np.prod([int(n) for n in size], dtype=np.float64)) * nbytes * WORKING_COPIES
    return memory_problem(role, size, needed, f"{WORKING_COPIES} copies of {nbytes} bytes a voxel")


# ------------------------------------------------------------------------------------- CT units

#: HU at or below which a voxel is air, lung or fat (a CT in HU has some around and inside the patient;
#: a CT in HU + 1024 has none: air lands near 24 and an unsigned export holds nothing below 0).
CT_AIR_OR_FAT_HU = -20
#: Share of voxels at or below :data:`CT_AIR_OR_FAT_HU` under which a CT holds no air and no fat at all.
CT_NO_AIR_OR_FAT_FRACTION = 0.005
#: HU + 1024 shifts air (-1000 HU) to about 24 and soft tissue and fat (-200 to 300 HU) to 824 to 1324.
SHIFTED_AIR_MAX, SHIFTED_TISSUE = 200, (824, 1324)
#: Shares of voxels a shifted CT shows as air and as soft tissue. The tissue share is small because a
#: head-and-neck CT reconstructed on a 500 mm field of view is mostly air: 5 % body in a neck slice.
SHIFTED_AIR_FRACTION, SHIFTED_TISSUE_FRACTION = 0.05, 0.01
#: HU from which a voxel is bone: a head-and-neck CT without air or fat still holds the skull, mandible or spine.
CT_BONE_HU = 300
#: HU from which soft tissue begins (fluid and water lie below).
CT_SOFT_TISSUE_HU = 20
#: Voxels looked at (a regular subsample of a larger CT): the shares above need no more.
_CT_SAMPLE = 2_000_000


def _regular_sample(a: np.ndarray) -> np.ndarray:
    """Every n-th voxel along each axis, n chosen so that about :data:`_CT_SAMPLE` voxels are looked at."""
    step = max(1, int(round((a.size / _CT_SAMPLE) ** (1.0 / 3.0))))
    return a[::step, ::step, ::step]


def ct_offset_problem(ct: sitk.Image | np.ndarray) -> str | None:
    """A message when a CT (an image, or its voxel array as a Slicer volume holds it) looks like HU + 1024
    (an unsigned export whose RescaleIntercept -1024 was not applied), else None.

    The rule, on a regular subsample of the voxels: a CT in HU always holds some air or fat (-1000 HU around
    the patient, in the airway, sinuses and lungs; -100 HU under the skin), and a shifted one holds neither
    (an unsigned export has nothing below 0), so it is refused only when (1) fewer than 0.5 % of the voxels
    lie at or below -20 HU, (2) at least 5 % lie at or below 200 (where the air around the patient falls
    when shifted: about 24) and (3) at least 1 % lie between 824 and 1324 (soft tissue and fat shifted),
    twice as many as between 200 and 824 (lung and partial volume when shifted; trabecular bone in HU). The
    1 % catches a small neck in a large field of view (mostly air). A CT whose field of view lies entirely
    inside the body and holds no fat has its soft tissue near 0 HU, not near 1024, so (3) keeps it; what it
    would take to be refused is a crop without air or fat of which a hundredth or more is cortical bone
    (824 to 1324 HU) and little trabecular bone, which no head-and-neck CT is. A CT windowed to soft tissue
    (clipped at, say, -160 and 240 HU) holds fat below -20 and is accepted.

    Also refused: an image with neither air or fat nor bone (nothing at or below -20 HU, nothing at or above
    300 HU) whose voxels lie mostly below soft tissue (nine in ten under 20 HU): a PET given as the CT (a few
    SUV); a crop of soft tissue (20 to 80 HU) is kept.
    """
    a = ct if isinstance(ct, np.ndarray) else sitk.GetArrayViewFromImage(ct)
    if a.size == 0:
        return None
    sample = _regular_sample(a)
    n = float(sample.size)
    if np.count_nonzero(sample <= CT_AIR_OR_FAT_HU) / n >= CT_NO_AIR_OR_FAT_FRACTION:
        return None
    if not np.any(sample >= CT_BONE_HU) and not np.any(sample <= CT_AIR_OR_FAT_HU) \
            and float(np.percentile(sample, 90)) < CT_SOFT_TISSUE_HU:
        low, high = float(np.min(sample)), float(np.max(sample))
        return (f"does not look like a CT: its values lie between {low:.4g} and {high:.4g}, with neither air or fat "
                f"(at or below {CT_AIR_OR_FAT_HU} HU) nor bone (at or above {CT_BONE_HU} HU); is it the PET, or a "
                "mask? Give the CT in HU")
    air = np.count_nonzero(sample <= SHIFTED_AIR_MAX) / n
    lo, hi = SHIFTED_TISSUE
    tissue = np.count_nonzero((sample >= lo) & (sample <= hi)) / n
    between = np.count_nonzero((sample > SHIFTED_AIR_MAX) & (sample < lo)) / n
    if air < SHIFTED_AIR_FRACTION or tissue < SHIFTED_TISSUE_FRACTION or tissue < 2 * between:
        return None
    return (f"CT values look like HU + 1024 (no voxel below {CT_AIR_OR_FAT_HU} HU; {air:.0%} of voxels near 0 where air "
            f"should be -1000 HU, {tissue:.0%} near 1024 where soft tissue should be near 0 HU): an unsigned "
            "export whose RescaleIntercept -1024 was not applied? Subtract 1024 from the CT (or fix its "
            "RescaleIntercept) and run again")


#: Value sets that are masks or label maps, not PETs: this software's labels (0 background, 1 GTVp, 2 GTVn) and a
#: binary mask as 0/1 or 0/255 (subsets too: a label map without nodes holds 0 and 1).
MASK_VALUE_SETS = ({0.0, 1.0, 2.0}, {0.0, 255.0})


def pet_mask_problem(pet: sitk.Image | np.ndarray) -> str | None:
    """A message when the image given as the PET is a label map, a binary mask or constant, else None. Why: a
    label map given as the PET has SUV-sized values and passed every other check; it was segmented, its
    "uptake" the label values (the CT side has the mirror check, :func:`ct_offset_problem`). A PET holds
    thousands of values; the rule looks for the value sets of masks and labels only (a synthetic PET of a few
    uptake levels stays a PET), on a regular subsample of the voxels."""
    a = pet if isinstance(pet, np.ndarray) else sitk.GetArrayViewFromImage(pet)
    if a.size == 0:
        return None
    values = np.unique(_regular_sample(a))
    if len(values) == 1:
        return f"holds {values[0]:g} in every voxel: an empty image, not a PET; give the PET in SUV"
    if len(values) > 3 or not any(set(values.tolist()) <= mask for mask in MASK_VALUE_SETS):
        return None
    return (f"holds only the values {', '.join(f'{v:g}' for v in values)}: a mask or label map, not a PET; give the "
            "PET (in SUV, or DICOM in Bq/mL)")
