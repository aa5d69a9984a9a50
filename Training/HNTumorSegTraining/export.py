"""Export a run's weights as the model file that ``hntumorseg`` and the Slicer module load.

Why a separate step: a run folder holds what training needs (checkpoint, logs, best and last
weights); a shipped model must carry what a *user* needs to judge it: what it was trained on,
how it scored on held-out cases through the real inference path (``evaluate``), and what it is
for. So export fills the model JSON's ``trained_on``, ``metrics``, ``training`` and
``intended_use`` and refuses, unless told otherwise, to ship a model that was never evaluated.

Data trained on synthetic phantoms is recognised by the ``cohort.json`` that
``hntumorseg-train phantoms`` writes into the data root; such models are labelled as being for
trying the software only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.model_file import DEFAULT_INTENDED_USE, save_model

from .evaluate import read_summary, run_settings, run_window, split_case_ids, weights_of
from .fit import WEIGHTS_SETTINGS
from .models import config_of
from .phantom_cohort import read_cohort
from .weights import load_weights

PHANTOM_INTENDED_USE = (
    "Trained on synthetic PET/CT phantoms only, for trying the software. Not for clinical use and not a "
    "medical device; clinical models come from hntumorseg-train on real, consented data.")


#: A whole string that is an absolute path: POSIX ``/a/b``, Windows ``C:\\a`` or ``C:/a``, UNC ``\\\\host\\share``.
_ABSOLUTE_PATH = re.compile(r"^(/[^/\0]+|[A-Za-z]:[\\/]|\\\\[^\\]+\\)")


def is_absolute_path(text: str) -> bool:
    return bool(_ABSOLUTE_PATH.match(text)) and "\n" not in text


def portable(record: Any) -> Any:
    """``record`` with every absolute path replaced by its last component (the file or folder name).

    Why: a model file travels to other machines; the training machine's folders (``/home/me/data``)
    mean nothing there and are not the reader's business. The names still say which data and which
    weights were used; the hashes and counts beside them say it exactly.
    """
    if isinstance(record, dict):
        return {key: portable(value) for key, value in record.items()}
    if isinstance(record, list):
        return [portable(value) for value in record]
    if isinstance(record, str) and is_absolute_path(record):
        path = PureWindowsPath(record) if re.match(r"^([A-Za-z]:|\\\\)", record) else PurePosixPath(record)
        return path.name or str(path)
    return record


def absolute_paths_in(record, where: str = "") -> list[str]:
    """JSON locations whose string value is an absolute path."""
    if isinstance(record, dict):
        return [hit for k, v in record.items() for hit in absolute_paths_in(v, f"{where}/{k}")]
    if isinstance(record, list):
        return [hit for i, v in enumerate(record) for hit in absolute_paths_in(v, f"{where}[{i}]")]
    return [f"{where}: {record}"] if isinstance(record, str) and is_absolute_path(record) else []



def _evaluation_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The exported subset of an evaluation summary: the set and per-centre figures and their rules."""
    return {"split": summary["split"], "data_root": summary["data_root"], "path": summary["path"],
            "tta": summary["tta"], "postprocess": summary.get("postprocess"), "overall": summary["overall"],
            "per_centre": summary["per_centre"], "empty_mask_rules": summary["empty_mask_rules"]}


def data_description(cache: Path, description: str | None = None) -> dict[str, Any]:
    """What the run was trained on: the data root, whether it is synthetic, centres and case counts."""
    _, split = split_case_ids(cache, "val")
    root = Path(split["data_root"])
    cohort = read_cohort(root)
    synthetic = bool(cohort and cohort.get("synthetic"))
    if description is None:
        description = (f"synthetic PET/CT phantoms ({cohort.get('generator')}, seed {cohort.get('seed')})"
                       if synthetic else f"cases under {root.name} (HECKTOR 2025 Task 1 layout)")
    return {"description": description, "synthetic": synthetic, "data_root": str(root),
            "cohort": cohort, "centres": split.get("centres"), "train_cases": len(split["train"]),
            "val_cases": len(split["val"]), "split_rule": split.get("rule"),
            "preprocessing_version": split.get("preprocessing_version")}


def export(run: str | Path, out: str | Path, *, which: str = "best", split: str = "val",
           require_evaluation: bool = True, description: str | None = None,
           intended_use: str | None = None, name: str | None = None) -> tuple[Path, Path]:
    """Write ``out.safetensors`` and ``out.json`` from ``run``'s ``which`` weights; returns both paths."""
    run = Path(run)
    info = run_settings(run)
    weights = weights_of(run, which)
    model, meta = load_weights(weights)
    spec = meta["model_spec"]
    config = config_of(spec)
    if config is None:
        raise InputError(f"{run}: a {spec['name']} network cannot be exported as an HNTumorSeg model file "
                         "(HNTumorSegLib builds psam and unet networks only)")
    postprocess = meta.get("postprocess")
    try:
        summary = read_summary(run, split, which)
        metrics = _evaluation_metrics(summary)
    except InputError:
        if require_evaluation:
            raise
        metrics = {"note": "not evaluated with hntumorseg-train evaluate; window validation from training only",
                   **meta.get("metrics", {})}
    else:
        rules = postprocess and {"rules": postprocess["rules"]}
        if summary.get("postprocess") != rules:
            raise InputError(f"{run}: the {split} evaluation of the {which} weights was made with clean-up "
                             f"{summary.get('postprocess')}, the weights now prescribe {rules}; "
                             "run hntumorseg-train evaluate again")
    trained_on = data_description(Path(info["cache"]), description)
    if intended_use is None:
        intended_use = PHANTOM_INTENDED_USE if trained_on["synthetic"] else DEFAULT_INTENDED_USE
    window = run_window(info)
    metadata = {
        "name": name or Path(out).name,
        **({"inference": meta.get("inference") or window.to_dict()} if (meta.get("inference") or window) else {}),
        **({"postprocess": postprocess} if postprocess else {}),
        "preprocessing_version": meta["preprocessing_version"],
        "trained_on": trained_on,
        "metrics": metrics,
        "intended_use": intended_use,
        "training": {**meta.get("training", {}),
                     **{k: info["settings"][k] for k in WEIGHTS_SETTINGS if k in info.get("settings", {})},
                     "selected": meta.get("selected"), "run": run.name,
                     "device": info.get("device"), "torch_version": info.get("torch_version")},
        "model_spec": spec,
    }
    metadata = portable(metadata)
    json.dumps(metadata, allow_nan=False)  # fail before writing anything
    return save_model(model, config, out, metadata=metadata)

