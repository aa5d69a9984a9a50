"""The conversation between a front-end and the segmentation worker process.

Why a protocol: the Slicer module runs the pipeline in a separate process (the GUI stays
responsive and Cancel can kill it outright), so the two sides agree here on what goes in and
what comes out:

- in: a JSON request file (:class:`Request`);
- out, on the worker's stdout, one JSON object per line: ``started`` (with the worker's pid),
  ``stage`` (one per pipeline stage, in :data:`STAGES` order), then exactly one of ``done`` (the
  result files, both written atomically, the report last) or ``error`` (one line for the user);
- the exit status: :data:`EXIT_OK`, :data:`EXIT_INPUT` (the user's to fix) or :data:`EXIT_FAILED`.

Anything else a library prints goes to stderr, which front-ends keep for failure reports.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from HNTumorSegLib.errors import InputError

PROTOCOL_VERSION = 1
EXIT_OK, EXIT_FAILED, EXIT_INPUT = 0, 1, 2

#: Pipeline stages in order, with the share of the progress bar reached when each starts and
#: the words a progress bar shows. "preprocess" is where PET and CT are resampled (not resized)
#: onto the 1 x 1 x 3 mm lattice and the analysis window is cropped.
STAGES = ("load_model", "read_inputs", "preprocess", "network", "restore", "statistics", "write")
STAGE_PERCENT = {"load_model": 2, "read_inputs": 6, "preprocess": 12, "network": 30, "restore": 85,
                 "statistics": 92, "write": 96}
STAGE_TEXT = {
    "load_model": "Loading the model",
    "read_inputs": "Reading CT and PET",
    "preprocess": "Resampling PET/CT to 1 x 1 x 3 mm and cropping the analysis window",
    "network": "Running the network",
    "restore": "Restoring the mask onto the CT grid",
    "statistics": "Measuring volumes and SUV",
    "write": "Writing results",
}
#: Result files in the request's output folder.
LABEL_FILE = "label.nrrd"
UNCERTAINTY_FILE = "uncertainty.nrrd"
REPORT_FILE = "result.json"
DEVICES = ("auto", "cuda", "cpu")


@dataclass(frozen=True)
class Request:
    """What to segment and how. Paths are absolute or relative to the worker's working folder."""

    ct: str
    pet: str
    output_dir: str
    model: Optional[str] = None  # None: the bundled model
    device: str = "auto"
    tta: bool = False
    ct_name: Optional[str] = None   # how messages name the inputs (e.g. the Slicer node),
    pet_name: Optional[str] = None  # rather than a temporary file path

    def to_json(self) -> str:
        return json.dumps({"protocol": PROTOCOL_VERSION, **asdict(self)}, indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "request") -> "Request":
        """Check a parsed request; every problem is a one-line InputError naming ``source``."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: a request must be a JSON object, got {type(data).__name__}")
        if data.get("protocol", PROTOCOL_VERSION) != PROTOCOL_VERSION:
            raise InputError(f"{source}: protocol {data.get('protocol')!r}, this worker speaks {PROTOCOL_VERSION}")
        unknown = sorted(set(data) - {"protocol", "ct", "pet", "output_dir", "model", "device", "tta",
                                      "ct_name", "pet_name"})
        if unknown:
            raise InputError(f"{source}: unknown key(s) {', '.join(unknown)}")
        for key in ("ct", "pet", "output_dir"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise InputError(f"{source}: {key!r} must be a non-empty path string")
        model = data.get("model")
        if model is not None and not (isinstance(model, str) and model):
            raise InputError(f"{source}: 'model' must be a path string or null (the bundled model)")
        device = data.get("device", "auto")
        if device not in DEVICES:
            raise InputError(f"{source}: 'device' must be one of {', '.join(DEVICES)}, got {device!r}")
        tta = data.get("tta", False)
        if not isinstance(tta, bool):
            raise InputError(f"{source}: 'tta' must be true or false, got {tta!r}")
        names = [data.get(key) for key in ("ct_name", "pet_name")]
        if any(n is not None and not isinstance(n, str) for n in names):
            raise InputError(f"{source}: 'ct_name' and 'pet_name' must be strings or null")
        return cls(data["ct"], data["pet"], data["output_dir"], model, device, tta, *names)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Request":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(f"{path}: request file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: cannot read the request ({exc})") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}: request is not valid JSON ({exc})") from None
        return cls.from_dict(data, str(path))


def encode(event: dict) -> str:
    """One protocol line (no newline inside: json.dumps escapes them)."""
    return json.dumps(event, default=str)


def decode(line: str) -> Optional[dict]:
    """The event on a stdout line, or None for a line that is not one of ours."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None


def started(pid: int) -> dict:
    return {"event": "started", "pid": pid, "protocol": PROTOCOL_VERSION}


def stage(name: str) -> dict:
    return {"event": "stage", "stage": name}


def done(label: str, report: str) -> dict:
    return {"event": "done", "label": label, "report": report}


def error(message: str, kind: str) -> dict:
    """``kind``: "input" (the user's to fix) or "internal" (a bug or the machine)."""
    lines = str(message).splitlines()
    return {"event": "error", "kind": kind, "message": lines[0] if lines else kind}


def progress(stage_name: str) -> tuple[int, str]:
    """(percent, words) for a progress bar when ``stage_name`` starts."""
    return STAGE_PERCENT.get(stage_name, 0), STAGE_TEXT.get(stage_name, stage_name)
