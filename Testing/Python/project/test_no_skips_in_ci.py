"""In CI a skip fails the run (no_skips_in_ci.py); elsewhere it stays a skip with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1]


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    """A small suite: a pass, a skip in a test, a module skipped at import, an expected failure."""
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["no_skips_in_ci"]\n')
    (tmp_path / "test_mixed.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_needs_a_tool(): pytest.skip('plastimatch is not installed')\n"
        "@pytest.mark.xfail(reason='known', strict=True)\n"
        "def test_known_failure(): assert False\n")
    (tmp_path / "test_needs_a_package.py").write_text(
        "import pytest\npytest.importorskip('hntumorseg_no_such_package')\ndef test_never(): pass\n")
    return tmp_path


def run_suite(target: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(PLUGIN_DIR), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(target)],
                          cwd=target if target.is_dir() else target.parent, env=env, capture_output=True, text=True,
                          encoding="utf-8", timeout=120)


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_in_ci_a_skip_in_a_test_fails_and_keeps_its_reason(suite, ci):
    run = run_suite(suite / "test_mixed.py", ci)
    out = run.stdout + run.stderr
    assert run.returncode == 1, out
    assert "skipped in CI (plastimatch is not installed): in CI nothing may skip" in out
    assert out.splitlines()[-1].startswith("1 failed, 1 passed, 1 xfailed"), out


def test_in_ci_a_module_skipped_at_import_stops_the_run(suite):
    run = run_suite(suite, "true")
    out = run.stdout + run.stderr
    assert run.returncode == 2, out  # a collection error: pytest runs nothing and says why
    assert "ERROR test_needs_a_package.py - skipped in CI" in out and "hntumorseg_no_such_package" in out


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_outside_ci_a_skip_stays_a_skip(suite, ci):
    run = run_suite(suite, ci)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert out.splitlines()[-1].startswith("1 passed, 2 skipped, 1 xfailed"), out
