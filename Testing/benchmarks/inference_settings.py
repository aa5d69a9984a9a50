"""Benchmark: what the sliding-window settings cost and what they change, with the bundled model on the CPU.

Issue: the network is most of a ``segment`` run's time, and how it is run is a choice the model file records
(``"inference"``: patch size, overlap, patches per call). On phantoms the bundled model never saw (seeds
910000 on, its three training styles and the unseen endemic style), each case is preprocessed once; then,
for each setting, the network time per case (after one warm-up case) and the mean per-case Dice of GTVp and
GTVn on the analysis window (argmax, no clean-up: the network's own answer) are printed, with the change
against the model's recorded setting. Settings tried: the overlap (0 / 0.1 / 0.25 / 0.5), patches per forward
call (1 / 4 / 8), the patch size (the recorded one, 48 x 96 x 96, 64 x 128 x 128, the whole 112 x 256 x 256
window in one pass), torch threads (1 / all), and with ``--compile`` the recorded setting through
``torch.compile`` (its compilation, paid by the warm-up pass, printed apart). (Channels-last activations are
already the CPU inference path's: HNTumorSegLib.network.blocks.) Run:

    python Testing/benchmarks/inference_settings.py [--cases 4] [--compile]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from HNTumorSegLib.evaluation.metrics import dice
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
from HNTumorSegLib.pipeline.inference import Segmenter, available_cpus
from HNTumorSegLib.pipeline.preprocess import preprocess

STYLES = ("classic", "legacy", "digital", "endemic")
FIRST_SEED = 910_000


def settings(recorded, compiled: bool = False):
    """(name, window, threads, compiled) to try; the first is the model's recorded setting."""
    cpus = available_cpus()
    out = [("recorded", recorded, cpus, False)]
    for overlap in (0.0, 0.1, 0.5):
        out.append((f"overlap {overlap}", dataclasses.replace(recorded, overlap=overlap), cpus, False))
    for batch in (4, 8):
        out.append((f"{batch} patches a call", dataclasses.replace(recorded, batch=batch), cpus, False))
    for patch in ((48, 96, 96), (64, 128, 128), WINDOW_ZYX):  # larger patches: fewer, wider-context calls
        name = "the whole window, one pass" if tuple(patch) == tuple(WINDOW_ZYX) else "patch " + " x ".join(map(str, patch))
        out.append((name, dataclasses.replace(recorded, patch_size=tuple(patch), batch=1), cpus, False))
    if cpus > 1:
        out.append(("1 thread", recorded, 1, False))
    if compiled:
        out.append(("torch.compile", recorded, cpus, True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--compile", action="store_true", help="also the recorded setting through torch.compile")
    args = parser.parse_args()
    segmenter = Segmenter(device="cpu", postprocess=False)
    recorded = segmenter.window
    inputs = []
    for i in range(args.cases):
        case = make_phantom(FIRST_SEED + i, "head_upper", style=STYLES[i % len(STYLES)])
        pre = preprocess(case.ct, case.pet, case.label)
        inputs.append((pre.image, pre.label))
    print(f"bundled model, {args.cases} unseen phantoms (styles {', '.join(STYLES[:args.cases])}), CPU, "
          f"{available_cpus()} cores, torch {torch.__version__}; recorded setting {recorded.to_dict()}")
    rows = []
    eager = segmenter.networks[0].model
    for name, window, threads, compiled in settings(recorded, args.compile):
        segmenter.window = window
        torch.set_num_threads(threads)
        segmenter.networks[0].model = torch.compile(eager) if compiled else eager
        seconds, scores = [], []
        for k, (image, label) in enumerate([inputs[0]] + inputs):  # the first pass warms up, not counted
            t0 = time.perf_counter()
            prob = segmenter.probabilities(image)
            if not k and compiled:
                print(f"  {name}: the warm-up pass (compiling) took {time.perf_counter() - t0:.1f} s", flush=True)
            if k:
                seconds.append(time.perf_counter() - t0)
                pred = prob.argmax(0)
                scores.append((dice(pred, label, 1), dice(pred, label, 2)))
        mean = np.mean(scores, axis=0)
        rows.append((name, float(np.mean(seconds)), float(mean[0]), float(mean[1])))
        print(f"  {name}: {rows[-1][1]:.2f} s a case, Dice GTVp {mean[0]:.4f} GTVn {mean[1]:.4f}", flush=True)
    base = rows[0]
    print("\n| setting | network s / case | vs recorded | Dice GTVp | Dice GTVn |\n|---|---|---|---|---|")
    for name, s, p, n in rows:
        print(f"| {name} | {s:.2f} | {s / base[1] - 1:+.0%} | {p:.4f} ({p - base[2]:+.4f}) | "
              f"{n:.4f} ({n - base[3]:+.4f}) |")


if __name__ == "__main__":
    main()
