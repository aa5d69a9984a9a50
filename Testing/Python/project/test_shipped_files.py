"""Shipped files carry no detail of the machine they were made on.

A model JSON once recorded the training machine's data folder (``/work/data/phantoms``); an
exported model now keeps names only (:func:`HNTumorSegTraining.export.portable`). These tests scan
every file of the tree that git would ship.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
from pathlib import Path

from HNTumorSegTraining.export import absolute_paths_in, portable

ROOT = Path(__file__).resolve().parents[3]


def _ignored_by_gitignore(relative: Path, patterns: list[str]) -> bool:
    """Our .gitignore's simple patterns (``name/``, ``*.suffix/``, ``/rooted/``) against a path's parts."""
    for pattern in patterns:
        rooted, bare = pattern.startswith("/"), pattern.strip("/")
        parts = relative.parts[:1] if rooted else relative.parts
        if pattern.endswith("/"):
            parts = parts if rooted else relative.parts[:-1]  # a folder pattern matches folders only
        if any(fnmatch.fnmatch(part, bare) for part in parts):
            return True
    return False


def shipped_files() -> list[Path]:
    """What git would ship: tracked and unignored files (CI's fresh copies have no .git: read .gitignore)."""
    if (ROOT / ".git").exists():
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, encoding="utf-8", check=True).stdout.splitlines()
        return [ROOT / name for name in listed if (ROOT / name).is_file()]
    patterns = [ln.strip() for ln in (ROOT / ".gitignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")] + [".git/"]
    return [p for p in ROOT.rglob("*") if p.is_file() and not _ignored_by_gitignore(p.relative_to(ROOT), patterns)]


def test_the_file_list_is_what_git_ships():
    files = {str(p.relative_to(ROOT)) for p in shipped_files()}
    assert {"README.md", "pyproject.toml", "HNTumorSegLib/models/hntumorseg_phantom_psam.json"} <= files
    assert not any(part in {".venv", "__pycache__", ".git"} for name in files for part in Path(name).parts)


def test_gitignore_patterns_are_read_as_git_reads_them():
    patterns = [".venv/", "*.egg-info/", "/out/"]
    assert _ignored_by_gitignore(Path(".venv/lib/x.py"), patterns)
    assert _ignored_by_gitignore(Path("hntumorseg.egg-info/PKG-INFO"), patterns)
    assert _ignored_by_gitignore(Path("out/a.json"), patterns)
    assert not _ignored_by_gitignore(Path("Testing/out/a.json"), patterns)
    assert not _ignored_by_gitignore(Path("HNTumorSegLib/venv.py"), patterns)


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
