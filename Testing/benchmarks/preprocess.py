"""Benchmark: what preprocessing resamples, on a whole-body phantom.

Three ways to the same network input, each in its own process (so each peak RSS is its own):

- ``literal``: the paper's order: the whole CT (B-spline) and the whole PET onto the 1 x 1 x 3 mm
  lattice, then the crop;
- ``pet-full``: the CT resampled in the window only, the PET onto the whole lattice (the previous default);
- ``default``: the CT in the window only and the PET only in the boxes the crop's equations read.

Prints each path's time, its stages and peak RSS, and whether its network input, label and provenance
are those of the other paths: bit for bit for the PET (target: identical), within 1e-4 for the CT
(window against whole-image B-spline). Run:

    python Testing/benchmarks/preprocess.py [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time

import numpy as np

PATHS = {"literal": dict(ct_path="full", pet_path="full"),
         "pet-full": dict(ct_path="window", pet_path="full"),
         "default": dict(ct_path="window", pet_path="boxes")}


def run_one(path: str, seed: int, out: str) -> None:
    """In a child process: one path, its figures and its input written to ``out`` (.npz)."""
    from HNTumorSegLib.phantom import make_phantom
    from HNTumorSegLib.pipeline.preprocess import preprocess

    case = make_phantom(seed, "whole_body")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    t0 = time.perf_counter()
    pre = preprocess(case.ct, case.pet, case.label, **PATHS[path])
    seconds = time.perf_counter() - t0
    np.savez(out, image=pre.image, label=pre.label)
    print(json.dumps({"seconds": seconds, "timings": pre.timings, "rss_gb": resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "rss_before_gb": before, "provenance": pre.provenance,
        "ct": list(case.ct.GetSize()), "pet": list(case.pet.GetSize())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--one", choices=list(PATHS), help=argparse.SUPPRESS)
    parser.add_argument("--npz", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.seed, args.npz)
        return
    import tempfile

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in PATHS:
            npz = f"{tmp}/{path}.npz"
            run = subprocess.run([sys.executable, __file__, "--seed", str(args.seed), "--one", path, "--npz", npz],
                                 capture_output=True, text=True, encoding="utf-8", check=True)
            figures = json.loads(run.stdout.strip().splitlines()[-1])
            with np.load(npz) as data:
                figures["image"], figures["label"] = data["image"], data["label"]
            results[path] = figures
    first = results["default"]
    print(f"whole-body phantom (seed {args.seed}): CT {first['ct']}, PET {first['pet']}")
    print("| path | seconds | stages (s) | peak RSS (GB; phantom alone before) |\n|---|---|---|---|")
    for path, r in results.items():
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items())
        print(f"| {path} | {r['seconds']:.2f} | {stages} | {r['rss_gb']:.2f} ({r['rss_before_gb']:.2f}) |")

    def digest(r, key):
        return hashlib.sha256(r[key].tobytes()).hexdigest()[:12]

    same_pet = (digest(results["default"], "image") == digest(results["pet-full"], "image")
                and digest(results["default"], "label") == digest(results["pet-full"], "label")
                and json.dumps(results["default"]["provenance"]) == json.dumps(results["pet-full"]["provenance"]))
    ct_diff = float(np.abs(results["literal"]["image"] - results["default"]["image"]).max())
    print(f"default vs pet-full (PET in boxes vs whole lattice): input, label and provenance bit-identical: "
          f"{same_pet}")
    print(f"default vs literal: max |difference| of the network input {ct_diff:.2e} (target <= 1e-4); "
          f"labels identical: {bool(np.array_equal(results['literal']['label'], results['default']['label']))}")
    print(f"crop {first['provenance']['crop']} anchor {first['provenance']['anchor']}")


if __name__ == "__main__":
    main()
