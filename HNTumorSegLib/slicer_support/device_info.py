"""What the computer offers to run the network on, said plainly.

Why: "CUDA not available" is the most common complaint about deep-learning modules; often torch
is a CPU-only build, or a CUDA build that sees no GPU because the driver is missing or too old.
:func:`probe_devices` runs inside the worker process (the Slicer GUI never imports torch for
this) and :func:`device_summary` turns its answer into one sentence naming the GPU and its memory,
or the reason there is none.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

#: Device values the worker accepts (see :func:`HNTumorSegLib.pipeline.inference.resolve_device`).
DEVICE_VALUES = ("auto", "cuda", "cpu")


def probe_devices() -> dict[str, Any]:
    """torch's view of the GPUs (JSON-ready). Imports torch: call it in the worker."""
    import torch

    gpus = []
    available = bool(torch.cuda.is_available())
    if available:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)})
    return {"torch": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": available,
            "gpus": gpus, "cpu_threads": os.cpu_count() or 1}


def device_summary(probe: dict[str, Any]) -> str:
    """One sentence: the GPU found and its memory, or why there is none."""
    torch_version = probe.get("torch", "?")
    gpus = probe.get("gpus") or []
    if probe.get("cuda_available") and gpus:
        first = gpus[0]
        more = f" (+{len(gpus) - 1} more)" if len(gpus) > 1 else ""
        return (f"GPU: {first['name']}, {first['memory_gib']:.1f} GiB{more} "
                f"(torch {torch_version}, CUDA {probe.get('cuda_build')})")
    if not probe.get("cuda_build"):
        return (f"No GPU: torch {torch_version} is a CPU-only build; the network runs on the CPU "
                f"({probe.get('cpu_threads', '?')} threads). Reinstall torch with the PyTorch extension "
                "to use an NVIDIA GPU.")
    return (f"No GPU: torch {torch_version} is built for CUDA {probe['cuda_build']} but sees no GPU "
            "(no NVIDIA GPU, or its driver is missing or too old); the network runs on the CPU.")


@dataclass(frozen=True)
class DeviceChoice:
    value: str
    label: str
    enabled: bool
    tooltip: str


def device_choices(probe: dict[str, Any] | None) -> list[DeviceChoice]:
    """The device selector's items; GPU is disabled, with the reason, when torch sees none."""
    if probe is None:
        unknown = "Checking which devices torch sees ..."
        return [DeviceChoice("auto", "Auto", True, "GPU when torch sees one, otherwise the CPU"),
                DeviceChoice("cuda", "GPU (CUDA)", True, unknown),
                DeviceChoice("cpu", "CPU", True, "Always works; slower (minutes per case)")]
    has_gpu = bool(probe.get("cuda_available") and probe.get("gpus"))
    summary = device_summary(probe)
    auto_label = f"Auto ({probe['gpus'][0]['name']})" if has_gpu else "Auto (CPU)"
    return [DeviceChoice("auto", auto_label, True, summary),
            DeviceChoice("cuda", "GPU (CUDA)", has_gpu, summary),
            DeviceChoice("cpu", "CPU", True, f"Always works; slower. {probe.get('cpu_threads', '?')} CPU threads.")]
