"""``prepare``: a HECKTOR data root to a cache of network inputs, with a report and a split.

Steps: find cases (:mod:`.cases`); for each case not already in the cache, read and check it
(:mod:`.checks`), run :func:`HNTumorSegLib.pipeline.preprocess.preprocess` (the inference code itself,
so training sees exactly what inference will), measure what the window loses of each target
(:mod:`.containment`), write the case (:mod:`.cache`); then split the accepted cases
(:mod:`.split`). Written to the cache folder: ``cases/CASE/*``, ``rejected.json``,
``split.json`` and ``prepare_report.json``.

Why it never stops at a bad case: on 680 cases, one unreadable file must cost that case, not
the run. Every rejected case is listed with its reasons; image files that belong to no case (a stray
mask beside a case) are listed apart, as file problems, so that "rejected" counts cases. Why resumable: preprocessing all
cases takes an hour or more; a rerun after an interruption, a fixed case or a new split only
does what is missing. A finished case is not read or checked again (it passed when written),
unless its files changed since (size or modification time differ from those recorded): an edited
label is prepared again, never trained on as it was. A split that fails removes the previous
``split.json``, so that ``fit`` cannot train on a split this run did not make.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping

import SimpleITK as sitk
from tqdm import tqdm

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import read_image, write_json
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION, preprocess

from . import cache
from HNTumorSegLib.cases.hecktor import CASE_ID_RE, Case, case_sort_key, find_cases
from .checks import load_checked
from .containment import lost_voxels, summarise
from .split import split_cases


@dataclass(frozen=True)
class Rejection:
    """A case left out of the cache; ``stage`` is "discovery", "check", "preprocess" or "error"."""

    case_id: str
    stage: str
    reasons: list[str]


@dataclass
class CaseOutcome:
    """What preparing one case gave (returned from worker processes, so plain data only)."""

    case_id: str
    rejection: Rejection | None = None
    containment: dict | None = None
    seconds: float = 0.0


@dataclass
class PrepareReport:
    """Counts, rejected cases, the containment summary (Table 2) and the split."""

    data_root: str
    cache_dir: str
    accepted: list[str]
    processed: list[str]       # preprocessed in this run
    skipped: list[str]         # already finished in the cache
    rejected: list[Rejection]
    containment: dict
    split: dict
    seconds: float = 0.0
    per_case_containment: dict = field(default_factory=dict)
    #: Image files that belong to no case (a stray mask, a folder not named by a case id): not cases, so
    #: not counted among the rejected ones, but listed, so that no file is lost without a word.
    file_problems: list[Rejection] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        return {"accepted": len(self.accepted), "processed": len(self.processed),
                "skipped": len(self.skipped), "rejected": len(self.rejected),
                "train": len(self.split.get("train", [])), "val": len(self.split.get("val", [])),
                **({"file_problems": len(self.file_problems)} if self.file_problems else {})}

    def to_dict(self) -> dict:
        return {"data_root": self.data_root, "cache_dir": self.cache_dir,
                "preprocessing_version": PREPROCESSING_VERSION, "counts": self.counts,
                "seconds": round(self.seconds, 2), "accepted": self.accepted, "processed": self.processed,
                "skipped": self.skipped, "rejected": [asdict(r) for r in self.rejected],
                "file_problems": [asdict(r) for r in self.file_problems],
                "containment": {**self.containment, "per_case": self.per_case_containment},
                "split": {k: v for k, v in self.split.items() if k not in ("train", "val")}}


def _sources(case: Case) -> dict:
    def source(path: Path) -> dict:
        stat = Path(path).stat()
        return {"path": str(Path(path).resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    return {role: source(p) for role, p in (("ct", case.ct), ("pet", case.pet), ("label", case.label))
            if p is not None}


def _sources_changed(case: Case, folder: Path) -> bool:
    """Whether a cached case's files differ from the ones it was prepared from: size, and modification
    time where the cache recorded it (caches written before it did compare sizes only). Not the path:
    a data root moved with its files (``mv``, ``rsync -a``) is the same data, and is not prepared again."""
    recorded = (cache.read_provenance(folder) or {}).get("sources") or {}
    try:
        now = _sources(case)
    except OSError:
        return True
    if set(recorded) != set(now):
        return True
    return any(recorded[role].get(key) != now[role][key] for role in now for key in ("bytes", "mtime_ns")
               if key in recorded[role])


def prepare_case(case: Case, cache_dir: str | Path) -> CaseOutcome:
    """Check, preprocess and cache one case; any failure becomes a rejection, never an exception."""
    t0 = time.perf_counter()
    folder = cache.case_dir(cache_dir, case.case_id)
    try:
        problems, images = load_checked(case)
        if images is None or images.label is None:
            cache.clear_case(folder)
            return CaseOutcome(case.case_id, Rejection(case.case_id, "check", problems or ["no label"]))
        try:
            pre = preprocess(images.ct, images.pet, images.label, ct_name=str(case.ct),
                             pet_name=str(case.pet), label_name=str(case.label))
        except InputError as exc:
            cache.clear_case(folder)
            return CaseOutcome(case.case_id, Rejection(case.case_id, "preprocess", [str(exc)]))
        containment = lost_voxels(images.label, pre.provenance)
        provenance = {**pre.provenance, "case_id": case.case_id, "centre": case.centre,
                      "sources": _sources(case), "containment": containment,
                      "timings_s": {k: round(v, 3) for k, v in pre.timings.items()}}
        cache.write_case(folder, pre.image, pre.label, provenance)
        return CaseOutcome(case.case_id, None, containment, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - one case's bug must not end a long run
        cache.clear_case(folder)
        where = traceback.extract_tb(exc.__traceback__)[-1]
        reason = f"{type(exc).__name__}: {exc} (at {Path(where.filename).name}:{where.lineno})"
        return CaseOutcome(case.case_id, Rejection(case.case_id, "error", [reason]))


def _cached_containment(case: Case, folder: Path) -> dict | None:
    """Containment of a finished case: from its provenance, or recomputed from the label file."""
    prov = cache.read_provenance(folder) or {}
    if "containment" in prov:
        return prov["containment"]
    try:
        return lost_voxels(read_image(case.label, "label"), prov)
    except (InputError, KeyError):
        return None


def _init_worker(threads: int) -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


def _run(pending: list[Case], cache_dir: Path, workers: int) -> Iterator[CaseOutcome]:
    """Outcomes in completion order; ``workers > 1``: one case at a time per pool process."""
    if workers <= 1 or len(pending) <= 1:
        for case in pending:
            yield prepare_case(case, cache_dir)
        return
    workers = min(workers, len(pending))
    threads = max(1, (os.cpu_count() or 1) // workers)
    # spawn, not fork: the parent may hold threads (SimpleITK, torch) that fork would copy mid-state.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        futures = {pool.submit(prepare_case, case, cache_dir): case for case in pending}
        for future in as_completed(futures):
            case = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - e.g. a worker killed for memory
                yield CaseOutcome(case.case_id, Rejection(case.case_id, "error", [
                    f"worker process failed: {type(exc).__name__}: {exc}; rerun to retry"]))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _by_centre(cases: list[Case], keep: set[str] | None = None) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for case in cases:
        if keep is None or case.case_id in keep:
            out.setdefault(case.centre, []).append(case.case_id)
    return out


def prepare(data_root: str | Path, cache_dir: str | Path, workers: int = 1, progress: bool = True,
            val_fraction: float | None = None, val_counts: Mapping[str, int] | str | None = None,
            seed: int = 0) -> PrepareReport:
    """Prepare every case under ``data_root`` into ``cache_dir``; see the module docstring.

    The split arguments go to :func:`.split.split_cases` (``val_counts="paper"`` for the paper's
    Table 1). They are checked against the discovered cases before any preprocessing, so a bad
    split fails in seconds, not after an hour; if rejections later make it impossible, the cache
    and the reports are still written and ValueError is raised (a rerun with other split
    arguments then only splits).
    """
    t0 = time.perf_counter()
    data_root, cache_dir = Path(data_root).resolve(), Path(cache_dir)  # absolute: read from anywhere later
    cases, problems = find_cases(data_root, require_label=True)
    split_cases(_by_centre(cases), val_fraction, val_counts, seed)  # fail fast on bad arguments

    # a problem named by a case id that did not become a case is a rejected case; the others (named by a file
    # or folder name, or a stray file of a case that is complete) are file problems
    found_ids = {c.case_id for c in cases}
    rejected, file_problems = [], []
    for p in problems:
        case_problem = CASE_ID_RE.match(p.case_id) is not None and p.case_id not in found_ids
        (rejected if case_problem else file_problems).append(Rejection(p.case_id, "discovery", [p.reason]))
    containment: dict[str, dict] = {}
    skipped, pending, changed = [], [], []
    for case in cases:
        folder = cache.case_dir(cache_dir, case.case_id)
        finished = cache.is_finished(folder)
        if finished and _sources_changed(case, folder):  # an edited label must not train as it was
            changed.append(case.case_id)
            finished = False
        found = _cached_containment(case, folder) if finished else None
        if found is None:
            pending.append(case)
        else:
            skipped.append(case.case_id)
            containment[case.case_id] = found
            cache.remove_leftovers(folder)  # a prepare killed while rewriting it left a temporary file there
    if changed and progress:
        print(f"prepare: {len(changed)} cached case(s) whose files changed are prepared again: "
              f"{', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''}", flush=True)

    processed = []
    bar = tqdm(total=len(cases), initial=len(skipped), desc="prepare", unit="case", disable=not progress)
    with bar:
        for outcome in _run(pending, cache_dir, workers):
            if outcome.rejection is None:
                processed.append(outcome.case_id)
                containment[outcome.case_id] = outcome.containment
            else:
                rejected.append(outcome.rejection)
            bar.set_postfix_str(f"{outcome.case_id} {'ok' if outcome.rejection is None else 'rejected'}")
            bar.update(1)

    rejected.sort(key=lambda r: case_sort_key(r.case_id))
    accepted = sorted(set(skipped) | set(processed), key=case_sort_key)
    per_case = {cid: containment[cid] for cid in accepted}
    write_json({"data_root": str(data_root), "count": len(rejected), "rejected": [asdict(r) for r in rejected],
                "file_problems": [asdict(r) for r in file_problems]}, cache_dir / "rejected.json")

    split_error = None
    try:
        split = split_cases(_by_centre(cases, set(accepted)), val_fraction, val_counts, seed)
    except ValueError as exc:
        split_error, split = str(exc), {"error": str(exc)}
        (cache_dir / "split.json").unlink(missing_ok=True)  # an earlier split must not be trained on as this one
    else:
        write_json({**split, "data_root": str(data_root), "preprocessing_version": PREPROCESSING_VERSION},
                   cache_dir / "split.json")
    report = PrepareReport(str(data_root), str(cache_dir), accepted, sorted(processed, key=case_sort_key),
                           sorted(skipped, key=case_sort_key), rejected, summarise(per_case), split,
                           time.perf_counter() - t0, per_case, file_problems)
    write_json(report.to_dict(), cache_dir / "prepare_report.json")
    if split_error is not None:
        raise ValueError(f"{split_error} (after rejections; the cache is complete, rerun with other "
                         "split arguments to split only)")
    return report
