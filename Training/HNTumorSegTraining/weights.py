"""Exported weights of a run (``best``, ``last``): what evaluation and inference load.

psam and unet are written as HNTumorSegLib model files (:func:`HNTumorSegLib.pipeline.model_file.save_model`),
so ``hntumorseg`` and the Slicer module load them directly. unetr and umamba are not networks
HNTumorSegLib can build, so they get the same two-file shape without pretending to be model
files: ``NAME.safetensors`` plus ``NAME.json`` with ``format`` :data:`WEIGHTS_FORMAT`, the
``model_spec`` that rebuilds the network (:func:`.models.build_from_spec`), the weights' sha256
and the metadata. Both kinds are written weights first, JSON last, each atomically, and read
back by :func:`load_weights` without pickle. An ensemble model file (several networks) is not
one run's weights: :func:`load_weights` refuses it with a one-line error.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from HNTumorSegLib.errors import ModelFileError
from HNTumorSegLib.imaging.image_io import read_json
from HNTumorSegLib.pipeline.model_file import load_model, model_paths, save_model

from .checkpoint import atomic_write_bytes
from .models import build_from_spec, config_of

WEIGHTS_FORMAT = "hntumorseg-train-weights"
WEIGHTS_FORMAT_VERSION = 1


def save_weights(model: nn.Module, spec: Mapping[str, Any], path: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``path.safetensors`` and ``path.json`` for ``model`` (built from ``spec``); returns both paths."""
    metadata = dict(metadata or {})
    config = config_of(spec)
    if config is not None:
        return save_model(model, config, path, metadata={**metadata, "model_spec": dict(spec)})
    paths = model_paths(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors_save(state, metadata={"format": "pt", "hntumorseg_format": WEIGHTS_FORMAT})
    meta = {"format": WEIGHTS_FORMAT, "format_version": WEIGHTS_FORMAT_VERSION, "model_spec": dict(spec),
            **metadata, "weights_sha256": hashlib.sha256(data).hexdigest()}
    text = json.dumps(meta, indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(paths.weights, data)
    atomic_write_bytes(paths.json, text.encode("utf-8"))
    return paths.weights, paths.json


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model in eval mode, JSON metadata)`` for either kind written by :func:`save_weights`."""
    paths = model_paths(path)
    meta = read_json(paths.json)
    if meta.get("format") != WEIGHTS_FORMAT:
        loaded = load_model(path, device)
        if loaded.is_ensemble:
            raise ModelFileError(f"{paths.json.name}: an ensemble of {len(loaded.members)} networks; this needs one "
                                 "network's weights (a run's best/last, or a single-network model file)")
        return loaded.model, loaded.meta
    data = paths.weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != meta.get("weights_sha256"):
        raise ValueError(f"{paths.weights.name}: weights do not match the sha256 in {paths.json.name}")
    model = build_from_spec(meta["model_spec"])
    model.load_state_dict(safetensors_load(data), strict=True)
    model.model_spec = meta["model_spec"]
    return model.to(device).eval(), meta
