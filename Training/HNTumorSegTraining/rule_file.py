"""A component clean-up chosen for a set of networks, kept in a file of its own.

Why a file of its own: the rule ``postprocess`` chooses for one run lives in that run's weights
JSON, where ``evaluate`` and ``export`` find it. An ensemble's rule belongs to no single run: it is
chosen on the members' *averaged* probabilities, which none of them produces alone, and writing it
into a member would replace the rule chosen for that member. ``postprocess --run A --run B --out
FILE`` writes it here; ``export --run A --run B --postprocess-rule FILE`` carries it into the model
file after checking that the file names exactly the networks being exported (by the SHA-256 of
their tensors), so a rule chosen for other weights, or for an earlier epoch, is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import write_json
from HNTumorSegLib.pipeline.postprocess import ComponentFilter

FORMAT = "hntumorseg-postprocess-rule"
FORMAT_VERSION = 1


def write_rule_file(path: str | Path, entry: Mapping[str, Any], members: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``entry`` (``{"rules": ..., "chosen_on": ...}``) for the networks ``members`` (each with
    ``run``, ``weights`` and ``tensors_sha256``), atomically."""
    return write_json({"format": FORMAT, "format_version": FORMAT_VERSION, "members": [dict(m) for m in members],
                       **entry}, path)


def read_rule_file(path: str | Path, digests: Sequence[str]) -> dict[str, Any]:
    """The clean-up entry (``rules``, ``chosen_on``, ``members``) of a rule file written for exactly
    the networks whose tensors have ``digests`` (in any order: averaging does not depend on it).

    InputError in one line naming the file when it is missing, not a rule file, damaged, or chosen
    for other networks.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such clean-up rule file (written by hntumorseg-train postprocess --out)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable clean-up rule file ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(f"{path}: not a clean-up rule file (format {FORMAT!r} expected)")
    if data.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{path}: clean-up rule file version {data.get('format_version')!r}, "
                         f"this software reads version {FORMAT_VERSION}")
    try:
        chosen = ComponentFilter.from_meta({"postprocess": data}, str(path))
        members = [dict(m) for m in data["members"]]
        found = sorted(str(m["tensors_sha256"]) for m in members)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise InputError(f"{path}: damaged clean-up rule file (members: {exc!r})") from None
    if chosen is None or not chosen.rules:
        raise InputError(f"{path}: the clean-up rule file holds no rules")
    if found != sorted(digests):
        chosen_for = ", ".join(f"{m.get('run')} ({m.get('weights')})" for m in members)
        raise InputError(f"{path}: the clean-up was chosen for other weights ({chosen_for}); choose it again with "
                         "hntumorseg-train postprocess for the runs and weights being exported")
    return {**chosen.to_dict(), "chosen_on": data.get("chosen_on"), "members": members}
