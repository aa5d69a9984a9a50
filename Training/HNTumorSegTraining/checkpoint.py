"""Training checkpoints: written atomically, read without unpickling code.

Why atomic (temp file beside the target, fsync, ``os.replace``): a run killed while saving must
leave the previous checkpoint intact, never a truncated one; the resume would otherwise lose the
whole run. Why ``torch.load(weights_only=True)``: a checkpoint is a file like any other, and
plain ``torch.load`` runs arbitrary pickled code. The restricted loader accepts only tensors and
plain containers of numbers and strings, so everything saved here is converted to those -- most
notably numpy's RNG state (an ndarray inside a tuple), see :func:`capture_rng`.
"""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from HNTumorSegLib.imaging.image_io import write_bytes

CHECKPOINT_FORMAT = "hntumorseg-train-checkpoint"
CHECKPOINT_VERSION = 1


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    return write_bytes(data, path)


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """``torch.save`` ``state`` (plus format tags) to ``path`` atomically."""
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **state}, buffer)
    return write_bytes(buffer.getvalue(), path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ValueError if it is not one of ours."""
    try:
        state = torch.load(Path(path), map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as exc:  # cut short by a kill, or damaged
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: cannot read the checkpoint ({reason}); damaged or cut short? "
                         "start the run again, or fine-tune from its last weights with --init-weights") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an HNTumorSeg training checkpoint")
    if state.get("format_version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint version {state.get('format_version')!r}")
    return state


def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU (and CUDA) generator states as weights_only-loadable values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": random.getstate(),  # (int, tuple of ints, None or float)
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when both sides have CUDA)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
