"""Export a run's weights as the model file that ``hntumorseg`` and the Slicer module load.

Why a separate step: a run folder holds what training needs (checkpoint, logs, best and last
weights); a shipped model must carry what a *user* needs to judge it: what it was trained on,
how it scored on held-out cases through the real inference path (``evaluate``), and what it is
for. So export fills the model JSON's ``trained_on``, ``metrics``, ``training`` and
``intended_use`` and refuses, unless told otherwise, to ship a model that was never evaluated.

Data trained on synthetic phantoms is recognised by the ``cohort.json`` that
``hntumorseg-train phantoms`` writes into the data root; such models are labelled as being for
trying the software only.

Several evaluations (``evaluations={"heldout": DIR1, "unseen_style": DIR2}``, the CLI's repeatable
``--evaluation NAME=DIR``) go into ``metrics.evaluations.NAME``: e.g. the held-out cases of the
acquisition styles trained on and a style left out of training. Each must have scored exactly the
weights being exported (matched by :func:`HNTumorSegLib.pipeline.model_file.tensors_sha256`), with the
clean-up being exported, and none of the runs' training cases.

Several runs make an ensemble (:func:`HNTumorSegLib.pipeline.model_file.save_ensemble`): one file holding
every run's network, whose probabilities inference averages. The runs must share labels and
preprocessing version; their networks may differ, but each must be one HNTumorSegLib builds
(psam, unet). An ensemble is evaluated as a whole: export it ``unevaluated``, evaluate the file
(``evaluate --model OUT.json --data FOLDER --out DIR``), then export again with the evaluations.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping, Sequence

from HNTumorSegLib.cli.output_paths import refuse_clashes
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.pipeline.model_file import (DEFAULT_INTENDED_USE, EnsembleMember, model_paths, save_ensemble,
                                               save_model, tensors_sha256)
from HNTumorSegLib.pipeline.postprocess import ComponentFilter
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION

from .evaluate import (SUMMARY_FILE, evaluation_dir, read_evaluation, read_summary, run_settings, run_window,
                       split_case_ids, training_case_ids, weights_of)
from .fit import WEIGHTS_SETTINGS
from .models import config_of
from .phantom_cohort import read_cohort
from .rule_file import read_rule_file
from .weights import load_weights

PHANTOM_INTENDED_USE = (
    "Trained on synthetic PET/CT phantoms only, for trying the software. Not for clinical use and not a "
    "medical device; clinical models come from hntumorseg-train on real, consented data.")


#: A whole string that is an absolute path: POSIX ``/a/b``, Windows ``C:\\a`` or ``C:/a``, UNC ``\\\\host\\share``.
_ABSOLUTE_PATH = re.compile(r"^(/[^/\0]+|[A-Za-z]:[\\/]|\\\\[^\\]+\\)")


#: How a model file is evaluated when no run's own evaluation fits it (an ensemble, a rule file's clean-up).
EVALUATE_THE_FILE = ("export it with --unevaluated, run hntumorseg-train evaluate --model OUT.json --data FOLDER "
                     "--out DIR, then export again with --evaluation NAME=DIR")


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
    out = {"split": summary["split"], "data_root": summary["data_root"], "path": summary["path"],
           "tta": summary["tta"], "postprocess": summary.get("postprocess"), "overall": summary["overall"],
           "per_centre": summary["per_centre"], "empty_mask_rules": summary["empty_mask_rules"]}
    if summary.get("confusion_rule"):
        out["confusion_rule"] = summary["confusion_rule"]
    return out


def _named_evaluation(summary: Mapping[str, Any]) -> dict[str, Any]:
    """One entry of ``metrics.evaluations``: the figures, which cases, and how the model was run."""
    return {**_evaluation_metrics(summary), "cases_from": summary.get("cases_from"),
            "cases": summary["overall"]["cases"], "limited_to_first": summary.get("limited_to_first"),
            "not_scored": len(summary.get("not_scored") or []), "seconds_per_case": summary.get("seconds_per_case"),
            "device": summary.get("device")}


def parse_evaluations(items: Sequence[str]) -> dict[str, Path]:
    """``NAME=DIR`` strings (the CLI's ``--evaluation``) -> {NAME: DIR}; InputError for a malformed or repeated NAME."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, folder = item.partition("=")
        name = name.strip()
        if not sep or not folder or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise InputError(f"--evaluation {item!r}: expected NAME=DIR, NAME of letters, digits, '_', '-', '.'")
        if name in out:
            raise InputError(f"--evaluation {name}: given twice")
        out[name] = Path(folder)
    return out


def same_clean_up(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Whether two ``{"rules": ...}`` entries prescribe the same clean-up: as rules, not as text, so that
    an entry written before a rule field existed equals the same rules written with its default."""
    def read(entry: Mapping[str, Any] | None) -> ComponentFilter | None:
        return ComponentFilter.from_meta({"postprocess": entry}) if entry else None
    try:
        return read(a) == read(b)
    except ValueError:
        return False


def check_evaluation(name: str, folder: Path, summary: Mapping[str, Any], digests: Sequence[str],
                     rules: Mapping[str, Any] | None, training_ids: Mapping[str, Sequence[str] | None]) -> None:
    """InputError unless ``summary`` scored exactly the networks ``digests``, with clean-up ``rules``,
    on none of the training cases ``training_ids`` (run name -> its training case ids)."""
    label = f"evaluation {name} ({folder})"
    members = summary.get("members") or []
    found = [m.get("tensors_sha256") for m in members if isinstance(m, Mapping)]
    if not found or None in found:
        raise InputError(f"{label}: does not record which weights it scored (made by an older version); "
                         "evaluate again")
    if sorted(found) != sorted(digests):
        raise InputError(f"{label}: scored other weights ({len(found)} network(s)) than the {len(digests)} "
                         "being exported; evaluate the exported model (or these runs) again")
    if not same_clean_up(summary.get("postprocess"), rules):
        raise InputError(f"{label}: made with clean-up {summary.get('postprocess')}, the export prescribes {rules}; "
                         "evaluate again")
    scored = set(summary.get("case_ids") or [])
    for run_name, ids in training_ids.items():
        overlap = sorted(scored & set(ids or []))
        if overlap:
            raise InputError(f"{label}: {len(overlap)} of its cases are training cases of {run_name} "
                             f"({', '.join(overlap[:3])}{', …' if len(overlap) > 3 else ''}); "
                             "a held-out figure needs cases the model never trained on")


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


def _evaluations_metrics(evaluations: Mapping[str, Path], digests: Sequence[str],
                         rules: Mapping[str, Any] | None,
                         training_ids: Mapping[str, Sequence[str] | None]) -> dict[str, Any]:
    """``metrics`` holding several named evaluations, each checked against what is exported."""
    entries = {}
    for name, folder in evaluations.items():
        summary = read_evaluation(folder)
        check_evaluation(name, Path(folder), summary, digests, rules, training_ids)
        entries[name] = _named_evaluation(summary)
    first = next(iter(entries.values()))
    return {"evaluations": entries, "empty_mask_rules": first["empty_mask_rules"],
            **({"confusion_rule": first["confusion_rule"]} if "confusion_rule" in first else {})}


def _rules_of(entry: Mapping[str, Any] | None, source: str) -> dict[str, Any] | None:
    """``{"rules": ...}`` of a ``postprocess`` entry, every field written (older entries lack newer
    fields); None when there is none."""
    try:
        chosen = ComponentFilter.from_meta({"postprocess": entry}, source)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return chosen.to_dict() if chosen is not None else None


@dataclass
class _RunWeights:
    """One run's weights, read for export."""

    run: Path
    info: dict[str, Any]
    which: str
    model: Any
    meta: dict[str, Any]
    config: Any
    digest: str

    @classmethod
    def read(cls, run: str | Path, which: str) -> "_RunWeights":
        run = Path(run)
        info = run_settings(run)
        model, meta = load_weights(weights_of(run, which))
        spec = meta["model_spec"]
        config = config_of(spec)
        if config is None:
            raise InputError(f"{run}: a {spec['name']} network cannot be exported as an HNTumorSeg model file "
                             "(HNTumorSegLib builds psam and unet networks only)")
        return cls(run, info, which, model, meta, config, tensors_sha256(model.state_dict()))

    def refuse_other_preprocessing(self) -> None:
        """InputError unless the weights were trained on this software's preprocessing: ``segment`` (and
        ``evaluate``) refuse a model file of another version, so it must not be written."""
        version = self.meta.get("preprocessing_version")
        if str(version or "") != PREPROCESSING_VERSION:
            raise InputError(f"{weights_of(self.run, self.which)}: trained on preprocessing version {version!r}, "
                             f"this software makes version {PREPROCESSING_VERSION!r}; a model file of it could "
                             "not be used")

    @cached_property
    def rules(self) -> dict[str, Any] | None:
        """The weights' own clean-up as ``{"rules": ...}`` (see :func:`_rules_of`)."""
        return _rules_of(self.meta.get("postprocess"), str(weights_of(self.run, self.which)))

    @property
    def window(self) -> dict[str, Any] | None:
        window = run_window(self.info)
        return self.meta.get("inference") or (window.to_dict() if window else None)

    def training_record(self) -> dict[str, Any]:
        info = self.info
        return {**self.meta.get("training", {}),
                **{k: info["settings"][k] for k in WEIGHTS_SETTINGS if k in info.get("settings", {})},
                "selected": self.meta.get("selected"), "run": self.run.name,
                "device": info.get("device"), "torch_version": info.get("torch_version")}


def model_name(out: str | Path) -> str:
    """The model's default name: the file stem the model-file writer uses (``models/m.json`` -> ``m``)."""
    return model_paths(out).json.stem


def refuse_output_clashes(out: str | Path, runs: Sequence[str | Path], *, split: str, which: str,
                          evaluations: Mapping[str, Path], postprocess_rule: str | Path | None) -> None:
    """InputError before anything is read or written when the model file ``out`` would replace a file
    export reads (a run's weights, its ``run.json``, an evaluation summary, the rule file) or is a folder.
    Why: ``--out RUN/best`` would replace the run's weights with a model file of themselves."""
    paths = model_paths(out)
    inputs = []
    for r in runs:
        inputs += [("--run", Path(r) / "run.json"), ("--run", evaluation_dir(Path(r), split, which) / SUMMARY_FILE)]
        for w in ("best", "last"):
            own = model_paths(Path(r) / w)
            inputs += [("--run", own.json), ("--run", own.weights)]
    inputs += [("--evaluation", Path(folder) / SUMMARY_FILE) for folder in evaluations.values()]
    inputs += [("--postprocess-rule", Path(postprocess_rule))] if postprocess_rule is not None else []
    refuse_clashes([("--out", paths.json), ("--out", paths.weights)], inputs)


def _own_evaluation(w: _RunWeights, split: str, rules: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run's own ``split`` evaluation of ``w``'s weights, checked as an ``--evaluation`` is: it must
    have scored these very weights (the digest: ``fit --resume`` replaces ``best``), with this clean-up,
    on none of the run's training cases (``--split train``, or a folder evaluation written there)."""
    summary = read_summary(w.run, split, w.which)
    check_evaluation(split, evaluation_dir(w.run, split, w.which), summary, [w.digest], rules,
                     {w.run.name: training_case_ids(w.run)})
    return summary


def export(run: str | Path | Sequence[str | Path], out: str | Path, *, which: str = "best", split: str = "val",
           require_evaluation: bool = True, description: str | None = None,
           intended_use: str | None = None, name: str | None = None,
           evaluations: Mapping[str, str | Path] | None = None, postprocess: bool = True,
           postprocess_rule: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``out.safetensors`` and ``out.json`` from ``run``'s ``which`` weights; returns both paths.

    ``run``: one run folder, or several (a list): an ensemble (see the module docstring).
    ``evaluations``: {NAME: evaluation folder}; the model JSON's ``metrics`` then holds them all
    under ``"evaluations"``. Without it, a single run's ``split`` evaluation is the metrics, checked as
    an ``evaluations`` entry is (refused when missing, or made of other weights, another clean-up or
    training cases); ``require_evaluation=False`` does not read it (the metrics say so); an ensemble
    needs ``evaluations`` or ``require_evaluation=False``. ``postprocess=False`` exports without the clean-up;
    ``postprocess_rule``: a rule file (:mod:`.rule_file`) chosen for exactly these weights, whose
    clean-up replaces the runs' own (the way to give an ensemble a rule chosen on its average).
    """
    runs = [run] if isinstance(run, (str, Path)) else list(run)
    if not runs:
        raise InputError("export needs at least one --run")
    if postprocess_rule is not None and not postprocess:
        raise InputError("--postprocess-rule and --no-postprocess contradict each other: give one")
    evaluations = {k: Path(v) for k, v in (evaluations or {}).items()}
    refuse_output_clashes(out, runs, split=split, which=which, evaluations=evaluations,
                          postprocess_rule=postprocess_rule)
    if len(runs) > 1:
        return _export_ensemble(runs, out, which=which, require_evaluation=require_evaluation,
                                description=description, intended_use=intended_use, name=name,
                                evaluations=evaluations, postprocess=postprocess, postprocess_rule=postprocess_rule)
    w = _RunWeights.read(runs[0], which)
    w.refuse_other_preprocessing()
    run, info, meta = w.run, w.info, w.meta
    postprocess_entry = meta.get("postprocess")
    if postprocess_rule is not None:
        postprocess_entry = _rule_file_entry(postprocess_rule, [w])
    rules = _rules_of(postprocess_entry, str(weights_of(run, which))) if postprocess else None
    if evaluations:
        metrics = _evaluations_metrics(evaluations, [w.digest], rules, {run.name: training_case_ids(run)})
    elif not require_evaluation:  # the run's own evaluation is not read: it may be of other weights or clean-up
        metrics = {"note": "not evaluated with hntumorseg-train evaluate; window validation from training only",
                   **meta.get("metrics", {})}
    elif postprocess_rule is not None:
        raise InputError(f"{postprocess_rule}: a clean-up from a rule file is evaluated with the exported file: "
                         + EVALUATE_THE_FILE)
    else:
        metrics = _evaluation_metrics(_own_evaluation(w, split, rules))
    trained_on = data_description(Path(info["cache"]), description)
    if intended_use is None:
        intended_use = PHANTOM_INTENDED_USE if trained_on["synthetic"] else DEFAULT_INTENDED_USE
    window = w.window
    metadata = {
        "name": name or model_name(out),
        **({"inference": window} if window else {}),
        **({"postprocess": postprocess_entry} if rules else {}),
        "preprocessing_version": meta["preprocessing_version"],
        "trained_on": trained_on,
        "metrics": metrics,
        "intended_use": intended_use,
        "training": w.training_record(),
        "model_spec": meta["model_spec"],
    }
    metadata = portable(metadata)
    json.dumps(metadata, allow_nan=False)  # fail before writing anything
    return save_model(w.model, w.config, out, metadata=metadata)


def _rule_file_entry(path: str | Path, members: Sequence[_RunWeights]) -> dict[str, Any]:
    """The model JSON's ``postprocess`` entry from a rule file chosen for exactly ``members``."""
    entry = read_rule_file(path, [w.digest for w in members])
    return {"rules": entry["rules"], "chosen_on": entry["chosen_on"],
            "chosen_for": [{k: m.get(k) for k in ("run", "weights")} for m in entry["members"]]}


def _member_name(w: _RunWeights, taken: set[str]) -> str:
    base = f"{w.run.name}-{w.which}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    taken.add(name)
    return name


def _combined_trained_on(members: Sequence[_RunWeights], description: str | None) -> dict[str, Any]:
    """What an ensemble was trained on: each member's data, and what they share."""
    each = [data_description(Path(w.info["cache"])) for w in members]

    def common(key: str) -> Any:
        values = [json.dumps(d.get(key), sort_keys=True) for d in each]
        return each[0].get(key) if len(set(values)) == 1 else None

    return {"description": description or "; ".join(dict.fromkeys(d["description"] for d in each))
            + f" (ensemble of {len(members)} networks)",
            # any member trained on phantoms makes the ensemble one for trying the software only
            "synthetic": any(d["synthetic"] for d in each),
            "data_root": common("data_root"), "train_cases": common("train_cases"), "val_cases": common("val_cases"),
            "centres": common("centres"), "preprocessing_version": common("preprocessing_version"),
            "members": each}


def _export_ensemble(runs: Sequence[str | Path], out: str | Path, *, which: str, require_evaluation: bool,
                     description: str | None, intended_use: str | None, name: str | None,
                     evaluations: Mapping[str, Path], postprocess: bool,
                     postprocess_rule: str | Path | None) -> tuple[Path, Path]:
    resolved = [Path(r).resolve() for r in runs]
    repeated = sorted({str(r) for r in runs if resolved.count(Path(r).resolve()) > 1})
    if repeated:
        raise InputError(f"--run {repeated[0]} given twice (an ensemble of copies of one network is that network)")
    members = [_RunWeights.read(r, which) for r in runs]
    first_with: dict[str, Path] = {}
    for w in members:  # a copy of a run under another path: the same tensors
        if w.digest in first_with:
            raise InputError(f"--run {w.run} holds the same network as --run {first_with[w.digest]} (identical "
                             "tensors); an ensemble of copies of one network is that network")
        first_with[w.digest] = w.run
    for key, what in (("preprocessing_version", "preprocessing version"), ("labels", "labels")):
        values = {json.dumps(w.meta.get(key), sort_keys=True) for w in members}
        if len(values) > 1:
            listed = ", ".join(f"{w.run.name}: {w.meta.get(key)}" for w in members)
            raise InputError(f"the runs differ in {what} ({listed}); an ensemble needs one")
    members[0].refuse_other_preprocessing()  # (all share it)
    io = {(w.config.in_channels, w.config.out_channels) for w in members}
    if len(io) > 1:
        raise InputError(f"the runs' networks differ in input/output channels {sorted(io)}; "
                         "their probabilities cannot be averaged")
    rules = None
    postprocess_entry = None
    if postprocess_rule is not None:  # the members' own rules are not read: the file's replaces them
        postprocess_entry = _rule_file_entry(postprocess_rule, members)
        rules = _rules_of(postprocess_entry, str(postprocess_rule))
    elif postprocess and any(w.rules for w in members):
        if len({json.dumps(w.rules, sort_keys=True) for w in members}) > 1:
            listed = "; ".join(f"{w.run.name}: {w.rules}" for w in members)
            raise InputError(f"the runs prescribe different clean-ups ({listed}); export without one "
                             "(--no-postprocess) or choose one rule for all with hntumorseg-train postprocess")
        rules = members[0].rules
        postprocess_entry = {**rules, "chosen_on": "each member alone (the members share this rule); applied once, "
                                                   "to the averaged probabilities",
                             "members_chosen_on": [w.meta["postprocess"].get("chosen_on") for w in members]}
    digests = [w.digest for w in members]
    if evaluations:
        metrics = _evaluations_metrics(evaluations, digests, rules,
                                       {w.run.name: training_case_ids(w.run) for w in members})
    elif require_evaluation:
        raise InputError("an ensemble is evaluated as a whole: " + EVALUATE_THE_FILE)
    else:
        metrics = {"note": "not evaluated with hntumorseg-train evaluate as an ensemble; see each member's source"}
    trained_on = _combined_trained_on(members, description)
    if intended_use is None:
        intended_use = PHANTOM_INTENDED_USE if trained_on["synthetic"] else DEFAULT_INTENDED_USE
    taken: set[str] = set()
    entries = []
    for w in members:
        try:  # only an evaluation of these very weights and clean-up describes the member
            own = _evaluation_metrics(_own_evaluation(w, "val", w.rules))
        except InputError:
            own = None
        source = portable({"run": w.run.name, "weights": w.which, "weights_sha256": w.meta.get("weights_sha256"),
                           "model_spec": w.meta["model_spec"], "trained_on": data_description(Path(w.info["cache"])),
                           "training": w.training_record(), "postprocess": w.meta.get("postprocess"),
                           "evaluation_val": own})
        entries.append(EnsembleMember(w.model, w.config, _member_name(w, taken), w.window, source))
    metadata = portable({
        "name": name or model_name(out),
        **({"postprocess": postprocess_entry} if postprocess_entry else {}),
        "preprocessing_version": members[0].meta["preprocessing_version"],
        "trained_on": trained_on,
        "metrics": metrics,
        "intended_use": intended_use,
        "training": {"ensemble_of": [w.run.name for w in members], "weights": which,
                     "combination": "mean of the members' softmax probabilities"},
    })
    json.dumps(metadata, allow_nan=False)
    json.dumps([e.source for e in entries], allow_nan=False)  # fail before writing anything
    return save_ensemble(entries, out, metadata=metadata)
