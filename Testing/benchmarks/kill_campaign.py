"""Fault campaign: SIGKILL ``hntumorseg segment`` and ``hntumorseg batch`` at seeded random moments.

Why: a department runs ``batch`` over years of archives on machines that get rebooted, run out of
memory or are stopped by a scheduler. Each trial starts the command, kills its whole process group
with SIGKILL at a random moment within the time an uninterrupted run takes, then checks:

- no partial output: every output file that exists reads back whole (images, JSON, CSV) and equals
  the uninterrupted run's (the temporary ``.NAME.*`` files of the killed writer are not outputs;
  ``batch`` removes them when it runs the case again);
- ``batch`` run again to the end gives the uninterrupted run's label maps, summary and lesion table
  (the seconds column aside);
- ``segment`` run again gives the uninterrupted run's label map.

Prints one row per trial and a total: trials, outputs seen mid-run, partial or wrong outputs (goal 0),
reruns identical. ``Testing/Python/cli/test_kill_campaign.py`` runs a few trials of it in the suite. Run:

    python Testing/benchmarks/kill_campaign.py [--trials 20] [--seed 0] [--cases 3]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import SimpleITK as sitk

SUMMARY_KEYS_COMPARED = ("case", "status", "GTVp_volume_ml", "GTVp_suv_max", "GTVp_tlg", "GTVn_volume_ml",
                         "GTVn_suv_max", "GTVn_tlg", "suv_factor", "source", "message")


def make_inputs(root: Path, cases: int) -> tuple[Path, Path]:
    """Small phantom cases in the HECKTOR layout and a small random-weight model; (input folder, model JSON)."""
    import torch

    from HNTumorSegLib.network import NetworkConfig, build_network
    from HNTumorSegLib.phantom import make_phantom, write_case
    from HNTumorSegLib.pipeline.model_file import save_model

    data = root / "cases"
    for k in range(cases):
        write_case(make_phantom(700 + k, "head", ct_matrix=64, n_nodes=1, case_id=f"KIL-{k + 1:03d}"), data)
    config = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))
    torch.manual_seed(0)
    save_model(build_network(config), config, root / "model", metadata={"trained_on": "nothing (fault campaign)"})
    return data, root / "model.json"


def batch_command(data: Path, model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "HNTumorSegLib.cli", "batch", "--input", str(data), "--out", str(out),
            "--model", str(model), "--device", "cpu"]


def segment_command(data: Path, model: Path, out: Path) -> list[str]:
    case = sorted(p for p in data.iterdir() if p.is_dir())[0]
    return [sys.executable, "-m", "HNTumorSegLib.cli", "segment", "--ct", str(next(case.glob("*__CT.nii.gz"))),
            "--pet", str(next(case.glob("*__PT.nii.gz"))), "--out", str(out / "seg.nii.gz"),
            "--model", str(model), "--device", "cpu"]


def run(cmd: list[str], kill_after: float | None = None) -> tuple[int, float]:
    """Run to the end, or SIGKILL the whole process group after ``kill_after`` seconds; (status, seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    proc.stderr.close()
    return proc.returncode, time.perf_counter() - t0


def outputs(out: Path) -> dict[str, object]:
    """Every visible output file under ``out``, read in full: arrays of images, parsed JSON/CSV (seconds aside).
    A torn file raises."""
    found = {}
    for path in sorted(out.rglob("*")):
        key = str(path.relative_to(out))
        if not path.is_file() or any(part.startswith(".") for part in Path(key).parts):
            continue  # temporary files, and batch's own state (.batch/: claims, failure records)
        if path.name.endswith(".nii.gz"):
            found[key] = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).tobytes()
        elif path.suffix == ".json":
            report = json.loads(path.read_text())
            found[key] = {k: report.get(k) for k in ("structures", "lesions", "case") if k in report}
        elif path.suffix == ".csv":
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            # a case finished before the kill is "done earlier" in the rerun: the same result
            found[key] = [{k: ("done" if (k, v) == ("status", "done earlier") else v) for k, v in row.items()
                           if k != "seconds"} for row in rows]
        elif path.suffix == ".txt":
            found[key] = path.read_text()
    return found


def torn_or_wrong(seen: dict, reference: dict) -> list[str]:
    """Outputs present mid-run that differ from the finished run's (a summary lists fewer cases mid-run: it
    must list them as the finished summary does)."""
    bad = []
    for key, value in seen.items():
        if key not in reference:
            bad.append(f"{key}: not an output of the finished run")
        elif key.endswith(".csv"):
            finished = {row["case"] + row.get("lesion", ""): row for row in reference[key]}
            if any(finished.get(row["case"] + row.get("lesion", "")) != row for row in value):
                bad.append(f"{key}: a row differs from the finished run's")
        elif value != reference[key]:
            bad.append(f"{key}: differs from the finished run's")
    return bad


def campaign(trials: int, seed: int, cases: int, root: Path, log=print) -> dict:
    data, model = make_inputs(root, cases)
    commands = {"batch": batch_command, "segment": segment_command}
    references, durations = {}, {}
    for name, command in commands.items():
        out = root / f"reference-{name}"
        status, durations[name] = run(command(data, model, out))
        if status != 0:
            raise RuntimeError(f"the uninterrupted {name} failed with status {status}")
        references[name] = outputs(out)
    rng = random.Random(seed)
    rows = []
    for trial in range(trials):
        name = ("batch", "segment")[trial % 2]
        out = root / f"trial-{trial:03d}"
        kill_at = rng.uniform(0.2, durations[name])
        run(commands[name](data, model, out), kill_after=kill_at)
        try:
            seen = outputs(out) if out.exists() else {}
            bad = torn_or_wrong(seen, references[name])
        except Exception as exc:  # a file that does not read back whole
            seen, bad = {}, [f"unreadable output: {type(exc).__name__}: {exc}"]
        status, _ = run(commands[name](data, model, out))
        identical = status == 0 and outputs(out) == references[name]
        # temporary files of the killed writer still there after the rerun (batch removes a case's own when it
        # runs the case again; a summary's, beside the summary, stay: another process may be writing it)
        leftovers = sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.is_file())
        rows.append({"trial": trial, "command": name, "kill_s": kill_at, "outputs_seen": len(seen), "bad": bad,
                     "rerun_identical": identical, "leftovers": leftovers})
        log(f"| {trial} | {name} | {kill_at:.1f} | {len(seen)} | {len(bad)} | {'yes' if identical else 'NO'} | "
            f"{len(leftovers)} |" + (f" {bad[:2]}" if bad else ""))
    return {"rows": rows, "durations": durations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("| trial | command | killed at (s) | outputs seen | partial or wrong | rerun identical | "
              "temporary files left |\n|---|---|---|---|---|---|---|")
        t0 = time.perf_counter()
        result = campaign(args.trials, args.seed, args.cases, Path(tmp))
    rows = result["rows"]
    print(f"\n{len(rows)} trials ({sum(r['command'] == 'batch' for r in rows)} batch over {args.cases} cases, "
          f"{sum(r['command'] == 'segment' for r in rows)} segment; uninterrupted: batch "
          f"{result['durations']['batch']:.1f} s, segment {result['durations']['segment']:.1f} s) in "
          f"{time.perf_counter() - t0:.0f} s: {sum(r['outputs_seen'] for r in rows)} outputs seen after a kill, "
          f"{sum(len(r['bad']) for r in rows)} partial or wrong, "
          f"{sum(r['rerun_identical'] for r in rows)} of {len(rows)} reruns identical to the uninterrupted run, "
          f"{sum(len(r['leftovers']) for r in rows)} temporary files left after the reruns")


if __name__ == "__main__":
    main()
