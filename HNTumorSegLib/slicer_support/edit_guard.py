"""Never overwrite a segmentation the user edited: fingerprints of what a run produced.

Why: a clinician may spend minutes correcting a contour, then press Segment again. The module
stores a fingerprint of the segments it wrote; on the next run it compares that with the
segments as they are now. Unchanged: safe to replace. Changed, or not written by this module:
ask (or, without a user to ask, write a new segmentation beside it).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Optional

import numpy as np

REPLACE, ASK, CREATE = "replace", "ask", "create"


def segmentation_fingerprint(masks: Mapping[str, np.ndarray]) -> str:
    """sha256 over segment names, mask shapes and voxels (as booleans), in name order."""
    h = hashlib.sha256()
    for name in sorted(masks):
        mask = np.asarray(masks[name])
        mask = np.ascontiguousarray(mask if mask.dtype == np.bool_ else mask != 0)  # no copy of a boolean mask
        h.update(name.encode("utf-8") + b"\0")
        h.update(repr(tuple(mask.shape)).encode("ascii"))
        h.update(np.packbits(mask, axis=None).tobytes())
    return h.hexdigest()


def output_policy(existing: bool, stored_fingerprint: Optional[str], current_fingerprint: Optional[str]) -> str:
    """What to do with the output segmentation of the last run.

    "create" when there is none, "replace" when it is exactly what the module wrote, "ask"
    when it was edited or carries no fingerprint of ours.
    """
    if not existing:
        return CREATE
    if stored_fingerprint and current_fingerprint == stored_fingerprint:
        return REPLACE
    return ASK
