"""Packages that only some commands need, and the one-line error when one is missing.

Why: a base install (``pip install -e .``) runs everything a clinician or physicist uses. The
training extra (``.[train]``) adds what only researchers need (MONAI's UNETR baseline, TensorBoard).
A newcomer who reaches such a command without the extra must read which package is missing and
the ``pip install`` that brings it, not a ``ModuleNotFoundError`` traceback. The table below is the
one place that says which extra brings which package; a test checks it against ``pyproject.toml``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from HNTumorSegLib.errors import InputError


@dataclass(frozen=True)
class OptionalPackage:
    """An importable module, the requirement that installs it, and the project extra that lists it."""

    module: str
    requirement: str
    extra: str


#: Top-level module name -> how to get it. Only packages outside the base dependencies belong here.
OPTIONAL_PACKAGES: dict[str, OptionalPackage] = {
    p.module: p for p in (
        OptionalPackage("monai", "monai>=1.3", "train"),
        OptionalPackage("einops", "einops>=0.6", "train"),
        OptionalPackage("tensorboard", "tensorboard>=2.10", "train"),
        OptionalPackage("pytest", "pytest>=7", "dev"),
    )
}


class MissingPackageError(InputError):
    """A command needs a package of an extra that is not installed: one line, with the fix."""


def install_hint(module: str) -> str:
    """The pip command that brings ``module``: its extra for ours, a reinstall for base packages."""
    top = module.split(".")[0]
    package = OPTIONAL_PACKAGES.get(top)
    if package is None:
        return "pip install -e . (in the HNTumorSeg checkout; a base dependency is missing)"
    return f"pip install '{package.requirement}' (or pip install -e '.[{package.extra}]' in the HNTumorSeg checkout)"


def missing_package_message(module: str, needed_for: str) -> str:
    top = module.split(".")[0]
    return f"{needed_for} needs the Python package '{top}', which is not installed: {install_hint(top)}"


def require(module: str, needed_for: str) -> ModuleType:
    """Import ``module``; when it (or a package it needs) is missing, one :class:`MissingPackageError` line.

    ``needed_for`` names what the user asked for ("the unetr model"), so the line says why.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise MissingPackageError(missing_package_message(exc.name or module, needed_for)) from None
