"""The Slicer module's files agree with each other, read as text (Slicer cannot run here).

A widget name the code uses must exist in the .ui file; a parameter the code or the .ui binds
must be declared by the parameter node wrapper (and every declared one must be used); bound
widgets must suit their parameter's type; the library stays free of Slicer; the module imports
nothing from it that needs torch, so it loads (and offers to install torch) without it.
"""

from __future__ import annotations

import ast
import re
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULE_DIR = ROOT / "HNTumorSeg"
MODULE_PY = MODULE_DIR / "HNTumorSeg.py"
SCENE_LOGIC_PY = MODULE_DIR / "HNTumorSegSceneLogic.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "HNTumorSeg.ui"
ICON = MODULE_DIR / "Resources" / "Icons" / "HNTumorSeg.png"
#: Members of the parameter node wrapper itself, not parameters.
WRAPPER_API = {"parameterNode", "connectGui", "disconnectGui", "StartModify", "EndModify", "default",
               "isCached", "getValue", "setValue", "allParameters", "Modified"}
#: Widget classes the wrapper can bind, by parameter type.
BINDABLE = {"bool": {"QCheckBox", "QPushButton", "ctkCheckBox"}, "str": {"QLineEdit", "QComboBox"},
            "int": {"QSpinBox", "QSlider", "ctkSliderWidget"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"}}


@pytest.fixture(scope="module")
def source() -> str:
    return MODULE_PY.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def scene_source() -> str:
    return SCENE_LOGIC_PY.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def ui():
    """(widget class by name, parameter bound by widget name, connection receivers)."""
    tree = ET.parse(UI_FILE)
    classes, bindings = {}, {}
    for w in tree.iter("widget"):
        classes[w.get("name")] = w.get("class")
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings[w.get("name")] = prop.find("string").text
    receivers = [c.findtext("receiver") for c in tree.iter("connection")]
    return classes, bindings, receivers


@pytest.fixture(scope="module")
def parameters(source) -> dict[str, str]:
    """Declared parameters of the @parameterNodeWrapper class: name -> annotation text."""
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id: ast.unparse(s.annotation) for s in node.body if isinstance(s, ast.AnnAssign)}
    pytest.fail("no @parameterNodeWrapper class in HNTumorSeg.py")


def test_module_has_the_scripted_module_classes(source):
    names = {n.name for n in ast.parse(source).body if isinstance(n, ast.ClassDef)}
    assert {"HNTumorSeg", "HNTumorSegWidget", "HNTumorSegLogic", "HNTumorSegTest",
            "HNTumorSegParameterNode"} <= names


def test_every_widget_the_code_uses_is_in_the_ui_file(source, ui):
    classes, _, receivers = ui
    used = set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", source))
    assert used, "the widget uses no self.ui names: the pattern is stale"
    assert sorted(used - set(classes)) == []
    assert sorted(set(receivers) - set(classes)) == []


def test_every_parameter_used_is_declared_and_every_declared_one_is_used(source, scene_source, ui, parameters):
    _, bindings, _ = ui
    used = set(re.findall(r"(?:self\._parameterNode|\bparams)\.([A-Za-z_]\w*)", source + scene_source)) - WRAPPER_API
    assert used, "the code reads no parameters: the pattern is stale"
    assert sorted(used - set(parameters)) == [], "parameters used in code but not declared"
    assert sorted(set(bindings.values()) - set(parameters)) == [], "SlicerParameterName bindings not declared"
    assert sorted(set(parameters) - used - set(bindings.values())) == [], "declared parameters nobody uses"


def test_bound_widgets_suit_their_parameter_types(ui, parameters):
    classes, bindings, _ = ui
    tree = ET.parse(UI_FILE)
    node_types = {w.get("name"): [s.text for s in w.iter("string")] for w in tree.iter("widget")
                  if w.get("class") == "qMRMLNodeComboBox"}
    for widget, parameter in bindings.items():
        annotation = parameters[parameter]
        if annotation.startswith("vtkMRML"):
            assert classes[widget] == "qMRMLNodeComboBox", (widget, parameter)
            assert annotation in node_types[widget], f"{widget} offers {node_types[widget]}, {parameter} is {annotation}"
        else:
            assert classes[widget] in BINDABLE.get(annotation, set()), (widget, classes[widget], annotation)


def test_the_structural_checks_can_fail(tmp_path, source):
    # A misspelt widget name is caught by the same pattern the real test uses.
    classes = {w.get("name") for w in ET.parse(UI_FILE).iter("widget")}
    mutated = source.replace("self.ui.segmentButton.text", "self.ui.segmentButon.text", 1)
    assert mutated != source
    assert "segmentButon" in set(re.findall(r"self\.ui\.([A-Za-z_]\w*)", mutated)) - classes


def test_library_never_imports_slicer():
    forbidden = {"slicer", "qt", "ctk", "vtk", "sitkUtils", "PythonQt", "mrml"}
    offenders = []
    for path in (ROOT / "HNTumorSegLib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert offenders == []


def test_scene_logic_records_only_declared_parameters(scene_source, parameters):
    # Outside the application the scene logic records a run in SceneParameters; inside, the module's
    # parameter node takes its place: every field must be a declared parameter.
    tree = ast.parse(scene_source)
    fields = {s.target.id for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SceneParameters"
              for s in n.body if isinstance(s, ast.AnnAssign)}
    assert fields and fields <= set(parameters), fields - set(parameters)


def test_scene_logic_needs_neither_qt_nor_the_scripted_module_classes(scene_source):
    imported = set()
    for node in ast.parse(scene_source).body:
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
    assert "slicer" in imported
    assert not {m for m in imported if m.split(".")[0] in {"qt", "ctk", "PythonQt", "sitkUtils"}
                or "ScriptedLoadableModule" in m or "parameterNodeWrapper" in m}


def test_module_loads_its_library_without_torch(source, scene_source):
    modules = sorted({n.module for n in ast.parse(source + "\n" + scene_source).body
                      if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("HNTumorSegLib")})
    assert len(modules) >= 5
    code = ("import sys\nfor m in ('torch', 'safetensors', 'scipy', 'matplotlib'): sys.modules[m] = None\n"
            + "".join(f"import {m}\n" for m in modules))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_module_finds_the_library_in_a_source_checkout(source, scene_source):
    # Loaded as an additional module path, the module must put the checkout root on sys.path: the
    # scene logic does it, and HNTumorSeg.py imports it before anything of HNTumorSegLib.
    assert "os.path.dirname(os.path.dirname(os.path.abspath(__file__)))" in scene_source
    imports = [n.module for n in ast.parse(source).body if isinstance(n, ast.ImportFrom)]
    first_library = min(i for i, m in enumerate(imports) if (m or "").startswith("HNTumorSegLib"))
    assert imports.index("HNTumorSegSceneLogic") < first_library
    assert (MODULE_DIR.parent / "HNTumorSegLib" / "__init__.py").is_file()


def test_cmake_builds_the_module_and_packages_the_library():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "${MODULE_NAME}SceneLogic.py" in text and SCENE_LOGIC_PY.is_file()
    assert "ctkMacroCompilePythonScript" in text and "HNTumorSegLib/*.py" in text
    # The library is layered in subpackages: the glob must recurse, and each folder holding
    # Python must be a package (an __init__.py) for the compiled copy to import.
    assert "file(GLOB_RECURSE HNTUMORSEGLIB_PYTHON_SCRIPTS" in text
    library = ROOT / "HNTumorSegLib"
    folders = {p.parent for p in library.rglob("*.py") if "__pycache__" not in p.parts}
    assert len(folders) > 1 and all((f / "__init__.py").is_file() for f in folders), folders
    for resource in ("Resources/Icons/${MODULE_NAME}.png", "Resources/UI/${MODULE_NAME}.ui"):
        assert resource in text
        assert (MODULE_DIR / resource.replace("${MODULE_NAME}", "HNTumorSeg")).is_file()
    assert "add_subdirectory(HNTumorSeg)" in (ROOT / "CMakeLists.txt").read_text()


def test_icon_is_a_small_png():
    data = ICON.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert 32 <= width <= 256 and width == height
    assert len(data) < 20_000
