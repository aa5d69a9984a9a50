"""In CI, a skip is a failure: what the README calls verified must run there.

Why: a test skips when what it needs is missing (plastimatch or dciodvfy that apt-get failed to
install, slicer-core off its one platform, pydicom's test files). On a newcomer's machine a skip
with its reason is right; in CI it would let a check vanish while the run stays green. With ``CI``
set to ``true`` (``.ci/run`` sets it; so do GitHub Actions and GitLab CI) every skip, at collection
(``pytest.importorskip`` at module level) or in a test, is reported as a failure that keeps the
skip's reason. Loaded by ``conftest.py`` as a plugin.
"""

from __future__ import annotations

import os

import pytest


def skips_fail() -> bool:
    """True where skips count as failures: ``CI=true`` (any case) or ``CI=1``."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _as_failure(report) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    reason = reason.removeprefix("Skipped: ")
    report.outcome = "failed"
    report.longrepr = f"skipped in CI ({reason}): in CI nothing may skip; install what it names"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and skips_fail() and not hasattr(report, "wasxfail"):
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and skips_fail():
        _as_failure(report)
