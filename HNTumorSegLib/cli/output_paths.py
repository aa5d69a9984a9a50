"""Outputs that would land on an input, or on each other, refused before anything is read or written.

Why: ``--out CT.nii.gz`` (a slip of the shell's history) would replace the CT with a label map, and the same
through a symlink, ``./x/../CT.nii.gz`` or a hard link; ``--out M.nii.gz`` beside ``--model M.json`` would
replace the model's JSON with the report ``M.json``. Outputs are written atomically (a rename), so a link
itself is replaced rather than the file it points to, but the user asked for the input to be overwritten in
all of these, which is never what they meant.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_names import written_data_files

#: (what names the path on the command line, the path) of an input or an output.
Named = tuple[str, Optional[Path]]


def resolved_path(path: str | os.PathLike) -> Path:
    """``path`` absolute, with links and ``..`` resolved (it need not exist): the file a path means from any
    working directory, as reports record their inputs."""
    return Path(os.path.abspath(path)).resolve(strict=False)


def same_path(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` are one file or folder: the same inode when both exist (symlinks, hard links,
    a case-insensitive file system), else the same absolute path once links and ``..`` are resolved."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return resolved_path(a) == resolved_path(b)


def _spelling(given: Path, other: Path) -> str:
    if str(given) == str(other):
        return ""
    return " (through a link or another spelling of the path)"


def refuse_clashes(outputs: Sequence[Named], inputs: Sequence[Named],
                   may_overwrite: Iterable[tuple[str, str]] = (), folders: Iterable[str] = ()) -> None:
    """Raise :class:`InputError` ``"OUT: --out is the same file as --ct CT; ..."`` when an output is an input
    file, or two outputs are one file. ``may_overwrite``: (output, input) names allowed to coincide (``edit
    --out`` may be its ``--labels``: they are read before the result is written). An input folder (DICOM) may
    be an output folder (``preprocess --out``): files are added to it, none of its images is replaced (an
    output that would replace a CT or PET file inside it is refused). Every output but those named in
    ``folders`` is a file: an existing folder there is refused before anything is written."""
    from HNTumorSegLib.imaging.input_integrity import data_files_of

    allowed, folder_outputs = set(may_overwrite), set(folders)
    input_folders = [(name, Path(path)) for name, path in inputs if path is not None and Path(path).is_dir()]
    inputs = [(name, Path(path)) for name, path in inputs if path is not None and not Path(path).is_dir()]
    outputs = [(name, Path(path)) for name, path in outputs if path is not None]
    for out_name, out in outputs:
        if out_name not in folder_outputs and out.is_dir():
            raise InputError(f"{out}: {out_name} is a folder; give the output a file name")
        blocked = next((parent for parent in out.parents if parent.exists() and not parent.is_dir()), None)
        if blocked is not None:  # found before the run, not when its result is written
            raise InputError(f"{out}: {out_name} cannot be written: {blocked} is a file, not a folder")
        dangling = next((parent for parent in out.parents if parent.is_symlink() and not parent.exists()), None)
        if dangling is not None:
            raise InputError(f"{out}: {out_name} cannot be written: the folder {dangling} is a link to "
                             f"{os.readlink(dangling)}, which does not exist")
        for in_name, folder in input_folders:
            image = _image_file_inside(out, folder)
            if image:
                raise InputError(f"{out}: {out_name} would replace a {image} file of {in_name} {folder}; "
                                 "choose a name no file of the study has")
        for in_name, source in inputs:
            if (out_name, in_name) not in allowed and same_path(out, source):
                raise InputError(f"{out}: {out_name} is the same file as {in_name} {source}"
                                 f"{_spelling(out, source)}; writing it would overwrite that input: "
                                 "choose another output path")
            if (out_name, in_name) in allowed:
                continue
            for data in written_data_files(out):  # a header and its data file: CT.MHD writes CT.zraw of CT.mhd
                for used in (source, *data_files_of(source)):
                    if same_path(data, used):
                        raise InputError(f"{out}: {out_name} would write its data file {data.name} over "
                                         f"{'' if used == source else 'the data of '}{in_name} {source}; "
                                         "choose another output name")
    for i, (name_a, a) in enumerate(outputs):
        for name_b, b in outputs[i + 1:]:
            if same_path(a, b):
                raise InputError(f"{b}: {name_b} is the same file as {name_a} {a}{_spelling(b, a)}; "
                                 "one would overwrite the other: choose another output path")
            files_a, files_b = [a, *written_data_files(a)], [b, *written_data_files(b)]
            if any(same_path(x, y) for x in files_a for y in files_b):
                raise InputError(f"{b}: {name_b} and {name_a} {a} would write the same data file (a header and "
                                 "its data file differ only in letter case or suffix); choose another output name")


def refuse_unwritable(outputs: Sequence[Named]) -> None:
    """Raise :class:`InputError` ``"OUT: --out cannot be written: ..."`` when no file can be created where an output
    goes: in its folder, or, where that folder is still to be made (the writers make it), in the nearest one
    that exists. Tried by creating (and removing) a hidden file there, as only that answers for root, a
    read-only mount, ``/proc`` or a network share alike. Why: an output found unwritable when the result was
    written came after the run's work, and after ``edit`` had printed each click as done."""
    from HNTumorSegLib.imaging.image_io import new_temporary_file, temporary_prefix

    tried: set[Path] = set()
    for name, path in outputs:
        if path is None:
            continue
        path = Path(path)
        folder = next((p for p in (path.parent, *path.parent.parents) if p.is_dir()), Path("."))
        if folder in tried:
            continue
        made: list[Path] = []
        try:
            os.close(new_temporary_file(folder, temporary_prefix(path.name), ".probe", made))
        except OSError as exc:
            raise InputError(f"{path}: {name} cannot be written: no file can be made in {folder} "
                             f"({exc.strerror or exc})") from None
        finally:
            for probe in made:
                probe.unlink(missing_ok=True)
        tried.add(folder)


def _image_file_inside(out: Path, folder: Path) -> str | None:
    """The modality of ``out`` when it is an existing DICOM image inside the input folder ``folder`` (a file
    of the study the command reads), else None. An RTSTRUCT or SEG there (an earlier run's) may be replaced."""
    if not out.is_file() or resolved_path(folder) not in resolved_path(out).parents:
        return None
    from HNTumorSegLib.imaging.input_integrity import looks_like_dicom

    if not looks_like_dicom(out):
        return None
    try:
        import pydicom

        modality = str(pydicom.dcmread(out, stop_before_pixels=True, specific_tags=["Modality"]).get("Modality", ""))
    except Exception:  # noqa: BLE001 - a DICOM file pydicom cannot read: still the study's, keep it
        modality = ""
    return None if modality in ("RTSTRUCT", "SEG") else (modality or "DICOM")


def refuse_folder_inside(out: Path, out_name: str, source: Path, source_name: str) -> None:
    """Raise :class:`InputError` when the output folder ``out`` is the input folder ``source`` or lies inside it
    (through links too). Why: ``batch`` searches ``--input`` for cases, so outputs written there become inputs
    of the next run (its state folder a failed case, a written label map a case's file)."""
    folder, inside = resolved_path(Path(source)), resolved_path(Path(out))
    if inside == folder or folder in inside.parents:
        where = "is" if inside == folder else "lies inside"
        plain, plain_out = Path(os.path.abspath(source)), Path(os.path.abspath(out))
        seen = plain_out == plain or plain in plain_out.parents  # inside as written: no link to point out
        raise InputError(f"{out}: {out_name} {where} {source_name} {source}"
                         f"{'' if seen else _spelling(Path(out), Path(source))}; "
                         f"the next run would find its outputs among the cases: choose a folder outside {source}")


def model_inputs(model: str | os.PathLike | None) -> list[Named]:
    """The files a ``--model`` option reads (its JSON and weights), as inputs."""
    if not model:
        return []
    from HNTumorSegLib.pipeline.model_info import model_json_path

    json_path = model_json_path(model)
    return [("--model", json_path), ("--model", json_path.with_suffix(".safetensors"))]
