"""``hntumorseg batch``: every case of a cohort, resumable, shardable, one summary table.

Why: a physicist validating the model on a clinic's archive, or a researcher on HECKTOR, has
hundreds of cases. A case is a HECKTOR-layout case (``ROOT/CASE/CASE__CT.nii.gz`` + ``__PT``, or
``imagesTr/``; found by the training package's :func:`find_cases`) or a DICOM study holding a CT
and a PET series. Each case runs the very pipeline of ``hntumorseg segment`` into
``OUT/CASE/``; its JSON report is written last, so a case with a report is done and is skipped
when the batch is run again. A failing case becomes a row of the summary and the batch goes on.
``--shard i/n`` takes every n-th case starting at the i-th (cases sorted by id), so n machines
given the same command with i = 1..n share a cohort without talking to each other; each shard
writes its own summary.

Two processes on one output folder (overlapping shards, or the same command started twice by
mistake) never segment a case at the same time: a process claims a case with an exclusive lock on
``OUT/.batch/CASE.claim`` while it runs it (the operating system drops the lock when the process ends,
even when it is killed). A case claimed by another process is reported "running elsewhere" until
its result is on disk; every summary written reads the other processes' finished cases back (the
report of a done case, ``OUT/.batch/CASE.failed.json`` of a failed one), so the last summary written lists
every case with its final status.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import re
import sys
import time
import traceback
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.cli.output_paths import model_inputs, refuse_clashes
from HNTumorSegLib.imaging.image_names import written_data_files

if TYPE_CHECKING:
    from HNTumorSegLib.pipeline.inference import Segmenter

DONE, SKIPPED, FAILED, ELSEWHERE = "done", "done earlier", "failed", "running elsewhere"
#: Folder (in OUT) of the claims and failure records that let two processes share an output folder.
BATCH_STATE = ".batch"
SUMMARY_COLUMNS = ("case", "status", "seconds", "GTVp_volume_ml", "GTVp_suv_max", "GTVp_tlg",
                   "GTVn_volume_ml", "GTVn_suv_max", "GTVn_tlg", "suv_factor", "source", "message", "input")
#: One row per lesion of every finished case (see HNTumorSegLib.evaluation.lesions); centroid in LPS mm.
LESION_COLUMNS = ("case", "lesion", "structure", "volume_ml", "suv_max", "suv_mean", "tlg", "centroid_x_mm",
                  "centroid_y_mm", "centroid_z_mm", "side", "confidence_mean", "confidence_max", "review")


@dataclass(frozen=True)
class BatchCase:
    """One case: CT and PET paths (files, or DICOM folders with the series UIDs to read)."""

    case_id: str
    ct: Path
    pet: Path
    dicom: bool = False
    ct_series: Optional[str] = None
    pet_series: Optional[str] = None
    problem: Optional[str] = None  # set when the case was found but cannot run (reported as failed)
    files: tuple[Path, ...] = ()  # a DICOM case's CT and PET files (for a case of image files: ct and pet)
    where: Optional[Path] = None  # the folder a DICOM case was found in, for the summary (None: the CT's)
    ct_count: int = 0  # how many of a DICOM case's files are its CT's (the rest are its PET's)
    note: str = ""  # said in the case's summary row whatever its status (e.g. images beside it not segmented)

    def input_files(self) -> list[Path]:
        """The files whose contents decide the case's outputs: the DICOM series' files, or the CT and PET images
        with any separate data files beside their headers (``CT.mhd`` + ``CT.zraw``)."""
        if self.files:
            return list(self.files)
        images = [self.ct, self.pet]
        return images + [data for image in images for data in written_data_files(image) if data.exists()]

    def input_fingerprint(self) -> str:
        """A digest of the case's input files' names, sizes and modification times (as rsync decides what
        changed): a case whose inputs changed since its report was written is run again on resume (a PET whose
        PatientWeight was corrected kept its earlier SUVs). Reading every byte of every case's DICOM on each
        resume would cost far more than a stat."""
        entries = []
        for path in self.input_files():
            try:
                stat = path.stat()
                entries.append(f"{path.parent.name}/{path.name}\t{stat.st_size}\t{stat.st_mtime_ns}")
            except OSError:
                entries.append(f"{path.parent.name}/{path.name}\tmissing")
        return hashlib.sha256("\n".join(sorted(entries)).encode("utf-8", "surrogateescape")).hexdigest()

    def location(self) -> Optional[Path]:
        """Where the case is on disk, for its summary row."""
        if self.where is not None or self.ct is None:
            return self.where
        return self.ct if self.ct.is_dir() else self.ct.parent  # a problem found under ROOT names ROOT


def parse_shard(text: str) -> tuple[int, int]:
    """"i/n" with 1 <= i <= n."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise InputError(f"--shard {text!r}: expected i/n with 1 <= i <= n, e.g. 2/8")
    return int(m.group(1)), int(m.group(2))


def shard(cases: Sequence[BatchCase], i: int, n: int) -> list[BatchCase]:
    """Every n-th case from the i-th (1-based): shards 1..n partition the cohort."""
    return list(cases)[i - 1::n]


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:6]


def _safe(text: str) -> str:
    """``text`` as a file name: letters and digits of any script, ``_``, ``.`` and ``-``; other runs become
    ``_``. A name that had to change gets a hash of the original, so that ``Müller 01`` and ``Müller_01``
    stay two cases (and two output folders), the same ones on every run."""
    safe = re.sub(r"[^\w.-]+", "_", text).strip("._-") or "case"  # no leading "-": tools read it as an option
    return safe if safe == text else f"{safe}_{_short_hash(text)}"


def _hecktor_cases(root: Path) -> list[BatchCase]:
    from HNTumorSegLib.cases.hecktor import find_cases

    cases, problems = find_cases(root, require_label=False, any_folder_name=True)
    out = [BatchCase(_safe(c.case_id), c.ct, c.pet) for c in cases]
    out += [BatchCase(_safe(p.case_id), root, root, problem=p.reason, where=p.where) for p in problems]
    return out


#: Names the batch writes in --out itself: a case folder never takes one (a patient folder called
#: ``lesions.csv`` stopped the whole batch).
_RESERVED = re.compile(r"(summary|lesions)(_shard-\d+-of-\d+)?\.csv", re.IGNORECASE)


def _distinct(cases: Sequence[BatchCase]) -> list[BatchCase]:
    """The cases with ids made distinct: problems named by a file name (``CT.nii.gz`` in two folders)
    get a hash of their reason, which names the file; one bad folder never stops the others. An id that
    is a name the batch writes beside the case folders gets a hash too."""
    cases = [replace(c, case_id=f"{c.case_id}_{_short_hash(c.case_id)}") if _RESERVED.fullmatch(c.case_id) else c
             for c in cases]
    count = Counter(c.case_id for c in cases)
    return [c if count[c.case_id] == 1 else
            replace(c, case_id=f"{c.case_id}_{_short_hash(c.problem or f'{c.ct}|{c.pet}')}") for c in cases]


def _common_folder(files: Sequence[Path]) -> Path:
    parts = [f.parent.parts for f in files]
    common = []
    for level in zip(*parts):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common)


def _dicom_cases(root: Path) -> list[BatchCase]:
    from HNTumorSegLib.dicom.series import candidate_series, find_series_and_damage

    try:
        series, damaged = find_series_and_damage(root)
    except InputError:  # no DICOM file under root at all
        return []
    out = []
    for folder, items in damaged.items():  # DICOM files no series could be read from: the user must hear of it
        path, problem = items[0]
        more = f" and {len(items) - 1} more damaged file(s) there" if len(items) > 1 else ""
        out.append(BatchCase(f"{_safe(folder.name or 'dicom')}_{_short_hash(str(folder))}", folder, folder, True,
                             problem=f"{path}: {problem}{more}; no DICOM series could be read in {folder}",
                             where=folder))
    studies: dict[str, list] = {}
    for s in series:
        studies.setdefault(s.study_uid, []).append(s)
    for study_uid, members in _paired_studies(studies, candidate_series).items():
        if not any(s.modality in ("CT", "PT") for s in members):
            continue
        cts, pets = candidate_series(members, "CT"), candidate_series(members, "PT")  # a topogram is no candidate
        first = members[0]
        case_id = _safe(f"{first.patient_id}_{first.study_date}") + "_" + hashlib.sha1(study_uid.encode()).hexdigest()[:6]
        where = _common_folder([f for s in members for f in s.files])
        if len(cts) != 1 or len(pets) != 1:
            listing = "; ".join(s.describe() for s in members if s.modality in ("CT", "PT"))
            out.append(BatchCase(case_id, root, root, True, problem=(
                f"{where}: study {study_uid} holds {len(cts)} CT and {len(pets)} PT series ({_which_fix(cts, pets)}): "
                f"{listing}"), files=tuple(f for s in members for f in s.files), where=where))
            continue
        out.append(BatchCase(case_id, _common_folder(cts[0].files), _common_folder(pets[0].files), True,
                             cts[0].uid, pets[0].uid, files=(*cts[0].files, *pets[0].files), where=where,
                             ct_count=len(cts[0].files)))
    return out


def _one_case_per_scan(image_cases: Sequence[BatchCase], dicom_cases: Sequence[BatchCase]) -> list[BatchCase]:
    """The cases, with a patient folder's CT and PET image files and a DICOM study of the same scan one case.

    Why: a patient folder holding ``CT.nii.gz`` + ``PET.nii.gz`` and the DICOM study they were converted from
    (dcm2niix output kept beside its source, a HECKTOR export kept with its DICOM) became two cases, the same
    patient segmented twice and counted twice in the summary.

    The rule: when a folder holding one case of image files also holds (in it or below it) a DICOM study with
    one CT and one PET series of the very voxel grids of those images (the same numbers of columns, rows and
    slices, CT and PET), they are one scan and one case, the DICOM one: its headers carry the SUV metadata
    (weight, dose, injection time) and it can be exported as RTSTRUCT / DICOM SEG. Its row says that the image
    files were not segmented. A study of other grids (another scan, or images resampled or cropped after
    conversion) is not taken for them: both stay cases, and each row names the other's folder, the ``source``
    column saying which is the DICOM (whose id is its PatientID, StudyDate and a hash of its Study UID).
    """
    per_folder = Counter(c.ct.parent for c in image_cases if not c.problem)
    out, notes, merged = [], {}, set()
    for case in image_cases:
        folder = case.ct.parent
        if case.problem or per_folder[folder] != 1 or case.pet.parent != folder:  # imagesTr/: a folder of cases
            out.append(case)
            continue
        studies = [d for d in dicom_cases if not d.problem and d.case_id not in merged and d.where is not None
                   and (d.where == folder or folder in d.where.parents)]
        same = next((d for d in studies if _same_grids(case, d)), None)
        if same is not None:
            merged.add(same.case_id)
            notes[same.case_id] = (f"{case.ct.name} and {case.pet.name} in {folder} have this study's voxel grids "
                                   "(converted from it?) and were not segmented separately")
            continue
        if studies:
            case = replace(case, note=f"DICOM study of other voxel grids in {', '.join(str(d.where) for d in studies)}"
                                      ": a case of its own")
            for d in studies:
                notes.setdefault(d.case_id, f"{case.ct.name} and {case.pet.name} in {folder} are of other voxel "
                                            "grids: a case of their own")
        out.append(case)
    return out + [replace(d, note=notes[d.case_id]) if d.case_id in notes else d for d in dicom_cases]


def _same_grids(images: BatchCase, study: BatchCase) -> bool:
    """Whether a case's CT and PET image files have the sizes (columns, rows, slices) of a DICOM study's CT and
    PET series. Only headers are read; a file that cannot be read is no match (its case then says why)."""
    import pydicom
    import SimpleITK as sitk

    sizes = []
    for image, slices in ((images.ct, study.files[:study.ct_count]), (images.pet, study.files[study.ct_count:])):
        try:
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(image))
            reader.ReadImageInformation()
            header = pydicom.dcmread(slices[0], stop_before_pixels=True, specific_tags=["Rows", "Columns"],
                                     force=True)  # (force: also a slice written without the preamble)
            sizes.append((tuple(reader.GetSize()), (int(header.Columns), int(header.Rows), len(slices))))
        except Exception:  # noqa: BLE001 - unreadable header, or no slices: not the same scan as far as we know
            return False
    return all(a == b for a, b in sizes)


def _paired_studies(studies: dict[str, list], candidate_series) -> dict[str, list]:
    """``studies`` (study UID -> series) with a study holding only a CT and one holding only a PET of the same
    patient and day joined into one (keyed by both UIDs): some archives file the PET and the CT of one PET/CT
    session as two studies, which were two failure rows though ``segment`` takes the pair. Reading the pair
    still checks that they share a frame of reference and a session."""
    lonely: dict[tuple[str, str], dict[str, list[str]]] = {}
    for uid, members in studies.items():
        cts, pets = candidate_series(members, "CT"), candidate_series(members, "PT")
        if len(cts) + len(pets) == 1 and members[0].patient_id:
            kind = "CT" if cts else "PT"
            lonely.setdefault((members[0].patient_id, members[0].study_date), {"CT": [], "PT": []})[kind].append(uid)
    joined = dict(studies)
    for found in lonely.values():
        if len(found["CT"]) == 1 and len(found["PT"]) == 1:
            ct_uid, pt_uid = found["CT"][0], found["PT"][0]
            joined[f"{ct_uid}+{pt_uid}"] = joined.pop(ct_uid) + joined.pop(pt_uid)
    return joined


def _which_fix(cts: Sequence, pets: Sequence) -> str:
    """What the user can do about a study without exactly one CT and one PET series."""
    if not cts or not pets:
        missing = "CT" if not cts else "PET"
        return (f"one of each is needed and the {missing} is not in this study: if it was exported as another "
                f"study, segment the pair with `hntumorseg segment --ct ... --pet ...`")
    return "one of each is needed: segment the pair you want with `hntumorseg segment --ct-series/--pet-series`"


def find_batch_cases(root: str | Path) -> list[BatchCase]:
    """HECKTOR-layout cases and DICOM studies under ``root``, sorted by case id; a folder's CT and PET image files
    and a DICOM study there of the same voxel grids are one case, the DICOM one (:func:`_one_case_per_scan`)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    cases = _one_case_per_scan(_hecktor_cases(root), _dicom_cases(root))
    if not cases:
        raise InputError(f"{root}: no cases found (neither folders holding a CT and a PET, e.g. CASE/CASE__CT.nii.gz + "
                         "CASE__PT.nii.gz or PATIENT/CT.nii.gz + PATIENT/PET.nii.gz, nor DICOM studies with a CT and "
                         "a PET series)")
    cases = _distinct(cases + _folders_without_a_case(root, cases))
    duplicates = sorted(i for i, n in Counter(c.case_id for c in cases).items() if n > 1)
    if duplicates:  # two DICOM studies or folders that hash alike: not seen, but never write one over the other
        raise InputError(f"{root}: case ids found twice: {', '.join(duplicates)}")
    return sorted(cases, key=lambda c: c.case_id)


def _folders_without_a_case(root: Path, cases: Sequence[BatchCase]) -> list[BatchCase]:
    """A failed case for each folder directly under ``root`` that no case, and no problem, came from: an empty
    one, one of notes or unreadable files, one whose images lie in sub-folders, one holding DICOM of no CT or PET
    series. Why: such a patient folder had no row in the summary, and a user counting rows against folders
    could not tell which was left out, or why."""
    from HNTumorSegLib.cases.hecktor import FLAT_IMAGES, FLAT_LABELS

    used = set()
    for case in cases:
        for path in (case.ct, case.pet, case.where, *case.files):
            parts = _parts_below(root, path)
            if parts:
                used.add(parts[0])
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name in used or folder.name in (FLAT_IMAGES, FLAT_LABELS) or _holds_images(folder):
            continue  # images directly in it: a case, or a problem saying what is wrong with them
        out.append(BatchCase(_safe(folder.name), folder, folder, problem=f"{folder}: {_no_case_reason(folder)}",
                             where=folder))
    return out


def _parts_below(root: Path, path: Optional[Path]) -> tuple[str, ...]:
    """The parts of ``path`` below ``root`` (both as found, from ``root``), or () when it is not below it."""
    try:
        return Path(path).relative_to(root).parts if path is not None else ()
    except ValueError:
        return ()


def _holds_images(folder: Path) -> bool:
    """Image files (by name) directly in ``folder``: the HECKTOR search makes a case or a problem of each."""
    from HNTumorSegLib.imaging.image_names import image_suffix

    return any(not p.name.startswith(".") and image_suffix(p) is not None and p.is_file() for p in folder.iterdir())


def _no_case_reason(folder: Path) -> str:
    """Why a folder under the batch's input gave no case: what is, or is not, in it."""
    from HNTumorSegLib.imaging.image_names import image_suffix
    from HNTumorSegLib.imaging.input_integrity import dicom_without_preamble, looks_like_dicom

    files = []
    for where, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files += [Path(where) / name for name in sorted(names) if not name.startswith(".")]
    if not files:
        return "empty folder: no CT and PET images in it"
    deeper = next((f for f in files if image_suffix(f) is not None), None)
    if deeper is not None:
        return (f"no CT or PET directly in it; image files only in its sub-folders (e.g. {deeper.relative_to(folder)}): "
                "a case is a folder holding its CT and PET, or a DICOM study")
    if any(looks_like_dicom(f) or dicom_without_preamble(f) for f in files):
        return "its DICOM files hold no CT or PET series"
    shown = ", ".join(str(f.relative_to(folder)) for f in files[:3])
    return (f"no image or DICOM file in it ({len(files)} other file(s): {shown}{', ...' if len(files) > 3 else ''}); "
            "a case needs a CT and a PET (NIfTI, NRRD, MetaImage or DICOM)")


@dataclass
class BatchOptions:
    out: Path
    model: Optional[str] = None
    device: str = "auto"
    tta: bool = False
    pet_units: str = "auto"
    rtstruct: bool = False
    dicom_seg: bool = False
    postprocess: bool = True
    split_lesions: bool = False
    refine_nodes: bool = False

    def settings(self) -> dict:
        """What decides a case's outputs besides its inputs: recorded in each report, compared on resume.

        The model is identified by the digest of its JSON (which holds the weights' digest, checked at load,
        and the clean-up and inference settings), not by its path: the same model given by another path is the
        same, and a model file replaced at the same path (retrained, re-exported) is another.
        """
        return {"model": str(self.model) if self.model else "bundled", "model_sha256": self._model_digest(),
                "tta": self.tta, "postprocess": self.postprocess, "split_lesions": self.split_lesions,
                "pet_units": self.pet_units,
                # only when set: reports of batches from before the option compare equal without it
                **({"refine_nodes": True} if self.refine_nodes else {})}

    def _model_digest(self) -> str:
        from HNTumorSegLib.pipeline.inference import default_model_path
        from HNTumorSegLib.pipeline.model_info import model_json_path
        from HNTumorSegLib.errors import ModelFileError

        try:
            path = model_json_path(self.model) if self.model else default_model_path()
            stat = path.stat()
            return _file_digest(str(path), stat.st_size, stat.st_mtime_ns)
        except (OSError, ModelFileError):
            return "unreadable"  # matches nothing recorded: the case is run, and loading the model says what is wrong

    def segmenter(self) -> Segmenter:
        from HNTumorSegLib.pipeline.inference import Segmenter  # torch loads only when a case is segmented

        return Segmenter(self.model, device=self.device, tta=self.tta, postprocess=self.postprocess)


@functools.lru_cache(maxsize=4)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, once per (path, size, mtime) and batch, not once per case (see BatchOptions.settings)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def same_settings(recorded: dict, current: dict) -> bool:
    """Whether a case's recorded batch settings are these. Reports that record the model's digest are compared on
    it and not on the model's path; older ones (path only) on everything they record."""
    ignored = {"model"} if "model_sha256" in recorded else {"model_sha256"}
    return ({k: v for k, v in recorded.items() if k not in ignored}
            == {k: v for k, v in current.items() if k not in ignored})


#: What each file a case writes is called in a message.
OUTPUT_NAMES = {"label": "its label map", "report": "its report", "rtstruct": "its RTSTRUCT", "dicom_seg": "its DICOM SEG"}


def case_paths(options: BatchOptions, case: BatchCase) -> dict[str, Path]:
    folder = options.out / case.case_id
    return {"label": folder / f"{case.case_id}_seg.nii.gz", "report": folder / f"{case.case_id}_seg.json",
            "rtstruct": folder / f"{case.case_id}_RTSTRUCT.dcm", "dicom_seg": folder / f"{case.case_id}_SEG.dcm",
            "log": folder / f"{case.case_id}_error.txt",
            # the batch's own state, out of the case folders (a case that fails writes nothing there)
            "failed": options.out / BATCH_STATE / f"{case.case_id}.failed.json",
            "claim": options.out / BATCH_STATE / f"{case.case_id}.claim"}


def _row(case: BatchCase, status: str, seconds: float, report: Optional[dict] = None, message: str = "") -> dict:
    said = [*(report or {}).get("input_warnings", []), *((report or {}).get("provenance") or {}).get("warnings", [])]
    if not message and said:  # a done case with a warning (no brain to anchor on, say): in its row
        message = "warning: " + "; ".join(said)
    if case.note:
        message = f"{message}; {case.note}" if message else case.note
    row = {"case": case.case_id, "status": status, "seconds": f"{seconds:.1f}",
           "source": "DICOM" if case.dicom else "files", "message": message, "input": str(case.location() or "")}
    for name in ("GTVp", "GTVn"):
        s = (report or {}).get("structures", {}).get(name, {})
        for key, column in (("volume_ml", "volume_ml"), ("suv_max", "suv_max"), ("tlg", "tlg")):
            value = s.get(key)
            row[f"{name}_{column}"] = "" if value is None else f"{value:.3f}"
    factor = (report or {}).get("suv", {}).get("suv_factor")
    row["suv_factor"] = "" if factor is None else f"{factor:.6g}"
    row["lesions"] = list((report or {}).get("lesions", []))  # for the lesion table, not a summary column
    return row


def _lesion_rows(row: dict) -> list[dict]:
    """The lesion-table rows of one case's summary row."""
    def number(value, digits=3):
        return "" if value is None else f"{value:.{digits}f}"

    out = []
    for lesion in row.get("lesions", []):
        x, y, z = lesion["centroid_mm"]
        out.append({"case": row["case"], "lesion": lesion["id"], "structure": lesion["structure"],
                    "volume_ml": number(lesion["volume_ml"]), "suv_max": number(lesion["suv_max"]),
                    "suv_mean": number(lesion["suv_mean"]), "tlg": number(lesion["tlg"]),
                    "centroid_x_mm": number(x, 1), "centroid_y_mm": number(y, 1), "centroid_z_mm": number(z, 1),
                    "side": lesion.get("side") or "", "confidence_mean": number(lesion.get("confidence_mean")),
                    "confidence_max": number(lesion.get("confidence_max")),
                    "review": "" if lesion.get("review") is None else ("yes" if lesion["review"] else "no")})
    return out


def run_case(case: BatchCase, options: BatchOptions, segmenter) -> dict:
    """Segment one case (the pipeline of ``segment``); returns its summary row, never raises for the case's faults."""
    from HNTumorSegLib.cases.inputs import read_case
    from HNTumorSegLib.cli.segment_case import run_segmentation
    from HNTumorSegLib.dicom.exports import write_dicom_outputs
    from HNTumorSegLib.imaging.image_io import write_bytes

    paths = case_paths(options, case)
    t0 = time.perf_counter()
    if case.problem:
        return _row(case, FAILED, 0.0, message=case.problem)
    try:
        refuse_clashes([(name, paths[key]) for key, name in OUTPUT_NAMES.items()],
                       [("its CT", case.ct), ("its PET", case.pet), *model_inputs(options.model)])
        inputs = read_case(case.ct, case.pet, ct_series=case.ct_series, pet_series=case.pet_series,
                           pet_units=options.pet_units)
        rtstruct = paths["rtstruct"] if options.rtstruct and case.dicom else None
        dicom_seg = paths["dicom_seg"] if options.dicom_seg and case.dicom else None

        def exports(label, case_inputs):
            return write_dicom_outputs(label, case_inputs.ct_dicom, rtstruct, dicom_seg, label_name=str(paths["label"]),
                                       split_lesions=options.split_lesions)

        report, _, _ = run_segmentation(case.ct, case.pet, paths["label"], segmenter, options.device, options.tta,
                                        inputs=inputs, after_label=exports,
                                        extra={"case": case.case_id, "batch_settings": options.settings(),
                                               "batch_inputs": {"sha256": case.input_fingerprint(),
                                                                "files": len(case.input_files())}},
                                        verbose=False, refine_nodes=options.refine_nodes)
        return _row(case, DONE, time.perf_counter() - t0, report)
    except (InputError, OSError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    except Exception as exc:  # a bug or the machine: keep the traceback beside the case, go on
        message = f"{type(exc).__name__}: {exc}".splitlines()[0]
        try:
            write_bytes(traceback.format_exc().encode(), paths["log"])
            message += f" (traceback in {paths['log']})"
        except OSError:
            pass
    return _row(case, FAILED, time.perf_counter() - t0, message=message)


@contextmanager
def case_claim(options: BatchOptions, case: BatchCase) -> Iterator[bool]:
    """Claim a case for this process while the ``with`` block runs: True if it is ours, False if another
    process holds it. An exclusive ``flock`` on ``OUT/.batch/CASE.claim``, released by the operating system
    when the process ends, however it ends (no stale claims after a crash or a kill). Where ``flock``
    does not exist (Windows) every claim succeeds."""
    try:
        import fcntl
    except ImportError:
        yield True
        return
    path = case_paths(options, case)["claim"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            mine = False
        else:
            mine = True
        try:
            yield mine
        finally:
            if mine:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def process_case(case: BatchCase, options: BatchOptions, get_segmenter: Callable[[], object]) -> dict:
    """A case's row: done earlier, running in another process, or run here under this process's claim.

    A failure is recorded (``OUT/.batch/CASE.failed.json``) so that another process's summary can
    show it; a later success removes it."""
    from HNTumorSegLib.imaging.image_io import write_json

    row = _earlier_row(case, options)
    if row is not None:
        return row
    if case.problem:
        return run_case(case, options, None)
    with case_claim(options, case) as mine:
        if not mine:
            return _row(case, ELSEWHERE, 0.0, message="another batch process is segmenting this case")
        report = _earlier_report(case, options)  # finished by another process just before we claimed it?
        missing = _missing_exports(case, options)
        if report is not None and not missing:
            return _skipped_row(case, report)
        if report is not None:
            try:
                return _add_exports(case, options, report, missing)
            except (InputError, OSError):
                pass  # segmented again below, which says what is wrong
        _remove_leftovers(case, options)
        row = run_case(case, options, get_segmenter())
        _give_memory_back()
        row.update(worker_pid=os.getpid(), rss_mib=_resident_mib())  # for the load benchmark; not CSV columns
        failed = case_paths(options, case)["failed"]
        if row["status"] == FAILED:
            try:
                write_json({k: v for k, v in row.items() if k != "lesions"}, failed)
            except OSError:
                pass  # the row still reaches this process's summary
        else:
            failed.unlink(missing_ok=True)
    return row


def _give_memory_back() -> None:
    """Between cases: collect cycles and hand freed heap back to the system (glibc's ``malloc_trim``).

    Why: a case's arrays are hundreds of MB; glibc keeps freed blocks in its arenas, so a long batch's workers
    grow from case to case without leaking (measured before this: +6 % and +11 % resident memory from the 5th
    to the 25th case of each of 2 workers). Elsewhere than glibc, only the collection runs."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _resident_mib() -> float | None:
    """This process's resident memory now (Linux ``/proc/self/statm``), in MiB; None elsewhere."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def _remove_leftovers(case: BatchCase, options: BatchOptions) -> None:
    """Temporary files of a process killed while writing this case's outputs (``.NAME.RANDOM...`` beside each
    output, see image_io.atomic_path). Safe under the case's claim: no other process writes there now."""
    from HNTumorSegLib.imaging.image_io import remove_temporaries

    paths = case_paths(options, case)
    folder = paths["label"].parent
    remove_temporaries(folder, [path.name for path in paths.values() if path.parent == folder])


def _refreshed(row: dict, case: BatchCase, options: BatchOptions) -> dict:
    """A "running elsewhere" row replaced by that process's result, once it is on disk."""
    if row["status"] != ELSEWHERE:
        return row
    earlier = _earlier_row(case, options)
    if earlier is not None:
        return earlier
    from HNTumorSegLib.cli.segment_case import report_or_none

    failed = report_or_none(case_paths(options, case)["failed"])  # a damaged record is none: still elsewhere
    if failed is None:
        return row
    return {**row, **{k: failed.get(k, "") for k in SUMMARY_COLUMNS}, "lesions": []}


def summary_path(out: Path, shard_spec: Optional[tuple[int, int]]) -> Path:
    return out / ("summary.csv" if shard_spec is None else f"summary_shard-{shard_spec[0]}-of-{shard_spec[1]}.csv")


def lesions_path(summary: Path) -> Path:
    """summary.csv -> lesions.csv, summary_shard-1-of-4.csv -> lesions_shard-1-of-4.csv (beside it)."""
    return summary.with_name("lesions" + summary.name[len("summary"):])


def _write_csv(rows: Sequence[dict], columns: Sequence[str], path: Path) -> Path:
    from HNTumorSegLib.imaging.image_io import write_bytes

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return write_bytes(buffer.getvalue().encode("utf-8"), path)


def write_summary(rows: Sequence[dict], path: Path) -> Path:
    """The summary (a row per case) at ``path`` and the lesion table (a row per lesion) beside it."""
    _write_csv([lesion for row in rows for lesion in _lesion_rows(row)], LESION_COLUMNS, lesions_path(path))
    return _write_csv(rows, SUMMARY_COLUMNS, path)


def _earlier_row(case: BatchCase, options: BatchOptions) -> Optional[dict]:
    """The row of a case finished by an earlier run (:func:`_earlier_report`) with every output asked for."""
    report = _earlier_report(case, options)
    if report is None or _missing_exports(case, options):
        return None
    return _skipped_row(case, report)


def _skipped_row(case: BatchCase, report: dict) -> dict:
    return _row(case, SKIPPED, float(report.get("timings_s", {}).get("total", 0.0)), report)


def _missing_exports(case: BatchCase, options: BatchOptions) -> list[str]:
    """The DICOM exports asked for ("rtstruct", "dicom_seg") that the case's folder lacks."""
    paths = case_paths(options, case)
    return [key for key, wanted in (("rtstruct", options.rtstruct), ("dicom_seg", options.dicom_seg))
            if case.dicom and wanted and not paths[key].exists()]


def _add_exports(case: BatchCase, options: BatchOptions, report: dict, missing: Sequence[str]) -> dict:
    """Write the DICOM exports an earlier result lacks from its label map, and record them in its report (written
    last, as a run writes it). Why: asking for ``--dicom-seg`` after an ``--rtstruct`` run segmented every case
    again, an hour per hundred cases on a CPU, for a file made from the label map in a second."""
    from HNTumorSegLib.cases.inputs import read_case
    from HNTumorSegLib.dicom.exports import write_dicom_outputs
    from HNTumorSegLib.imaging.image_io import read_image, write_json

    paths = case_paths(options, case)
    t0 = time.perf_counter()
    inputs = read_case(case.ct, case.pet, ct_series=case.ct_series, pet_series=case.pet_series,
                       pet_units=options.pet_units)
    label = read_image(paths["label"], "its label map")
    written = write_dicom_outputs(label, inputs.ct_dicom, paths["rtstruct"] if "rtstruct" in missing else None,
                                  paths["dicom_seg"] if "dicom_seg" in missing else None,
                                  label_name=str(paths["label"]), split_lesions=options.split_lesions)
    report = {**report, **written}
    write_json(report, paths["report"])
    names = " and ".join(OUTPUT_NAMES[key].removeprefix("its ") for key in missing)
    return _row(case, DONE, time.perf_counter() - t0, report,
                message=f"{names} written from the earlier result (not segmented again)")


def _earlier_report(case: BatchCase, options: BatchOptions) -> Optional[dict]:
    """The report of a case finished by an earlier run, DICOM exports aside: its report and its label map are
    there, and the report was made with these settings (model, TTA, clean-up, nodes one by one, PET units; a
    report of an earlier version, which does not say, is taken as it is), from these inputs (their names, sizes
    and modification times: :meth:`BatchCase.input_fingerprint`)."""
    from HNTumorSegLib.cli.segment_case import report_or_none

    paths = case_paths(options, case)
    if not paths["report"].exists() or not paths["label"].exists():
        return None
    report = report_or_none(paths["report"])
    if report is None:
        return None
    recorded = report.get("batch_settings")
    if isinstance(recorded, dict) and not same_settings(recorded, options.settings()):
        return None
    if recorded is not None and not isinstance(recorded, dict):
        return None
    inputs = report.get("batch_inputs")  # earlier versions did not record the inputs: taken as they are
    if inputs is not None and (not isinstance(inputs, dict) or inputs.get("sha256") != case.input_fingerprint()):
        return None
    return report


def run_batch(cases: Sequence[BatchCase], options: BatchOptions, *, summary: Path,
              make_segmenter: Callable[[], object], progress: bool = True) -> list[dict]:
    """Run (or skip, when done) every case in order; the summary is rewritten after each case."""
    from tqdm import tqdm

    rows: list[dict] = []
    segmenters: list = []

    def segmenter():  # made once, when the first case needs it
        if not segmenters:
            segmenters.append(make_segmenter())
        return segmenters[0]

    bar = tqdm(total=len(cases), desc="cases", unit="case", disable=not progress, file=sys.stderr)
    try:
        for case in cases:
            row = process_case(case, options, segmenter)
            rows.append(row)
            rows = [_refreshed(r, c, options) for r, c in zip(rows, cases)]
            write_summary(rows, summary)
            bar.set_postfix_str(f"{case.case_id}: {row['status']}")
            bar.update()
            if row["status"] == FAILED:
                bar.write(f"{case.case_id}: failed: {row['message']}")
    finally:
        bar.close()
    rows = [_refreshed(r, c, options) for r, c in zip(rows, cases)]
    write_summary(rows, summary)  # also for an empty shard
    _say_elsewhere(rows)
    return rows


def _say_elsewhere(rows: Sequence[dict]) -> None:
    elsewhere = [r["case"] for r in rows if r["status"] == ELSEWHERE]
    if elsewhere:
        print(f"{len(elsewhere)} case(s) were being segmented by another batch process ({', '.join(elsewhere[:5])}"
              f"{', ...' if len(elsewhere) > 5 else ''}); its summary, or this command run again, lists them",
              file=sys.stderr)


def run_batch_parallel(cases: Sequence[BatchCase], options: BatchOptions, *, summary: Path, workers: int,
                       progress: bool = True) -> list[dict]:
    """As :func:`run_batch`, with ``workers`` processes, each holding its own model and share of the CPU cores."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    from tqdm import tqdm

    from HNTumorSegLib.pipeline.inference import cpu_threads

    rows: dict[str, dict] = {}
    todo = []
    for case in cases:
        row = _earlier_row(case, options)
        if row is None:
            todo.append(case)
        else:
            rows[case.case_id] = row
    if todo:  # a model that cannot load is one line here, not a traceback from every worker
        from HNTumorSegLib.pipeline.inference import default_model_path
        from HNTumorSegLib.pipeline.model_file import load_model

        load_model(options.model or default_model_path(), device="cpu")
    threads = max(1, cpu_threads() // workers)  # the user's OMP_NUM_THREADS is shared out too
    bar = tqdm(total=len(cases), initial=len(rows), desc="cases", unit="case", disable=not progress, file=sys.stderr)
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                 initargs=(options, threads)) as pool:
            futures = {pool.submit(_worker_run, case): case for case in todo}
            try:
                for future in as_completed(futures):
                    case = futures[future]
                    try:
                        row = future.result()
                    except Exception as exc:  # the worker process died (memory, signal)
                        row = _row(case, FAILED, 0.0, message=f"worker process failed: {type(exc).__name__}: {exc}")
                    rows[case.case_id] = row
                    write_summary([_refreshed(rows[c.case_id], c, options) for c in cases if c.case_id in rows],
                                  summary)
                    bar.update()
                    if row["status"] == FAILED:
                        bar.write(f"{case.case_id}: failed: {row['message']}")
            except KeyboardInterrupt:  # Ctrl-C: the queued cases are not started; the running ones stop too
                pool.shutdown(wait=False, cancel_futures=True)
                write_summary([_refreshed(rows[c.case_id], c, options) for c in cases if c.case_id in rows], summary)
                raise
    finally:
        bar.close()
    ordered = [_refreshed(rows[c.case_id], c, options) for c in cases]
    write_summary(ordered, summary)  # also when every case was done earlier
    _say_elsewhere(ordered)
    return ordered


_WORKER: dict = {}


def _worker_init(options: BatchOptions, threads: int) -> None:
    import torch

    _WORKER["options"] = options
    _WORKER["segmenter"] = options.segmenter()
    torch.set_num_threads(threads)


def _worker_run(case: BatchCase) -> dict:
    return process_case(case, _WORKER["options"], lambda: _WORKER["segmenter"])
