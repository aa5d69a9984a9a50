"""Benchmark: CPU (or GPU) seconds per forward pass and peak memory of the default network, and the
whole ``hntumorseg segment`` command on a whole-body phantom (512 x 512 CT, about 1 m long).

The network figures use freshly initialised weights (speed does not depend on the weights).
Targets for ``segment`` on a 2-core CPU: <= 40 s wall, peak RSS <= 5 GB. Run:
    python Testing/benchmarks/inference.py [--repeats N] [--device cpu|cuda] [--skip-cli]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from HNTumorSegLib.pipeline.inference import available_cpus
from HNTumorSegLib.network import NetworkConfig, build_network


def peak_rss_gb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


def forward_figures(config: NetworkConfig, device: str, repeats: int) -> None:
    torch.set_num_threads(available_cpus())
    model = build_network(config).to(device).eval()
    n_params = sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 2, 112, 256, 256, device=device)
    cuda = device == "cuda"
    times = []
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        for _ in range(repeats + 1):  # the first pass warms up allocators and kernels
            t0 = time.perf_counter()
            model(x).argmax(1)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    steady = times[1:]
    mem = f"peak RSS {peak_rss_gb():.2f} GB"
    if cuda:
        mem += f", peak GPU memory {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GB"
    print(f"network psam={config.psam} norm={config.norm} channels={list(config.channels)} "
          f"({n_params / 1e6:.2f} M parameters) on {device}{' bf16' if cuda else ' fp32'} "
          f"with {torch.get_num_threads()} threads: first pass {times[0]:.2f} s, then "
          f"{sum(steady) / len(steady):.2f} s per forward (min {min(steady):.2f}); {mem}; "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '') or 'none'}")


def cli_figures(device: str) -> None:
    from HNTumorSegLib.pipeline.model_file import save_model
    from HNTumorSegLib.phantom import make_phantom, write_case

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        case = make_phantom(11, "whole_body")
        paths = write_case(case, tmp / "data")
        config = NetworkConfig()
        save_model(build_network(config), config, tmp / "bench_model",
                   metadata={"trained_on": "nothing: random weights for timing", "intended_use": "benchmark"})
        size = case.ct.GetSize()
        print(f"whole-body phantom CT {size} ({size[2] * case.ct.GetSpacing()[2] / 10:.0f} cm), "
              f"PET {case.pet.GetSize()}")
        for label, env in (("run 1", {}), ("run 2", {})):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "HNTumorSegLib.cli", "segment",
                 "--ct", str(paths["ct"]), "--pet", str(paths["pet"]), "--out", str(tmp / "seg.nii.gz"),
                 "--model", str(tmp / "bench_model.json"), "--device", device],
                env={**os.environ, **env}, capture_output=True, text=True, encoding="utf-8")
            wall = time.perf_counter() - t0
            if proc.returncode:
                print(proc.stderr)
                raise SystemExit(proc.returncode)
            import json
            timings = json.loads((tmp / "seg.json").read_text())["timings_s"]
            stages = ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if "." not in k)
            print(f"hntumorseg segment ({label}): {wall:.1f} s wall (target <= 40 s), stages [s]: {stages}")
        print(f"peak RSS of the largest segment process: {peak_rss_gb(resource.RUSAGE_CHILDREN):.2f} GB "
              "(target <= 5 GB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-cli", action="store_true", help="only time the network")
    args = parser.parse_args()
    if not args.skip_cli:
        cli_figures(args.device)
    forward_figures(NetworkConfig(), args.device, args.repeats)


if __name__ == "__main__":
    main()
