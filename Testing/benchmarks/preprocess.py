"""Benchmark: window-only CT resampling against resampling the whole CT, on a whole-body phantom.

Prints the time of each path, their ratio (target: window <= 30 % of full) and the largest
difference between the two network inputs (target: <= 1e-4). Run:
    python Testing/benchmarks/preprocess.py [--seed N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.pipeline.preprocess import preprocess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    case = make_phantom(args.seed, "whole_body")
    print(f"whole-body phantom: CT {case.ct.GetSize()} at {tuple(round(s, 3) for s in case.ct.GetSpacing())} mm, "
          f"PET {case.pet.GetSize()} at {tuple(round(s, 3) for s in case.pet.GetSpacing())} mm")
    results = {}
    for path in ("full", "window"):
        t0 = time.perf_counter()
        pre = preprocess(case.ct, case.pet, case.label, ct_path=path)
        seconds = time.perf_counter() - t0
        results[path] = (seconds, pre)
        stages = ", ".join(f"{k} {v:.2f} s" for k, v in pre.timings.items())
        print(f"{path:>6} path: {seconds:6.2f} s  ({stages})")
    full, window = results["full"], results["window"]
    diff = float(np.abs(full[1].image - window[1].image).max())
    same_label = bool(np.array_equal(full[1].label, window[1].label))
    print(f"window / full = {window[0] / full[0]:.1%} (target <= 30 %)")
    print(f"max |full - window| over the network input = {diff:.2e} (target <= 1e-4); labels identical: {same_label}")
    print(f"crop {window[1].provenance['crop']} anchor {window[1].provenance['anchor']}")


if __name__ == "__main__":
    main()
