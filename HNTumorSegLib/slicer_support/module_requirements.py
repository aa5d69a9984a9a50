"""Which Python packages the Slicer module still needs, and how each gets installed.

Why: Slicer ships its own numpy and SimpleITK, which other modules depend on; reinstalling them
from pip can break Slicer, so they are never on the install list. torch must match the GPU
driver, which only the PyTorch extension's installer works out; everything else is a plain pip
requirement. This module decides; the Slicer module asks the user and installs.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from typing import Callable, Optional

#: Part of Slicer itself: checked, never installed.
BUNDLED_WITH_SLICER = ("numpy", "SimpleITK")
#: torch comes from the PyTorch extension's installer (it picks the CUDA build for the driver).
TORCH_REQUIREMENT = ">=2.2"
#: Import name -> pip requirement, for what the worker imports beyond Slicer's bundle.
PIP_REQUIREMENTS = {"safetensors": "safetensors>=0.4"}
#: Only the self-test's phantom needs these.
SELF_TEST_REQUIREMENTS = {"scipy": "scipy>=1.9"}


def is_importable(name: str) -> bool:
    """Whether ``import name`` would find a module, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def version_tuple(version: str) -> tuple[int, ...]:
    """"2.5.1+cu121" -> (2, 5, 1); non-numeric tails are ignored."""
    parts = []
    for piece in version.split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def torch_version_ok(version: Optional[str]) -> bool:
    minimum = version_tuple(TORCH_REQUIREMENT.lstrip(">="))
    return version is not None and version_tuple(version) >= minimum


@dataclass
class MissingRequirements:
    torch: bool = False                         # install through the PyTorch extension
    torch_version: Optional[str] = None         # installed but too old, when not None
    pip: list[str] = field(default_factory=list)      # pip requirement strings
    bundled: list[str] = field(default_factory=list)  # Slicer's own packages found missing: a broken Slicer

    @property
    def nothing(self) -> bool:
        return not (self.torch or self.torch_version or self.pip or self.bundled)

    def describe(self) -> str:
        """What would be installed, for the confirmation dialog."""
        lines = []
        if self.torch:
            lines.append(f"PyTorch (torch{TORCH_REQUIREMENT}), through the PyTorch extension's installer, "
                         "which picks the build for this computer's GPU driver")
        if self.torch_version:
            lines.append(f"a newer PyTorch: torch {self.torch_version} is installed, "
                         f"HNTumorSeg needs torch{TORCH_REQUIREMENT}")
        lines.extend(f"{req} (pip)" for req in self.pip)
        return "\n".join(f"- {line}" for line in lines)


def find_missing(importable: Callable[[str], bool] = is_importable,
                 torch_version: Optional[Callable[[], Optional[str]]] = None,
                 self_test: bool = False) -> MissingRequirements:
    """What is missing from this Python; ``importable`` and ``torch_version`` are injectable for tests."""
    missing = MissingRequirements()
    missing.bundled = [name for name in BUNDLED_WITH_SLICER if not importable(name)]
    if not importable("torch"):
        missing.torch = True
    else:
        version = torch_version() if torch_version is not None else installed_version("torch")
        if version is not None and not torch_version_ok(version):
            missing.torch_version = version
    wanted = dict(PIP_REQUIREMENTS, **(SELF_TEST_REQUIREMENTS if self_test else {}))
    missing.pip = [req for name, req in wanted.items() if not importable(name)]
    return missing


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of a distribution, without importing it (None when unknown)."""
    from importlib import metadata

    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
