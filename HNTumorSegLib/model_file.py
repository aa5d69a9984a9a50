"""Model files: ``NAME.safetensors`` (weights) + ``NAME.json`` (network config and provenance).

Weights are stored with safetensors only -- never pickle, never ``torch.load`` -- so opening a
model file cannot run code. The JSON records the network config the weights belong to, the label
map, the preprocessing version, training provenance and the sha256 of the weights file; loading
checks all of it and turns every problem into a one-line
:class:`~HNTumorSegLib.errors.ModelFileError` naming the file. Saving is atomic per file (temp
file in the same directory, then ``os.replace``), so an error never leaves a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from . import LABELS
from .errors import ModelFileError
from .image_io import new_file_mode
from .network import NetworkConfig, build_network

FORMAT = "hntumorseg-model"
FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
JSON_SUFFIX = ".json"
#: Keys that save_model writes itself; metadata may not override them.
RESERVED_KEYS = ("format", "format_version", "network", "labels", "weights_sha256")
DEFAULT_INTENDED_USE = "Research use only; not a medical device and not for clinical decisions."
_MAX_LISTED = 3


@dataclass(frozen=True)
class ModelPaths:
    json: Path
    weights: Path


@dataclass
class LoadedModel:
    model: nn.Module  # in eval mode, on the requested device
    config: NetworkConfig
    meta: dict[str, Any]  # the whole JSON
    paths: ModelPaths


def model_paths(path: str | os.PathLike) -> ModelPaths:
    """``NAME``, ``NAME.json`` or ``NAME.safetensors`` -> both paths (other dots are kept)."""
    p = Path(path)
    name = p.name
    for suffix in (JSON_SUFFIX, WEIGHTS_SUFFIX):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return ModelPaths(p.with_name(name + JSON_SUFFIX), p.with_name(name + WEIGHTS_SUFFIX))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _one_line(text: object, limit: int = 200) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _shape_mismatches(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]) -> list[str]:
    """Short descriptions of missing / unexpected keys and shape differences (empty if they fit)."""
    missing = [k for k in expected if k not in found]
    unexpected = sorted(k for k in found if k not in expected)
    shapes = [f"{k} {list(found[k].shape)} vs {list(expected[k])}"
              for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k])]

    def part(label: str, items: list[str]) -> str:
        more = f", … (+{len(items) - _MAX_LISTED})" if len(items) > _MAX_LISTED else ""
        return f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}"

    parts = []
    if missing:
        parts.append(part("missing", missing))
    if unexpected:
        parts.append(part("unexpected", unexpected))
    if shapes:
        parts.append(part("shape mismatch(es) (file vs network)", shapes))
    return parts


def _expected_shapes(config: NetworkConfig) -> dict[str, torch.Size]:
    """State-dict key -> shape of the network ``config`` describes (built on the meta device: no memory)."""
    with torch.device("meta"):
        net = build_network(config)
    return {k: v.shape for k, v in net.state_dict().items()}


def _write_temp(final: Path, data: bytes) -> Path:
    """Write ``data`` to a fresh, fsynced temp file beside ``final`` (same file system for os.replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def save_model(model: nn.Module, config: NetworkConfig, path: str | os.PathLike, *,
               metadata: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` and ``NAME.json``; returns ``(weights_path, json_path)``.

    ``metadata`` supplies ``preprocessing_version`` (default ``"1"``), ``trained_on``,
    ``metrics``, ``intended_use`` and any further JSON-serialisable keys. The model must fit
    ``config`` (same state-dict keys and shapes), else ValueError.
    """
    metadata = dict(metadata or {})
    clash = [k for k in RESERVED_KEYS if k in metadata]
    if clash:
        raise ValueError(f"metadata may not set {', '.join(clash)} (written by save_model)")
    config.validate()
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    problems = _shape_mismatches(_expected_shapes(config), state)
    if problems:
        raise ValueError(f"model does not fit its config: {'; '.join(problems)}")

    paths = model_paths(path)
    weights = safetensors_save(state, metadata={"format": "pt", "hntumorseg_format": FORMAT})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": config.to_dict(),
        "labels": {str(k): v for k, v in LABELS.items()},
        "preprocessing_version": str(metadata.pop("preprocessing_version", "1")),
        "trained_on": metadata.pop("trained_on", None),
        "metrics": metadata.pop("metrics", {}),
        "intended_use": metadata.pop("intended_use", DEFAULT_INTENDED_USE),
        **metadata,
        "weights_sha256": _sha256(weights),
    }
    text = json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False) + "\n"  # fails before any write

    paths.json.parent.mkdir(parents=True, exist_ok=True)
    weights_existed = paths.weights.exists()
    temps: list[Path] = []
    try:
        # Both files are complete on disk before either final name is touched.
        temps.append(_write_temp(paths.weights, weights))
        temps.append(_write_temp(paths.json, text.encode("utf-8")))
        os.replace(temps[0], paths.weights)
        try:
            os.replace(temps[1], paths.json)
        except BaseException:
            # New weights must not stay beside no JSON (an old JSON beside them fails its sha check).
            if not weights_existed:
                paths.weights.unlink(missing_ok=True)
            raise
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    return paths.weights, paths.json


def read_model_json(path: str | os.PathLike) -> tuple[dict[str, Any], NetworkConfig, ModelPaths]:
    """Parse and check ``NAME.json`` (not the weights): ``(meta, config, paths)``."""
    paths = model_paths(path)
    jname = paths.json.name
    if not paths.json.is_file():
        raise ModelFileError(f"{jname}: model config file not found ({paths.json})")
    try:
        meta = json.loads(paths.json.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{jname}: not valid JSON ({_one_line(e)})") from None
    except OSError as e:
        raise ModelFileError(f"{jname}: cannot read ({_one_line(e.strerror or e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ModelFileError(f"{jname}: not an HNTumorSeg model file (format {found!r}, expected {FORMAT!r})")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{jname}: unsupported format_version {meta.get('format_version')!r} "
                             f"(this version reads {FORMAT_VERSION})")
    for key in ("network", "weights_sha256"):
        if key not in meta:
            raise ModelFileError(f"{jname}: missing key {key!r}")
    sha = meta["weights_sha256"]
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ModelFileError(f"{jname}: weights_sha256 is not a sha256 hex digest")
    config = NetworkConfig.from_dict(meta["network"], source=jname)
    return meta, config, paths


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model file; ``path`` is NAME, NAME.json or NAME.safetensors.

    Raises ModelFileError (one line, naming the file) when either file is missing, the JSON is
    invalid, the weights' sha256 differs from the JSON, the safetensors file is unreadable, or
    the weights do not fit the network the JSON describes.
    """
    meta, config, paths = read_model_json(path)
    wname, jname = paths.weights.name, paths.json.name
    if not paths.weights.is_file():
        raise ModelFileError(f"{wname}: weights file not found ({paths.weights})")
    try:
        data = paths.weights.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{wname}: cannot read ({_one_line(e.strerror or e)})") from None
    if _sha256(data) != meta["weights_sha256"]:
        raise ModelFileError(f"{wname}: weights do not match the sha256 in {jname} — file altered or corrupt")
    try:
        # Parse the very bytes that were hashed (no second read of the file).
        state = safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise ModelFileError(f"{wname}: unreadable safetensors file ({_one_line(e)})") from None
    problems = _shape_mismatches(_expected_shapes(config), state)
    if problems:
        raise ModelFileError(f"{wname}: weights do not fit the network in {jname}: {'; '.join(problems)}")
    bad_dtype = [k for k, v in state.items() if not v.is_floating_point()]
    if bad_dtype:
        raise ModelFileError(f"{wname}: non-floating-point weights ({', '.join(bad_dtype[:_MAX_LISTED])})")

    model = build_network(config)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    return LoadedModel(model=model, config=config, meta=meta, paths=paths)
