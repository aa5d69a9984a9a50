"""A full disk or a read-only folder at any write of ``segment``: one line, no partial file, earlier outputs intact
(but the earlier report, once the label map it described is replaced).

The faults are injected where every output is written (``HNTumorSegLib.imaging.image_io``): a full disk
lets the n-th write put down part of its bytes, then raises ENOSPC, as a real filesystem does; a
read-only folder refuses the n-th temporary file with EROFS. ``segment`` with ``--probabilities`` makes
four writes (label map, probabilities, uncertainty map, JSON report); each is hit in turn, on a fresh
output folder and over the outputs of an earlier, complete run.
"""

from __future__ import annotations

import errno
import json
import pathlib

import pytest
import SimpleITK as sitk

from HNTumorSegLib.cli import main
from HNTumorSegLib.imaging import image_io

from test_cli_errors import assert_one_line_error

OUTPUTS = ("seg.nii.gz", "P.nii.gz", "P_uncertainty.nii.gz", "seg.json")


class Disk:
    """Counts the writes of image_io; the ``fail_at``-th one fails with ``fault``."""

    def __init__(self, monkeypatch, fault: str, fail_at: int):
        self.fault, self.fail_at, self.writes = fault, fail_at, 0
        real_write_image, real_write_text = sitk.WriteImage, pathlib.Path.write_text
        real_create_file = image_io._create_file

        def full(path, write):
            """Write, then keep only part of the bytes and raise ENOSPC (when it is the failing write)."""
            self.writes += 1
            write()
            if self.fault == "ENOSPC" and self.writes == self.fail_at:
                data = pathlib.Path(path).read_bytes()
                pathlib.Path(path).write_bytes(data[: len(data) // 3])
                raise OSError(errno.ENOSPC, "No space left on device", str(path))

        def write_image(image, path, *args):
            full(path, lambda: real_write_image(image, path, *args))

        def write_text(path, text, *args, **kwargs):
            if not path.name.startswith("."):  # only image_io's temporary files are the outputs' writes
                return real_write_text(path, text, *args, **kwargs)
            full(path, lambda: real_write_text(path, text, *args, **kwargs))

        def create_file(path):
            if self.fault == "EROFS" and self.writes + 1 == self.fail_at:
                raise OSError(errno.EROFS, "Read-only file system", str(path))
            return real_create_file(path)

        monkeypatch.setattr(sitk, "WriteImage", write_image)
        monkeypatch.setattr(pathlib.Path, "write_text", write_text)
        monkeypatch.setattr(image_io, "_create_file", create_file)


def segment(files, model, out, capsys):
    code = main(["segment", "--ct", str(files["ct"]), "--pet", str(files["pet"]), "--out", str(out / "seg.nii.gz"),
                 "--probabilities", str(out / "P.nii.gz"), "--model", str(model), "--device", "cpu"])
    return code, capsys.readouterr().err


def arrays(folder):
    """Each output that is there, read in full (a torn gzip or JSON raises)."""
    got = {}
    for name in OUTPUTS:
        path = folder / name
        if path.exists():
            got[name] = (json.loads(path.read_text())["output"] if name.endswith(".json")
                         else sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes())
    return got


@pytest.fixture(scope="module")
def complete(tmp_path_factory, small_model):
    """The outputs of a run on a healthy disk."""
    from conftest import tiny_ct_pet

    folder = tmp_path_factory.mktemp("disk")
    ct, pet = tiny_ct_pet()
    files = {"ct": folder / "ct.nii.gz", "pet": folder / "pet.nii.gz"}
    sitk.WriteImage(ct, str(files["ct"]))
    sitk.WriteImage(pet, str(files["pet"]))
    out = folder / "out"
    assert main(["segment", "--ct", str(files["ct"]), "--pet", str(files["pet"]), "--out", str(out / "seg.nii.gz"),
                 "--probabilities", str(out / "P.nii.gz"), "--model", str(small_model), "--device", "cpu"]) == 0
    return files, out


FULL, READ_ONLY = ("ENOSPC", "No space left on device"), ("EROFS", "Read-only file system")
#: Every write hit by a full disk on a fresh folder; over earlier outputs, and a read-only folder, first and last
#: (each case is a segment run: the suite's time).
CASES = [(FULL, n, False) for n in (1, 2, 3, 4)] + [(FULL, n, True) for n in (2, 4)] + \
        [(READ_ONLY, 1, False), (READ_ONLY, 4, True)]


@pytest.mark.parametrize("fault_words,fail_at,over_earlier", CASES,
                         ids=[f"{f[0]}-write{n}-{'over-earlier' if o else 'fresh'}" for f, n, o in CASES])
def test_a_failing_write_is_one_line_and_leaves_no_partial_file(complete, small_model, tmp_path, monkeypatch, capsys,
                                                                fault_words, fail_at, over_earlier):
    fault, words = fault_words
    files, reference_out = complete
    reference = arrays(reference_out)
    assert len(reference) == len(OUTPUTS)
    out = tmp_path / "out"
    if over_earlier:
        out.mkdir()
        for name in OUTPUTS:
            (out / name).write_bytes((reference_out / name).read_bytes())
    disk = Disk(monkeypatch, fault, fail_at)
    code, err = segment(files, small_model, out, capsys)
    assert_one_line_error(code, err, words, str(out))
    assert disk.writes == fail_at - (fault == "EROFS")  # it stopped at the failing write
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    after = arrays(out)
    if over_earlier:  # every earlier output is still there, whole (the run writes the same content), but the
        # earlier report once the label map was replaced: it would vouch for a run that did not complete
        assert set(after) == set(OUTPUTS) - ({"seg.json"} if fail_at > 1 else set())
    else:  # the writes before the failure are there, whole; nothing after it
        assert list(after) == list(OUTPUTS[: fail_at - 1])
    for name, value in after.items():
        if not name.endswith(".json"):
            assert value == reference[name], name


def _interrupt_as_a_temporary_is_created(monkeypatch, at: int) -> None:
    """Ctrl-C landing right after the ``at``-th hidden temporary file is created, before the creating call has
    returned (inside mkstemp, where it happened): the file is on disk and the writer has not seen its name."""
    import os

    real_open, created = os.open, []

    def open_then_interrupt(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        if flags & os.O_CREAT and os.path.basename(os.fsdecode(path)).startswith("."):
            created.append(path)
            if len(created) == at:
                os.close(fd)
                raise KeyboardInterrupt
        return fd

    monkeypatch.setattr(os, "open", open_then_interrupt)


def test_ctrl_c_as_an_outputs_temporary_file_is_created_leaves_no_file(tmp_path, monkeypatch):
    """atomic_path (every output of segment, edit, batch) left a 0-byte ``.report.json.XXXX.json`` behind."""
    out = tmp_path / "out"
    out.mkdir()
    _interrupt_as_a_temporary_is_created(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        image_io.write_json({"a": 1}, out / "report.json")
    monkeypatch.undo()
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("at", [1, 2], ids=["weights", "json"])
def test_ctrl_c_as_a_models_temporary_file_is_created_leaves_no_file(tmp_path, monkeypatch, at):
    """The model's pair of files (weights, then JSON) is written through temporaries of its own."""
    from HNTumorSegLib.pipeline.model_file import _write_pair, model_paths

    _interrupt_as_a_temporary_is_created(monkeypatch, at)
    with pytest.raises(KeyboardInterrupt):
        _write_pair(model_paths(tmp_path / "m"), b"weights", "{}")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
