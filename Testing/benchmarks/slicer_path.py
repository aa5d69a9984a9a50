"""Benchmark: the figure users feel. Press Segment in the module vs ``hntumorseg segment``, same case, CPU.

On a whole-body phantom (512 x 512 CT, about 1 m long), prints the wall time and peak RSS of:

- the command line: ``hntumorseg segment`` as a process, from start to exit;
- the module path on Slicer's core libraries (slicer-core): CT and PET loaded with Slicer's reader
  first (the user's own step, timed apart), then the scene logic's ``segment()`` call until the
  segments, the table, the window ROI and the uncertainty volume are in the scene. The worker is a
  process of its own, as in Slicer.

``--busy N`` runs N CPU-bound processes meanwhile (a machine that is not idle: in Slicer the worker
shares the CPU with the application). ``--wait-policy`` sets ``OMP_WAIT_POLICY`` for both segmenting
processes (unset: OpenMP's own default for the command line, PASSIVE for the module's worker, see
``HNTumorSegLib.slicer_support.segmentation_job.WORKER_WAIT_POLICY``). Target: the module path within
3 s of the command line. Run:

    python Testing/benchmarks/slicer_path.py [--busy 1] [--wait-policy passive]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Testing" / "Python" / "slicer_module"))

#: Seed of the whole-body phantom (outside the bundled model's training seeds).
SEED = 424_242


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def children_peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes running meanwhile")
    parser.add_argument("--wait-policy", choices=["passive", "active"], help="OMP_WAIT_POLICY of the segmenting processes")
    args = parser.parse_args()
    if args.wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.wait_policy.upper()  # inherited by the CLI process and the worker

    from headless_slicer import HeadlessSlicer, scene_logic_class

    from HNTumorSegLib.phantom import make_phantom, write_case

    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.busy)]
    with tempfile.TemporaryDirectory(prefix="hntumorseg-bench-") as scratch:
        case = make_phantom(SEED, "whole_body")
        paths = write_case(case, Path(scratch) / "input")
        print(f"case {case.case_id}: CT {case.ct.GetSize()}, PET {case.pet.GetSize()}; {args.busy} busy process(es), "
              f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}", flush=True)
        for burner in burners:
            burner.start()
        try:
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "HNTumorSegLib.cli", "segment", "--ct", str(paths["ct"]), "--pet",
                            str(paths["pet"]), "--out", str(Path(scratch) / "cli" / "seg.nii.gz"), "--device", "cpu"],
                           check=True, stdout=subprocess.DEVNULL)
            cli_s = time.perf_counter() - t0
            cli_rss = children_peak_rss_gb()
            app = HeadlessSlicer()
            try:
                t0 = time.perf_counter()
                ct, pet = app.load_volume(paths["ct"], "CT"), app.load_volume(paths["pet"], "PET")
                load_s = time.perf_counter() - t0
                logic = scene_logic_class()(workerPython=[sys.executable])
                t0 = time.perf_counter()
                logic.segment(ct, pet, device="cpu")
                module_s = time.perf_counter() - t0
            finally:
                app.close()
            worker_rss = children_peak_rss_gb()  # the larger of the two children, as getrusage keeps the maximum
        finally:
            stop.set()
            for burner in burners:
                burner.join()
    print(f"| path | wall (s) | peak RSS (GB) |\n|---|---|---|\n"
          f"| `hntumorseg segment` | {cli_s:.1f} | {cli_rss:.2f} |\n"
          f"| module: `segment()` to segments in the scene (slicer-core, worker process) | {module_s:.1f} | "
          f"{worker_rss:.2f} (the larger of the two processes) |\n"
          f"| (before it: loading CT and PET with Slicer's reader) | {load_s:.1f} | |")
    print(f"module path minus command line: {module_s - cli_s:+.1f} s (target: within 3 s)")


if __name__ == "__main__":
    main()
