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
    refine_nodes: bool = False  # every node redrawn by the click model (HNTumorSegLib.editing.node_refinement)

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
                                      "ct_name", "pet_name", "refine_nodes"})
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
        refine = data.get("refine_nodes", False)
        if not isinstance(refine, bool):
            raise InputError(f"{source}: 'refine_nodes' must be true or false, got {refine!r}")
        return cls(data["ct"], data["pet"], data["output_dir"], model, device, tta, *names, refine)

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


#: The fields each event type must carry, and their JSON types. Why check them: the front-end indexes and
#: hashes these values (a stage name looks up the progress bar's text, a "done" event's paths are opened);
#: an event of the right name with a field of the wrong type or none at all must not crash the poll that
#: reads it, nor hide the events after it. Event types not listed here pass (a newer worker may add some).
EVENT_FIELDS: dict[str, dict[str, type]] = {
    "started": {"pid": int},
    "stage": {"stage": str},
    "done": {"label": str, "report": str},
    "error": {"message": str, "kind": str},
    "devices": {"torch": str, "cuda_available": bool, "gpus": list},
}
ERROR_KINDS = ("input", "internal")
_TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", list: "a list"}


def _shown(value: Any, limit: int = 60) -> str:
    """A value as JSON, cut to ``limit`` characters: a problem is one line, whatever the worker sent."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def event_problem(event: dict) -> Optional[str]:
    """Why ``event`` (a JSON object with an "event" key) is not a well-formed protocol event; None if it is."""
    kind = event.get("event")
    if not isinstance(kind, str):
        return f"'event' must be a string, got {_shown(kind)}"
    for field, expected in EVENT_FIELDS.get(kind, {}).items():
        if field not in event:
            return f"{kind!r} event lacks {field!r}"
        value = event[field]
        # bool is an int to Python, not to JSON: a pid of true is malformed
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return f"{kind!r} event needs {field!r} as {_TYPE_WORDS[expected]}, got {_shown(value)}"
    if kind == "error" and event["kind"] not in ERROR_KINDS:
        return f"'error' event needs 'kind' as one of {', '.join(ERROR_KINDS)}, got {_shown(event['kind'])}"
    return None


def parse_line(line: str) -> tuple[Optional[dict], Optional[str]]:
    """(event, None) for a well-formed event, (None, why) for a malformed one, (None, None) for other text."""
    line = line.strip()
    if not line.startswith("{"):
        return None, None
    try:
        event = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        return None, None
    if not isinstance(event, dict) or "event" not in event:
        return None, None
    problem = event_problem(event)
    return (None, problem) if problem else (event, None)


def decode(line: str) -> Optional[dict]:
    """The event on a stdout line, or None for a line that is not one of ours or is a malformed event."""
    return parse_line(line)[0]


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
