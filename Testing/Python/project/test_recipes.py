"""The training recipes (``Training/recipes/*.sh``) run as written, with every command line they build
parsed by the real ``hntumorseg-train`` parser.

Why: a recipe is run rarely and expensively (two hours on a CPU; the few minutes of a lent GPU), so
an option renamed in the CLI, or a shell variable that expands wrongly, would be found only then.
Here the recipes run end to end against stand-ins that parse each ``hntumorseg-train`` command with
``build_parser`` and do no work (a stand-in ``fit`` writes the two-epoch history the GPU recipe's
calibration reads); everything else in the scripts (the shell logic, the Python they embed, the
packing) is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import stopped_group

ROOT = Path(__file__).resolve().parents[3]
RECIPES = ROOT / "Training" / "recipes"

#: Parses a ``hntumorseg-train`` command line (``-m HNTumorSegTraining.cli ARGS`` or ``ARGS``) and logs it;
#: any other Python invocation (``-c``, ``-``, a script) runs for real.
STAND_IN = '''
import csv, os, sys
args = sys.argv[1:]
if args[:2] == ["-m", "HNTumorSegTraining.cli"]:
    args = args[2:]
elif os.path.basename(sys.argv[0]) != "hntumorseg-train":
    os.execv(sys.executable, [sys.executable, *args])
from HNTumorSegTraining.cli import build_parser
parsed = build_parser().parse_args(args)  # exits 2 with argparse's message on a bad option
with open(os.environ["RECIPE_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if parsed.command == "fit":
    os.makedirs(parsed.out, exist_ok=True)
    with open(os.path.join(parsed.out, "history.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "seconds"])
        w.writerows([[1, 3.0], [2, 1.0]])
'''


def _stand_in(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{STAND_IN}")
    path.chmod(0o755)
    return path


def _run(script: str, env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(RECIPES / script)], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)


def _commands(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()]


def test_the_stand_in_refuses_what_the_cli_refuses(tmp_path):
    """So that the recipe tests below can fail: a bad option exits 2."""
    tool = _stand_in(tmp_path / "bin", "hntumorseg-train")
    env = {**os.environ, "RECIPE_LOG": str(tmp_path / "log")}
    bad = subprocess.run([str(tool), "fit", "--cache", "C", "--out", "R", "--no-such-option"], env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--no-such-option" in bad.stderr
    good = subprocess.run([str(tool), "fit", "--cache", "C", "--out", str(tmp_path / "R")], env=env)
    assert good.returncode == 0 and (tmp_path / "R" / "history.csv").is_file()


def test_the_robust_phantom_recipe_runs_every_step_with_options_the_cli_takes(tmp_path):
    _stand_in(tmp_path / "bin", "hntumorseg-train")
    log = tmp_path / "log"
    done = _run("robust_phantom_model.sh", {"DATA": str(tmp_path / "data"), "BIN": str(tmp_path / "bin"),
                                            "INIT": "HNTumorSegLib/models/hntumorseg_phantom_psam.json",
                                            "RECIPE_LOG": str(log)})
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [c[0] for c in _commands(log)]
    assert steps == ["phantoms"] * 3 + ["prepare"] * 2 + ["fit", "postprocess", "evaluate", "evaluate", "export"]
    fit = _commands(log)[5]
    assert fit[fit.index("--init-weights") + 1].endswith("hntumorseg_phantom_psam.json")
    assert fit[fit.index("--patch-size") + 1:fit.index("--patch-size") + 4] == ["32", "80", "80"]


def _click_recipe_env(tmp_path: Path, **more: str) -> dict[str, str]:
    return {"OUT": str(tmp_path / "out"), "DATA": str(tmp_path / "data"), "DEVICE": "cpu", "PY": sys.executable,
            "SEEDS": "940004:940005", "VAL_SEEDS": "940008:940009", "CT_MATRIX": "64", "BATCH": "2",
            "BENCH_CASES": "1", "BUDGET_S": "400", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'Training'}", **more}


@pytest.mark.parametrize("runs", ["p32x80 p48x112", "p32x80"])
def test_the_gpu_recipe_calibrates_trains_and_packs_with_options_the_cli_takes(tmp_path, runs):
    python = _stand_in(tmp_path / "bin", "python")
    log, out = tmp_path / "log", tmp_path / "out"
    done = _run("gpu_short_run.sh", {"OUT": str(out), "DATA": str(tmp_path / "data"), "PY": str(python),
                                     "DEVICE": "cpu", "THROUGHPUT": "0", "BUDGET_S": "200", "RUNS": runs,
                                     "LR": "1e-3", "INIT": "HNTumorSegLib/models/hntumorseg_phantom_psam.json",
                                     "RECIPE_LOG": str(log)})
    assert done.returncode == 0, (done.stderr[-2000:], (out / "session.log").read_text()[-2000:])
    names = runs.split()
    steps = [c[0] for c in _commands(log)]
    assert steps == ["phantoms", "prepare"] + ["fit"] * (2 * len(names))
    fits = [c for c in _commands(log) if c[0] == "fit"]
    assert all(c[c.index("--lr") + 1] == "1e-3" and "--init-weights" in c for c in fits)
    # the calibration's rate (1 s an epoch of CALIBRATION_SAMPLES) sets the runs' epochs: more than one
    assert all(int(c[c.index("--epochs") + 1]) > 1 for c in fits[len(names):])
    for name in names:
        with tarfile.open(out / f"run_{name}.tgz") as packed:
            assert f"run_{name}/history.csv" in packed.getnames()


@pytest.mark.parametrize("unseen", ["", "UNSEEN_FOLDER"])
def test_the_fold_ensemble_recipe_trains_each_fold_and_exports_one_evaluated_ensemble(tmp_path, unseen):
    _stand_in(tmp_path / "bin", "hntumorseg-train")
    log = tmp_path / "log"
    done = _run("fold_ensemble.sh", {"CACHE": "C", "TUNE_CACHE": "T", "OUT": str(tmp_path / "folds"), "FOLDS": "3",
                                     "UNSEEN": unseen, "BIN": str(tmp_path / "bin"), "RECIPE_LOG": str(log)})
    assert done.returncode == 0, done.stderr[-2000:]
    commands = _commands(log)
    evaluations = 2 if unseen else 1
    assert [c[0] for c in commands] == ["fit"] * 3 + ["postprocess", "export"] + ["evaluate"] * evaluations + ["export"]
    assert [c[c.index("--fold") + 1] for c in commands[:3]] == ["0", "1", "2"]
    runs = [c[c.index("--out") + 1] for c in commands[:3]]
    for c in commands[3:5] + commands[-1:]:  # the clean-up and both exports name every fold's run
        assert [c[i + 1] for i, word in enumerate(c) if word == "--run"] == runs
    final = commands[-1]
    assert final.count("--evaluation") == evaluations and "--unevaluated" not in final



def test_the_gpu_click_model_recipe_rehearsed_on_the_cpu_draws_trains_both_runs_and_benchmarks_them(tmp_path):
    """For real, small: the recipe's rehearsal (its header's command) on this CPU. A lent GPU's minutes are
    too few to find a shell mistake there: samples drawn by spawned processes, both runs trained and
    written, each benchmarked node by node beside the bundled model, what comes back packed in at most 8 files."""
    from HNTumorSegLib.editing.click_model import ClickModel

    out, data = tmp_path / "out", tmp_path / "data"
    done = _run("gpu_click_model.sh", _click_recipe_env(tmp_path, SEEDS="940000:940003", VAL_SEEDS="940650:940651",
                                                        BUDGET_S="120", BENCH_S="30", LOADERS="1"))
    assert done.returncode == 0, (done.stderr[-2000:], (out / "session.log").read_text()[-2000:])
    assert sorted(p.name for p in out.iterdir()) == ["bench_bundled.log", "bench_wide.log", "benchmarks.tgz",
                                                     "models.tgz", "session.log", "summary.txt", "train_bundled.log",
                                                     "train_wide.log"]
    summary = (out / "summary.txt").read_text()
    assert "network [16, 32, 64, 128]" in summary and "network [8, 16, 32, 64]" in summary
    assert "1 loader workers" in summary
    # each model's table, and the bundled one's as it is, to compare with
    tables = [line.split()[1] for line in summary.splitlines() if line.startswith("==")]
    assert tables == ["wide", "bundled", "as_bundled"]
    assert summary.count("| network | centre |") == 3 and summary.count("3 nodes of 1 cases") == 3
    with tarfile.open(out / "models.tgz") as packed:
        assert {"models/click_wide.json", "models/click_bundled.safetensors"} <= set(packed.getnames())
    assert ClickModel(data / "models" / "click_wide.json").network.config.channels == (16, 32, 64, 128)
    bundled = json.loads((data / "models" / "click_bundled.json").read_text())["trained_on"]
    assert bundled["init"] == "hntumorseg_phantom_node_clicks" and bundled["lr"] == 5e-4
    with tarfile.open(out / "benchmarks.tgz") as packed:
        assert {f"benchmarks/{name}/click_nodes.json" for name in tables} <= set(packed.getnames())
        assert "benchmarks/as_bundled.log" in packed.getnames()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="the machine has CUDA: nothing to refuse")
def test_the_gpu_click_model_recipe_without_cuda_stops_before_drawing_anything(tmp_path):
    done = _run("gpu_click_model.sh", _click_recipe_env(tmp_path, DEVICE="cuda"))
    assert done.returncode == 1 and "torch sees no CUDA device" in done.stderr
    assert not list((tmp_path / "data").glob("s*.npz"))


def test_the_gpu_click_model_recipe_never_reports_an_earlier_sessions_model(tmp_path):
    """A reused DATA held last session's click_wide.*: a run that failed now still packed and judged it."""
    models = tmp_path / "data" / "models"
    models.mkdir(parents=True)
    (models / "click_wide.json").write_text("{}")
    (models / "click_wide.safetensors").write_bytes(b"old")
    done = _run("gpu_click_model.sh", _click_recipe_env(tmp_path, RUNS="wide", BATCH="0"))  # BATCH 0: refused
    assert done.returncode == 1 and "no run wrote a model" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "out" / "models.tgz").exists() and not (models / "click_wide.json").exists()


def test_the_gpu_click_model_recipe_stopped_ends_its_steps_and_keeps_what_they_trained(tmp_path):
    """A stop sent to the recipe (the session's end) did not reach its steps, each in a process group of its own
    under `timeout`: they ran on after it, and Ctrl-C waited for the step's own time limit. Now the recipe passes
    SIGTERM on, waits, and packs the networks the stopped runs wrote."""
    import signal
    import time

    env = {**os.environ, **_click_recipe_env(tmp_path, RUNS="wide", BUDGET_S="600")}
    process = subprocess.Popen(["bash", str(RECIPES / "gpu_click_model.sh")], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    log = tmp_path / "out" / "train_wide.log"

    def training():
        deadline = time.monotonic() + 240
        while not (log.is_file() and "network [" in log.read_text()):  # the run is training
            assert time.monotonic() < deadline and process.poll() is None, "the run did not start"
            time.sleep(0.5)
        time.sleep(8)  # some steps

    _, err = stopped_group(process, training, signal.SIGTERM)
    assert process.returncode == 143, err[-2000:]
    left = subprocess.run(["pgrep", "-f", str(tmp_path / "data")], capture_output=True, text=True).stdout.split()
    assert left == [], "steps still running after the recipe ended"
    session = (tmp_path / "out" / "session.log").read_text()
    assert "stopped (SIGTERM)" in session and "kept: models/click_wide.json" in session
    with tarfile.open(tmp_path / "out" / "models.tgz") as packed:
        assert "models/click_wide.json" in packed.getnames()
    trained = json.loads((tmp_path / "data" / "models" / "click_wide.json").read_text())["trained_on"]
    assert trained["interrupted"] == "SIGTERM"
