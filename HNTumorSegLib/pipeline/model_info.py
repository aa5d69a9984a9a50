"""What a model file says about itself, read without torch: for the Slicer module's model line.

Why: the user should see, before running, what the model was trained on and what it is for (the
bundled one is trained on synthetic phantoms and is not for clinical use). The GUI process reads
only the JSON; loading and checking the weights stays in the worker.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def model_json_path(path: str | os.PathLike) -> Path:
    """``NAME``, ``NAME.json`` or ``NAME.safetensors`` -> ``NAME.json`` (as the loader pairs them)."""
    p = Path(path)
    for suffix in (".json", ".safetensors"):
        if p.name.endswith(suffix) and len(p.name) > len(suffix):
            return p.with_name(p.name[: -len(suffix)] + ".json")
    return p.with_name(p.name + ".json")


#: ``format_version`` of an ensemble model file (see HNTumorSegLib.pipeline.model_file, which takes it from here).
ENSEMBLE_FORMAT_VERSION = 2


def describe_network(network: Any) -> str:
    """One network config in a few words: ``PSAM U-Net 8-16-32-64-128``."""
    network = network if isinstance(network, dict) else {}
    kind = "PSAM U-Net" if network.get("psam") else "U-Net"
    channels = network.get("channels")
    return f"{kind} {'-'.join(str(c) for c in channels)}" if channels else kind


def ensemble_members(meta: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The member entries of an ensemble model JSON, or None for a single-network file."""
    members = meta.get("members")
    if meta.get("format_version") != ENSEMBLE_FORMAT_VERSION or not isinstance(members, list):
        return None
    return [m for m in members if isinstance(m, dict)]


def describe_networks(meta: dict[str, Any]) -> str:
    """The network of a model file, or its members: ``ensemble of 3 networks (PSAM U-Net 8-...-128 x3)``."""
    members = ensemble_members(meta)
    if members is None:
        return describe_network(meta.get("network"))
    counts: dict[str, int] = {}
    for m in members:
        name = describe_network(m.get("network"))
        counts[name] = counts.get(name, 0) + 1
    kinds = ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.items())
    return f"ensemble of {len(members)} networks ({kinds})"


def describe_model(meta: dict[str, Any]) -> str:
    """One or two sentences: network (or the ensemble's members), training data, intended use."""
    parts = [describe_networks(meta)]
    trained = meta.get("trained_on")
    if isinstance(trained, dict):
        trained = trained.get("description") or ", ".join(f"{k}: {v}" for k, v in trained.items())
    if trained:
        parts.append(f"trained on {trained}")
    text = "; ".join(parts) + "."
    if meta.get("intended_use"):
        text += f" {meta['intended_use']}"
    return text


def read_model_description(path: str | os.PathLike) -> str:
    """The description of a model file, or one line saying why there is none."""
    json_path = model_json_path(path)
    if not json_path.is_file():
        return f"{json_path.name}: model config file not found ({json_path})"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{json_path.name}: cannot read the model config ({exc})"
    if not isinstance(meta, dict) or meta.get("format") != "hntumorseg-model":
        return f"{json_path.name}: not an HNTumorSeg model file"
    return describe_model(meta)


def trained_on_line(meta: dict[str, Any]) -> str | None:
    """What the model was trained on, in one line: the description and the case counts."""
    trained = meta.get("trained_on")
    if not isinstance(trained, dict):
        return str(trained) if trained else None
    line = str(trained.get("description") or "unspecified data")
    counts = [f"{trained[k]} {k.split('_')[0]}" for k in ("train_cases", "val_cases") if trained.get(k) is not None]
    return f"{line}; {', '.join(counts)} cases" if counts else line


def model_summary(meta: dict[str, Any], json_path: str | os.PathLike) -> dict[str, Any]:
    """What a report records of the model it used: enough to identify it and judge the result.

    Why not the whole JSON: the model file keeps the full training record (settings, case lists,
    metrics per centre); a report needs the name, the file and its hash, what the model was trained
    on in one line, whether that was synthetic, its intended use, and how it was run.
    """
    trained = meta.get("trained_on")
    postprocess = meta.get("postprocess")
    summary = {"name": meta.get("name") or model_json_path(json_path).stem, "file": str(json_path),
               "weights_sha256": meta.get("weights_sha256"),
               "network": describe_networks(meta),
               "trained_on": trained_on_line(meta),
               "synthetic": bool(trained.get("synthetic")) if isinstance(trained, dict) else None,
               "intended_use": meta.get("intended_use"), "inference": meta.get("inference"),
               "postprocess": {"rules": postprocess.get("rules")} if isinstance(postprocess, dict) else None}
    members = ensemble_members(meta)
    if members is not None:  # the members themselves (name, network, window, time) are the report's "members"
        summary["ensemble_members"] = len(members)
    return summary
