"""What a base install (``pip install -e .``, no extras) can import, and what a missing extra says.

The test venv has the extras installed, so a plain ``import`` here would not notice a module that
needs one: that is how ``hntumorseg demo`` once failed for every newcomer (``phantom`` needed scipy,
which only the dev extra brought). Instead, a child interpreter refuses every installed package
outside the base dependencies (and what they pull in) and imports every module of
``HNTumorSegLib``; the module list comes from the package itself, so a new module cannot slip through.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest

import HNTumorSegLib
from HNTumorSegLib.optional_packages import OPTIONAL_PACKAGES, MissingPackageError, require

ROOT = Path(__file__).resolve().parents[3]
OWN_PACKAGES = {"HNTumorSegLib", "HNTumorSegTraining"}
#: Imported under try/except with a fallback, never needed: (top-level module, why).
GUARDED_IMPORTS = {"mamba_ssm": "optional fused CUDA scan of umamba; the PyTorch scan is used without it"}

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = None


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def project_requirements() -> tuple[list[str], dict[str, list[str]]]:
    """(base dependencies, extras) as pyproject.toml declares them (installed metadata on 3.10)."""
    if tomllib is not None:
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        return project["dependencies"], project["optional-dependencies"]
    base, extras = [], {}
    for req in md.requires("hntumorseg") or []:
        m = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", req)
        (extras.setdefault(m.group(1), []) if m else base).append(req.split(";")[0].strip())
    return base, extras


def _runtime_requires(dist: str) -> list[str]:
    """Requirements of an installed distribution that apply here without any extra."""
    from packaging.requirements import Requirement

    out = []
    for text in md.requires(dist) or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req.name)
    return out


def closure(requirements: list[str]) -> set[str]:
    """Normalised names of the installed distributions these requirements pull in, transitively."""
    seen: set[str] = set()
    todo = [_name(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo.extend(_name(r) for r in _runtime_requires(name))
        except md.PackageNotFoundError:
            pass
    return seen


def importable_names(distributions: set[str]) -> set[str]:
    """Top-level module names that these installed distributions provide."""
    names = set()
    for module, dists in md.packages_distributions().items():
        if any(_name(d) in distributions for d in dists):
            names.add(module)
    return names


def blocked_modules(allowed_distributions: set[str]) -> set[str]:
    """Installed top-level modules outside ``allowed_distributions`` (stdlib and our own excluded)."""
    allowed = importable_names(allowed_distributions)
    installed = set(md.packages_distributions())
    return {m for m in installed - allowed - OWN_PACKAGES - set(sys.stdlib_module_names)
            if not m.startswith("_")} - {"pip", "setuptools", "pkg_resources"}


#: Child program: refuse the blocked top-level modules, import each module, print what failed.
_CHILD = r"""
import importlib, importlib.abc, json, sys
blocked, modules = set(json.loads(sys.argv[1])), json.loads(sys.argv[2])
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (not a base dependency)", name=name)
        return None
sys.meta_path.insert(0, Refuse())
failed = {}
for m in modules:
    try:
        importlib.import_module(m)
    except Exception as exc:
        failed[m] = f"{type(exc).__name__}: {exc}"
print(json.dumps(failed))
"""


def import_with_only(allowed_distributions: set[str], modules: list[str]) -> dict[str, str]:
    blocked = sorted(blocked_modules(allowed_distributions))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(blocked), json.dumps(modules)],
                          capture_output=True, text=True, encoding="utf-8", cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def package_modules(package) -> list[str]:
    return [package.__name__] + sorted(m.name for m in pkgutil.walk_packages(package.__path__,
                                                                              package.__name__ + "."))


def test_every_library_module_imports_with_the_base_dependencies_alone():
    base, _ = project_requirements()
    modules = package_modules(HNTumorSegLib)
    assert len(modules) > 30 and "HNTumorSegLib.phantom" in modules and "HNTumorSegLib.network.psam" in modules
    failed = import_with_only(closure(base), modules)
    assert failed == {}


def test_the_check_catches_a_module_that_needs_more_than_the_base():
    """Without scipy among the base dependencies (as before this test existed) the demo's phantom fails."""
    base, _ = project_requirements()
    without_scipy = [r for r in base if _name(r) != "scipy"]
    assert len(without_scipy) == len(base) - 1
    failed = import_with_only(closure(without_scipy), ["HNTumorSegLib.phantom", "HNTumorSegLib.pipeline.crop"])
    assert list(failed) == ["HNTumorSegLib.phantom"]
    assert "scipy" in failed["HNTumorSegLib.phantom"]


def test_every_training_module_imports_with_the_base_dependencies_alone():
    """The extra is for the UNETR baseline and TensorBoard, reached through ``require`` or a guarded import."""
    import HNTumorSegTraining

    base, _ = project_requirements()
    failed = import_with_only(closure(base), package_modules(HNTumorSegTraining))
    assert failed == {}


def _imported_top_level_names(path: Path) -> set[str]:
    """Every module a source file imports, at any depth (lazy imports inside functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package_dir, extra", [("HNTumorSegLib", None), ("Training/HNTumorSegTraining", "train")])
def test_lazy_imports_need_nothing_outside_the_declared_dependencies(package_dir, extra):
    """Imports inside functions run only on some paths; each must be stdlib, ours, declared, or guarded."""
    base, extras = project_requirements()
    allowed = importable_names(closure(base + (extras[extra] if extra else [])))
    allowed |= set(sys.stdlib_module_names) | OWN_PACKAGES | set(GUARDED_IMPORTS)
    offending = {}
    for path in sorted((ROOT / package_dir).rglob("*.py")):
        extra_names = _imported_top_level_names(path) - allowed
        if extra_names:
            offending[str(path.relative_to(ROOT))] = sorted(extra_names)
    assert offending == {}


def test_the_optional_package_table_matches_pyproject():
    _, extras = project_requirements()
    for package in OPTIONAL_PACKAGES.values():
        assert package.requirement in extras[package.extra], package
    base, _ = project_requirements()
    assert not {_name(r) for r in base} & {_name(p.requirement) for p in OPTIONAL_PACKAGES.values()}


def uninstall(monkeypatch, package: str) -> None:
    """Make ``package`` (and any of its modules already imported) unimportable, as if not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


def test_a_missing_extra_is_one_line_naming_the_package_and_the_pip_install(monkeypatch):
    uninstall(monkeypatch, "monai")
    with pytest.raises(MissingPackageError) as info:
        require("monai.networks.nets", "the unetr model")
    message = str(info.value)
    assert "\n" not in message
    assert "the unetr model needs the Python package 'monai'" in message
    assert "pip install 'monai>=1.3'" in message and "'.[train]'" in message


def test_training_cli_with_unetr_but_no_monai_is_one_line(monkeypatch, capsys):
    from HNTumorSegTraining.models import build_from_spec, make_spec
    from HNTumorSegLib.cli.guard import run_guarded

    uninstall(monkeypatch, "monai")
    spec = make_spec("unetr", patch_size=(32, 32, 32))

    class Args:
        func = staticmethod(lambda args: build_from_spec(spec))

    assert run_guarded("hntumorseg-train", Args.func, Args()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hntumorseg-train: error: the unetr model needs")
    assert "pip install" in err[0]


def test_any_module_missing_at_run_time_is_one_line_not_a_traceback(capsys):
    from HNTumorSegLib.cli.guard import run_guarded

    def cmd_fit(args):
        raise ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard")

    class Args:
        func = staticmethod(cmd_fit)

    assert run_guarded("hntumorseg-train", cmd_fit, Args()) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hntumorseg-train: error: hntumorseg-train fit needs the Python package 'tensorboard', which is "
                   "not installed: pip install 'tensorboard>=2.10' (or pip install -e '.[train]' in the HNTumorSeg "
                   "checkout)"]
