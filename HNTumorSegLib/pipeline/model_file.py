"""Model files: ``NAME.safetensors`` (weights) + ``NAME.json`` (network config and provenance).

Weights are stored with safetensors only -- never pickle, never ``torch.load`` -- so opening a
model file cannot run code. The JSON records the network config the weights belong to, the label
map, the preprocessing version, training provenance and the sha256 of the weights file; loading
checks all of it and turns every problem into a one-line
:class:`~HNTumorSegLib.errors.ModelFileError` naming the file. Saving is atomic per file (temp
file in the same directory, then ``os.replace``), so an error never leaves a half-written file.

Two layouts share the format name:

* ``format_version`` 1, one network (:func:`save_model`): ``"network"`` (its config), optional
  ``"inference"`` (sliding window), the state dict's keys as they are.
* ``format_version`` 2, an ensemble (:func:`save_ensemble`): ``"members"``, a list of
  ``{"name", "network", "inference", "tensor_prefix", "tensors_sha256", "source"}``; member ``i``'s
  tensors are stored under ``members.i.`` in the one safetensors file. Inference averages the
  members' softmax probabilities (:class:`~HNTumorSegLib.pipeline.inference.Segmenter`). Why one file and
  not one per member: one hash covers the whole model, a copy cannot lose a member, and the JSON
  says which networks it holds. ``tensors_sha256`` (:func:`tensors_sha256`: names, dtypes, shapes
  and bytes, independent of the file layout) identifies a member's weights wherever they are
  stored, so an evaluation can be matched to the networks a file holds.

Both keep ``"weights_sha256"`` (of the whole safetensors file), ``"labels"``,
``"preprocessing_version"``, ``"postprocess"`` (applied once, after averaging) and the provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from torch import nn

from HNTumorSegLib import LABELS
from HNTumorSegLib.errors import ModelFileError
from HNTumorSegLib.imaging.image_io import new_temporary_file
from HNTumorSegLib.pipeline.model_info import ENSEMBLE_FORMAT_VERSION
from HNTumorSegLib.network import NetworkConfig, build_network

FORMAT = "hntumorseg-model"
#: One network.
FORMAT_VERSION = 1
#: ENSEMBLE_FORMAT_VERSION (from model_info, which reads model JSON without torch): several networks in one
#: file, their probabilities averaged.
SUPPORTED_FORMAT_VERSIONS = (FORMAT_VERSION, ENSEMBLE_FORMAT_VERSION)
WEIGHTS_SUFFIX = ".safetensors"
JSON_SUFFIX = ".json"
#: Keys that save_model writes itself; metadata may not override them.
RESERVED_KEYS = ("format", "format_version", "network", "labels", "weights_sha256")
#: Keys that save_ensemble writes itself, or that belong to the members ("network", "inference").
ENSEMBLE_RESERVED_KEYS = RESERVED_KEYS + ("members", "inference")
DEFAULT_INTENDED_USE = "Research use only; not a medical device and not for clinical decisions."
_MAX_LISTED = 3
#: Most feature channels a level of a network read from a model file may have (the paper's network has
#: 16 to 256). A JSON asking for more is refused before anything is built: it describes no network this
#: package trains, and one level of a million channels would need terabytes.
MAX_CHANNELS = 1024


@dataclass(frozen=True)
class ModelPaths:
    json: Path
    weights: Path


def member_prefix(index: int) -> str:
    """Where member ``index``'s tensors live in an ensemble's safetensors file."""
    return f"members.{index}."


@dataclass
class LoadedMember:
    """One network of a model file, verified and built."""

    name: str
    model: nn.Module  # in eval mode, on the requested device
    config: NetworkConfig
    inference: dict[str, Any] | None  # its "inference" entry: sliding window, or None for one pass
    tensors_sha256: str  # see tensors_sha256()


@dataclass
class LoadedModel:
    """A loaded model file: one member (format_version 1) or several (an ensemble)."""

    members: list[LoadedMember]
    meta: dict[str, Any]  # the whole JSON
    paths: ModelPaths

    @property
    def is_ensemble(self) -> bool:
        return self.meta.get("format_version") == ENSEMBLE_FORMAT_VERSION

    def _single(self) -> LoadedMember:
        if len(self.members) != 1 or self.is_ensemble:
            raise ModelFileError(f"{self.paths.json.name}: an ensemble of {len(self.members)} networks, not one "
                                 "network (segment with it, or use the runs its members came from)")
        return self.members[0]

    @property
    def model(self) -> nn.Module:
        """The network of a single-network file (ModelFileError for an ensemble)."""
        return self._single().model

    @property
    def config(self) -> NetworkConfig:
        """The network config of a single-network file (ModelFileError for an ensemble)."""
        return self._single().config


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


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's contents: every key (sorted), dtype, shape and the raw bytes.

    Why not the file's hash: the same network stored on its own or as member 3 of an ensemble
    (keys under a prefix, another safetensors header) has different file bytes; this digest is the
    same wherever it is stored, so it identifies *which weights* an evaluation was made with.
    """
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(json.dumps([key, str(t.dtype).replace("torch.", ""), list(t.shape)]).encode("utf-8") + b"\n")
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


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


def _write_temp(final: Path, data: bytes, temps: list[Path]) -> Path:
    """Write ``data`` to a fresh, fsynced temp file beside ``final`` (same file system for os.replace).

    Its name goes on ``temps`` before the file is created (image_io.new_temporary_file), so the caller's clean-up
    removes it whenever it was interrupted: a Ctrl-C as the file was created, or between this function's return
    and the caller's noting of the name, left a hidden file beside the model."""
    with os.fdopen(new_temporary_file(final.parent, f".{final.name}.", ".tmp", temps), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return temps[-1]


def _write_pair(paths: ModelPaths, weights: bytes, text: str) -> None:
    """Write the weights, then the JSON, each atomically; both complete on disk before either final name."""
    paths.json.parent.mkdir(parents=True, exist_ok=True)
    weights_existed = paths.weights.exists()
    temps: list[Path] = []
    try:
        _write_temp(paths.weights, weights, temps)
        _write_temp(paths.json, text.encode("utf-8"), temps)
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


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: two members may be the very same module (safetensors refuses tensors sharing memory)
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}


def _common_meta(metadata: dict[str, Any]) -> dict[str, Any]:
    """The provenance keys both layouts write in this order (popped from ``metadata``)."""
    return {"labels": {str(k): v for k, v in LABELS.items()},
            "preprocessing_version": str(metadata.pop("preprocessing_version", "1")),
            "trained_on": metadata.pop("trained_on", None),
            "metrics": metadata.pop("metrics", {}),
            "intended_use": metadata.pop("intended_use", DEFAULT_INTENDED_USE)}


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
    common = _common_meta(metadata)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": config.to_dict(),
        **common,
        **metadata,
        "weights_sha256": _sha256(weights),
    }
    text = json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False) + "\n"  # fails before any write
    _write_pair(paths, weights, text)
    return paths.weights, paths.json


@dataclass
class EnsembleMember:
    """One network to write into an ensemble: the module, its config, a name, how it is run, provenance."""

    model: nn.Module
    config: NetworkConfig
    name: str
    inference: Mapping[str, Any] | None = None  # {"patch_size": [Z, Y, X], "overlap": f}; None: one pass
    source: Mapping[str, Any] = field(default_factory=dict)  # where it came from (run, training, metrics)


def save_ensemble(members: Sequence[EnsembleMember], path: str | os.PathLike, *,
                  metadata: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write an ensemble model file (``format_version`` 2); returns ``(weights_path, json_path)``.

    Member ``i``'s tensors go under ``members.i.`` in one safetensors file; the JSON lists the
    members (name, network config, inference window, tensor prefix, :func:`tensors_sha256`, source).
    ``metadata`` as for :func:`save_model`; ``"postprocess"`` there applies once, to the average.
    ValueError when a member does not fit its config, names repeat, the members' input or output
    channels differ (their probabilities could not be averaged), or an inference entry is invalid.
    """
    from HNTumorSegLib.pipeline.sliding_window import InferenceWindow  # torch only; kept local like the network import

    metadata = dict(metadata or {})
    clash = [k for k in ENSEMBLE_RESERVED_KEYS if k in metadata]
    if clash:
        raise ValueError(f"metadata may not set {', '.join(clash)} (written by save_ensemble, or per member)")
    members = list(members)
    if not members:
        raise ValueError("an ensemble needs at least one member")
    names = [m.name for m in members]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"member names must be distinct, non-empty strings, got {names}")
    io_channels = {(m.config.in_channels, m.config.out_channels) for m in members}
    if len(io_channels) != 1:
        raise ValueError(f"members differ in input/output channels {sorted(io_channels)}; "
                         "their probabilities cannot be averaged")
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for i, m in enumerate(members):
        m.config.validate()
        state = _cpu_state(m.model)
        problems = _shape_mismatches(_expected_shapes(m.config), state)
        if problems:
            raise ValueError(f"member {i} ({m.name}) does not fit its config: {'; '.join(problems)}")
        window = InferenceWindow.from_entry(dict(m.inference) if m.inference is not None else None,
                                            f"member {i} ({m.name})")
        tensors.update({member_prefix(i) + k: v for k, v in state.items()})
        entries.append({"name": m.name, "network": m.config.to_dict(),
                        "inference": window.to_dict() if window else None,
                        "tensor_prefix": member_prefix(i), "tensors_sha256": tensors_sha256(state),
                        "source": dict(m.source)})
    paths = model_paths(path)
    weights = safetensors_save(tensors, metadata={"format": "pt", "hntumorseg_format": FORMAT,
                                                  "members": str(len(members))})
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": ENSEMBLE_FORMAT_VERSION,
        **_common_meta(metadata),
        "members": entries,
        **metadata,
        "weights_sha256": _sha256(weights),
    }
    text = json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False) + "\n"  # fails before any write
    _write_pair(paths, weights, text)
    return paths.weights, paths.json


@dataclass(frozen=True)
class MemberEntry:
    """A member as the JSON describes it (checked, not yet loaded)."""

    index: int
    name: str
    config: NetworkConfig
    inference: dict[str, Any] | None
    prefix: str  # "" for a single-network file
    tensors_sha256: str | None  # None for a single-network file (computed on load)

    def label(self) -> str:
        return f"member {self.index} ({self.name})"


def _read_meta(paths: ModelPaths) -> dict[str, Any]:
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
    version = meta.get("format_version")
    if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelFileError(f"{jname}: unsupported format_version {version!r} "
                             f"(this version reads {', '.join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)})")
    expected = {str(k): v for k, v in LABELS.items()}
    if meta.get("labels") != expected:  # a network whose outputs mean other things would swap GTVp and GTVn
        raise ModelFileError(f"{jname}: 'labels' is {meta.get('labels')!r}; this version segments "
                             f"{', '.join(f'{k} = {v}' for k, v in expected.items())} and reads no other output order")
    return meta


def _size_problem(config: NetworkConfig, inference: Any, where: str) -> str | None:
    """What makes a network (or its sliding window) too large or unrunnable, or None; checked before anything
    is built. Channels within 1..:data:`MAX_CHANNELS` (levels are bounded by the config itself); a patch within
    the analysis window and divisible by the network's size multiple (it is down-sampled levels - 1 times)."""
    from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
    from HNTumorSegLib.pipeline.sliding_window import InferenceWindow

    for name in ("channels", "psam_channels"):
        values = getattr(config, name)
        if any(c > MAX_CHANNELS for c in values):
            return (f"{where}invalid network config: {name} {list(values)} exceed {MAX_CHANNELS} channels a level "
                    "(an edited or damaged JSON?)")
    for name in ("in_channels", "out_channels"):
        if getattr(config, name) > MAX_CHANNELS:
            return f"{where}invalid network config: {name} {getattr(config, name)} exceeds {MAX_CHANNELS}"
    try:
        window = InferenceWindow.from_entry(inference, where.rstrip(": ") or "model")
    except ValueError as exc:
        return str(exc)
    if window is None:
        return None
    patch, multiple = tuple(int(p) for p in window.patch_size), config.size_multiple
    if any(p > w for p, w in zip(patch, WINDOW_ZYX)):
        return (f"{where}inference patch_size {list(patch)} exceeds the {' x '.join(map(str, WINDOW_ZYX))} analysis "
                "window the network sees (an edited or damaged JSON?)")
    if any(p % multiple for p in patch):
        return (f"{where}inference patch_size {list(patch)} is not divisible by {multiple}, as the "
                f"{config.levels}-level network needs")
    return None


def _member_entries(meta: dict[str, Any], jname: str) -> list[MemberEntry]:
    """The members the JSON describes; ModelFileError for anything malformed."""
    if meta["format_version"] == FORMAT_VERSION:
        if "network" not in meta:
            raise ModelFileError(f"{jname}: missing key 'network'")
        config = NetworkConfig.from_dict(meta["network"], source=jname)
        problem = _size_problem(config, meta.get("inference"), f"{jname}: ")
        if problem:
            raise ModelFileError(problem)
        return [MemberEntry(0, str(meta.get("name") or model_paths(jname).json.stem), config,
                            meta.get("inference"), "", None)]
    for key in ("network", "inference"):
        if key in meta:
            raise ModelFileError(f"{jname}: an ensemble file (format_version {ENSEMBLE_FORMAT_VERSION}) has no "
                                 f"top-level {key!r}: each member has its own")
    members = meta.get("members")
    if not isinstance(members, list) or not members:
        raise ModelFileError(f"{jname}: 'members' must be a non-empty list of networks")
    out: list[MemberEntry] = []
    for i, m in enumerate(members):
        where = f"{jname}: member {i}"
        if not isinstance(m, dict):
            raise ModelFileError(f"{where} is not an object")
        for key in ("name", "network", "tensor_prefix", "tensors_sha256"):
            if key not in m:
                raise ModelFileError(f"{where}: missing key {key!r}")
        if not isinstance(m["name"], str) or not m["name"]:
            raise ModelFileError(f"{where}: 'name' must be a non-empty string")
        if m["tensor_prefix"] != member_prefix(i):
            raise ModelFileError(f"{where}: tensor_prefix {m['tensor_prefix']!r}, expected {member_prefix(i)!r}")
        if not _is_sha256(m["tensors_sha256"]):
            raise ModelFileError(f"{where}: tensors_sha256 is not a sha256 hex digest")
        config = NetworkConfig.from_dict(m["network"], source=f"{jname} member {i}")
        problem = _size_problem(config, m.get("inference"), f"{jname} member {i}: ")
        if problem:
            raise ModelFileError(problem)
        out.append(MemberEntry(i, m["name"], config, m.get("inference"), member_prefix(i), m["tensors_sha256"]))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ModelFileError(f"{jname}: member names repeat ({', '.join(names)})")
    io_channels = {(e.config.in_channels, e.config.out_channels) for e in out}
    if len(io_channels) != 1:
        raise ModelFileError(f"{jname}: members differ in input/output channels {sorted(io_channels)}; "
                             "their probabilities cannot be averaged")
    return out


def read_model_json(path: str | os.PathLike) -> tuple[dict[str, Any], NetworkConfig, ModelPaths]:
    """Parse and check ``NAME.json`` (not the weights): ``(meta, config, paths)``.

    ``config`` is the network of a single-network file, or the first member's of an ensemble
    (see :func:`read_members` for all of them).
    """
    meta, entries, paths = read_members(path)
    return meta, entries[0].config, paths


def read_members(path: str | os.PathLike) -> tuple[dict[str, Any], list[MemberEntry], ModelPaths]:
    """Parse and check ``NAME.json`` (not the weights): ``(meta, members, paths)``; one member for format 1."""
    paths = model_paths(path)
    jname = paths.json.name
    meta = _read_meta(paths)
    if "weights_sha256" not in meta:
        raise ModelFileError(f"{jname}: missing key 'weights_sha256'")
    entries = _member_entries(meta, jname)
    if not _is_sha256(meta["weights_sha256"]):
        raise ModelFileError(f"{jname}: weights_sha256 is not a sha256 hex digest")
    return meta, entries, paths


def _split_members(state: Mapping[str, torch.Tensor], entries: Sequence[MemberEntry]) -> tuple[list[dict], list[str]]:
    """Tensors per member (prefix removed) and the keys that belong to no member."""
    if len(entries) == 1 and entries[0].prefix == "":
        return [dict(state)], []
    parts: list[dict[str, torch.Tensor]] = [{} for _ in entries]
    stray = []
    for key, value in state.items():
        for i, e in enumerate(entries):
            if key.startswith(e.prefix):
                parts[i][key[len(e.prefix):]] = value
                break
        else:
            stray.append(key)
    return parts, sorted(stray)


def _altered_members(data: bytes, entries: Sequence[MemberEntry]) -> list[str]:
    """After a file-hash mismatch: the members whose tensors no longer match their digest (best effort)."""
    if all(e.tensors_sha256 is None for e in entries):
        return []
    try:
        parts, _ = _split_members(safetensors_load(data), entries)
    except (SafetensorError, ValueError, RuntimeError, OSError):
        return []
    return [e.label() for e, part in zip(entries, parts)
            if e.tensors_sha256 is not None and tensors_sha256(part) != e.tensors_sha256]


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and verify a model file (one network or an ensemble); ``path`` is NAME, NAME.json or NAME.safetensors.

    Raises ModelFileError (one line, naming the file and, in an ensemble, the member) when either
    file is missing, the JSON is invalid, the weights' sha256 differs from the JSON, the
    safetensors file is unreadable, a member's tensors differ from its ``tensors_sha256``, or the
    weights do not fit the networks the JSON describes.
    """
    meta, entries, paths = read_members(path)
    wname, jname = paths.weights.name, paths.json.name
    if not paths.weights.is_file():
        raise ModelFileError(f"{wname}: weights file not found ({paths.weights})")
    try:
        data = paths.weights.read_bytes()
    except OSError as e:
        raise ModelFileError(f"{wname}: cannot read ({_one_line(e.strerror or e)})") from None
    if _sha256(data) != meta["weights_sha256"]:
        altered = _altered_members(data, entries)
        which = f" ({', '.join(altered)} altered)" if altered else ""
        raise ModelFileError(f"{wname}: weights do not match the sha256 in {jname}{which} — file altered or corrupt")
    try:
        # Parse the very bytes that were hashed (no second read of the file).
        state = safetensors_load(data)
    except (SafetensorError, ValueError, RuntimeError, OSError) as e:
        raise ModelFileError(f"{wname}: unreadable safetensors file ({_one_line(e)})") from None
    parts, stray = _split_members(state, entries)
    if stray:
        more = f", … (+{len(stray) - _MAX_LISTED})" if len(stray) > _MAX_LISTED else ""
        raise ModelFileError(f"{wname}: {len(stray)} tensor(s) belong to no member of {jname}: "
                             f"{', '.join(stray[:_MAX_LISTED])}{more}")
    members = []
    for entry, part in zip(entries, parts):
        who = f"{entry.label()}: " if entry.prefix else ""
        problems = _shape_mismatches(_expected_shapes(entry.config), part)
        if problems:
            raise ModelFileError(f"{wname}: {who}weights do not fit the network in {jname}: {'; '.join(problems)}")
        bad_dtype = [k for k, v in part.items() if not v.is_floating_point()]
        if bad_dtype:
            raise ModelFileError(f"{wname}: {who}non-floating-point weights ({', '.join(bad_dtype[:_MAX_LISTED])})")
        digest = tensors_sha256(part)
        if entry.tensors_sha256 is not None and digest != entry.tensors_sha256:
            raise ModelFileError(f"{wname}: {who}tensors do not match its tensors_sha256 in {jname} — "
                                 "file or JSON altered")
        model = build_network(entry.config)
        model.load_state_dict(part, strict=True)
        model.to(device).eval()
        members.append(LoadedMember(entry.name, model, entry.config, entry.inference, digest))
    return LoadedModel(members=members, meta=meta, paths=paths)
