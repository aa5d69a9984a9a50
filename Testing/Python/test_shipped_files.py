"""Shipped files carry no detail of the machine they were made on.

A model JSON once recorded the training machine's data folder (``/work/data/phantoms``); an
exported model now keeps names only (:func:`HNTumorSegTraining.export.portable`). These tests scan
every file of the tree that git would ship.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from HNTumorSegTraining.export import absolute_paths_in, portable

ROOT = Path(__file__).resolve().parents[2]


def shipped_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: cannot tell shipped files from build outputs")
    return [ROOT / name for name in listed if (ROOT / name).is_file()]


def test_no_json_file_holds_an_absolute_path():
    found = {}
    for path in shipped_files():
        if path.suffix == ".json":
            hits = absolute_paths_in(json.loads(path.read_text(encoding="utf-8")))
            if hits:
                found[str(path.relative_to(ROOT))] = hits
    assert found == {}


def test_no_shipped_file_names_this_checkout_or_home_folder():
    own = [str(ROOT), str(Path.home()) + "/"]
    found = []
    for path in shipped_files():
        if path.suffix in {".safetensors", ".png"}:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        found += [f"{path.relative_to(ROOT)}: {p}" for p in own if p in text]
    assert found == []


def test_portable_keeps_names_and_leaves_other_strings_alone():
    record = {"data_root": "/home/me/hecktor", "weights": ["C:\\runs\\a\\last.safetensors", "rel/dir"],
              "unc": "\\\\server\\share\\cache", "rule": "TP/(TP+FP)", "n": 3}
    assert portable(record) == {"data_root": "hecktor", "weights": ["last.safetensors", "rel/dir"],
                                "unc": "cache", "rule": "TP/(TP+FP)", "n": 3}
    assert absolute_paths_in(portable(record)) == [] and len(absolute_paths_in(record)) == 3
