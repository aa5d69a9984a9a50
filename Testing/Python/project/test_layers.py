"""HNTumorSegLib's layers stay true: imports run downward only, no cycles, no training package.

Why: a newcomer reads the library by its folders (see ``HNTumorSegLib/__init__.py``). That only
holds while every import goes from a higher layer to a lower one; one convenient upward import (the
inference library calling the command line, or the training package) and the layers are a fiction.
Every import statement counts, lazy ones inside functions and ``TYPE_CHECKING`` ones included: they
are dependencies a reader must follow all the same.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
LIBRARY = ROOT / "HNTumorSegLib"
PACKAGE = "HNTumorSegLib"

#: Layer of each subpackage (top-level modules and the package itself are the base, layer 0). A
#: module may import its own subpackage and any layer strictly below its own. The brief's order:
#: command line -> module support / DICOM -> pipeline -> network / geometry.
LAYERS = {
    "imaging": 1, "network": 1,
    "pipeline": 2,
    "dicom": 3, "evaluation": 3,
    "cases": 4, "editing": 4, "phantom": 4,
    "slicer_support": 5,
    "cli": 6,
}
BASE = "base"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(LIBRARY.rglob("*.py")) if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of ``known`` (and any other HNTumorSeg* package) that ``name`` imports, wherever the statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from pkg import submodule`` depends on the submodule itself.
            found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known)
    return {t for t in found if t.split(".")[0].startswith("HNTumorSeg") and t != name}


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return parts[0]  # another package (HNTumorSegTraining): never allowed
    if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS):
        return parts[1]
    return BASE


def rank(layer: str) -> int:
    return 0 if layer == BASE else LAYERS[layer]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """``A -> B`` lines for every import that is not downward or within one subpackage."""
    bad = []
    for source, targets in sorted(graph.items()):
        src = layer_of(source)
        for target in sorted(targets):
            dst = layer_of(target)
            if dst == src:
                continue
            if dst not in LAYERS and dst != BASE:
                bad.append(f"{source} -> {target} (the library never imports {dst})")
            elif src != BASE and rank(dst) >= rank(src):
                bad.append(f"{source} -> {target} ({src}, layer {rank(src)}, imports {dst}, layer {rank(dst)})")
            elif src == BASE and target != PACKAGE:
                bad.append(f"{source} -> {target} (a base module imports a subpackage)")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each a list of names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edge from a module to its own package's ``__init__``: Python runs a package's
    ``__init__`` before its submodules, so ``from HNTumorSegLib import LABELS`` inside a submodule
    is not a cycle, and a subpackage's ``__init__`` re-exporting its own modules is not one either."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def test_every_subpackage_has_a_layer_and_says_what_it_may_import():
    folders = sorted({p.parent for p in LIBRARY.rglob("*.py") if "__pycache__" not in p.parts} - {LIBRARY})
    names = {f.relative_to(LIBRARY).parts[0] for f in folders}
    assert names == set(LAYERS), f"subpackages without a layer (or layers without a folder): {names ^ set(LAYERS)}"
    for folder in folders:
        init = folder / "__init__.py"
        assert init.is_file(), f"{folder} holds Python but is not a package"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert "import" in doc.lower(), f"{init}: the docstring must say what the subpackage may import"


def test_imports_run_downward_only():
    bad = upward_imports(import_graph())
    assert not bad, "upward or foreign imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(_without_package_inits(import_graph()))
    assert not found, f"import cycles: {found}"


def test_the_checks_can_fail():
    graph = {
        "HNTumorSegLib.pipeline.preprocess": {"HNTumorSegLib.cli.commands", "HNTumorSegLib.imaging.geometry"},
        "HNTumorSegLib.cli.commands": {"HNTumorSegLib.cli.batch"},
        "HNTumorSegLib.cli.batch": {"HNTumorSegLib.cli.commands", "HNTumorSegTraining.cases"},
        "HNTumorSegLib.imaging.geometry": set(),
        "HNTumorSegLib.errors": {"HNTumorSegLib.imaging.geometry"},
    }
    bad = upward_imports(graph)
    assert any(line.startswith("HNTumorSegLib.pipeline.preprocess -> HNTumorSegLib.cli.commands") for line in bad)
    assert any("never imports HNTumorSegTraining" in line for line in bad)
    assert any(line.startswith("HNTumorSegLib.errors ->") for line in bad)
    assert not any("imaging.geometry (" in line and "preprocess" in line for line in bad)  # downward is fine
    assert cycles(graph) == [["HNTumorSegLib.cli.batch", "HNTumorSegLib.cli.commands"]]


def test_the_graph_sees_lazy_and_relative_imports():
    graph = import_graph()
    # cli.segment_case imports Segmenter inside run_segmentation, not at module level.
    assert "HNTumorSegLib.pipeline.inference" in graph["HNTumorSegLib.cli.segment_case"]
    # network.unet uses relative imports.
    assert "HNTumorSegLib.network.blocks" in graph["HNTumorSegLib.network.unet"]


@pytest.mark.parametrize("name", ["Segmenter", "preprocess", "restore"])
def test_public_names_resolve_at_the_top(name):
    import HNTumorSegLib

    assert name in dir(HNTumorSegLib) and callable(getattr(HNTumorSegLib, name))


def test_importing_the_package_does_not_load_torch():
    # The Slicer module imports HNTumorSegLib in the application's process, which may not have torch yet.
    code = ("import sys, HNTumorSegLib; from HNTumorSegLib import LABELS; "
            "import HNTumorSegLib.slicer_support.segmentation_job, HNTumorSegLib.dicom.segment_terminology; "
            "assert 'torch' not in sys.modules, 'torch loaded'; "
            "from HNTumorSegLib import Segmenter; assert 'torch' in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
