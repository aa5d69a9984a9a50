"""The README's set-up section is the contract that .ci/run executes: two commands, as written.

CI extracts them with ``.ci/readme_commands.py``; these tests pin what the two must be, so an edit
that would make CI test something other than what a newcomer runs fails here first.
"""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def _extractor():
    spec = importlib.util.spec_from_file_location("readme_commands", ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_holds_the_main_job_on_a_base_install_then_the_tests():
    main, tests = _extractor().setup_commands((ROOT / "README.md").read_text(encoding="utf-8"))
    main_words = shlex.split(main)
    # The main job installs the package without extras: what a newcomer gets must be enough.
    assert "-e" in main_words and main_words[main_words.index("-e") + 1] == "."
    assert "hntumorseg" in main and " demo " in main and "--out" in main_words
    assert "pytest" in tests and ".[dev]" in tests


def test_ci_runs_the_extracted_commands_in_fresh_copies():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert ".ci/readme_commands.py" in ci
    assert 'bash -euo pipefail -c "${readme_cmds[0]}"' in ci and 'bash -euo pipefail -c "${readme_cmds[1]}"' in ci
    assert "pytest" not in ci.replace("python3 .ci/readme_commands.py", "")  # no second, drifting copy


@pytest.mark.parametrize("section, problem", [
    ("## Set-up\n\n```bash\nonly one\n```\n", "expected 2 commands"),
    ("## Set-up\n\n```bash\na\nb\n```\n```bash\nc\n```\n", "one command line"),
    ("## Usage\n", "no '## Set-up' section"),
])
def test_a_readme_that_breaks_the_contract_is_refused(section, problem):
    with pytest.raises(ValueError, match=problem):
        _extractor().setup_commands("# Title\n\n" + section + "\n## Next\n")


def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch):
    # The Python section is what a researcher pastes first: it must run on a case, unchanged.
    import re

    import SimpleITK as sitk
    from conftest import tiny_ct_pet

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python\n"):text.index("## Layout")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1
    ct, pet = tiny_ct_pet()
    sitk.WriteImage(ct, str(tmp_path / "CT.nii.gz"))
    sitk.WriteImage(pet, str(tmp_path / "PT.nii.gz"))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(blocks[0], "README.md (Python)", "exec"), scope)
    out = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    assert out.GetSize() == ct.GetSize() and scope["pre"].image.shape == (2, 112, 256, 256)
    assert scope["mask_on_ct"].GetSize() == ct.GetSize()
