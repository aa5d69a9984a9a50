"""Benchmark: samples per second and peak memory of one training step (forward, soft Dice loss,
backward, AdamW step) at the full 112 x 256 x 256 window, for ``psam`` and ``unet``.

As in ``hntumorseg-train fit``: fp32 on the CPU (never autocast there), bf16 autocast on CUDA.
Inputs are random normalised values and a random {0, 1, 2} label (speed does not depend on them).
Each model runs in a fresh subprocess, so that the peak RSS of one model is not the other's; the
CPU figure is the process's peak RSS and its rise over the baseline after imports, the GPU figure
``torch.cuda.max_memory_allocated``. Run:
    python Testing/benchmarks/train_throughput.py [--models psam unet] [--batch-size 1] [--steps N]
        [--warmup N] [--device auto|cpu|cuda] [--channels C ...] [--size Z Y X]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import time

import torch

from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
from HNTumorSegLib.pipeline.inference import available_cpus

RESULT_PREFIX = "train step:"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # ru_maxrss is in KiB on Linux


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    return name


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return (f"GPU {props.name} ({props.total_memory / 1024 ** 3:.0f} GiB), CUDA {torch.version.cuda}, "
                f"host CPU {cpu_name()}")
    return (f"CPU {cpu_name()}, {available_cpus()} usable of {os.cpu_count()} logical cores, "
            f"{platform.system()} {platform.machine()}")


def step_figures(model_name: str, device_name: str, batch_size: int, steps: int, warmup: int,
                 channels: list[int] | None, size: tuple[int, int, int]) -> None:
    """Time ``warmup + steps`` training steps of one model in this process and print one result line."""
    from HNTumorSegTraining.losses import soft_dice_loss
    from HNTumorSegTraining.models import build_from_spec, make_spec, size_multiple
    from HNTumorSegTraining.validate import autocast_context

    device = torch.device(device_name)
    cuda = device.type == "cuda"
    torch.set_num_threads(available_cpus())
    torch.manual_seed(0)
    spec = make_spec(model_name, channels=channels, patch_size=None)
    multiple = size_multiple(spec)
    if any(s % multiple for s in size):
        raise SystemExit(f"--size {list(size)}: {model_name} needs each size divisible by {multiple}")
    baseline = peak_rss_gb()
    model = build_from_spec(spec).to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    # The optimiser of fit.py (its default lr and weight decay).
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4, weight_decay=1e-5)
    amp_dtype = torch.bfloat16 if cuda else None
    x = torch.randn(batch_size, 2, *size, device=device)
    y = torch.randint(0, 3, (batch_size, *size), device=device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, amp_dtype):
            logits = model(x)
        loss = soft_dice_loss(logits, y)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del logits, loss
    timed = times[warmup:]
    mean = sum(timed) / len(timed)
    peak = peak_rss_gb()
    mem = f"peak RSS {peak:.2f} GB (+{peak - baseline:.2f} GB over imports)"
    if cuda:
        mem = (f"peak GPU memory {torch.cuda.max_memory_allocated() / 1024 ** 3:.2f} GB allocated "
               f"({torch.cuda.max_memory_reserved() / 1024 ** 3:.2f} GB reserved); {mem}")
    precision = "bf16 autocast" if amp_dtype is not None else "fp32"
    print(f"{RESULT_PREFIX} {model_name} channels={list(spec['network']['channels'])} "
          f"({n_params / 1e6:.2f} M parameters) batch {batch_size} x {list(size)} on {device_name} {precision}, "
          f"{torch.get_num_threads()} threads: {mean:.2f} s per step (min {min(timed):.2f}, {len(timed)} timed "
          f"after {warmup} warm-up, first {times[0]:.2f}) = {batch_size / mean:.3f} samples/s; {mem}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["psam", "unet"], choices=["psam", "unet"])
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="timed steps (after the warm-up steps)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocators, kernels, AdamW state)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--channels", type=int, nargs="+", help="per-level widths (default: the network's)")
    parser.add_argument("--size", type=int, nargs=3, metavar=("Z", "Y", "X"), default=list(WINDOW_ZYX),
                        help="input size (default: the full window %(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one model, in this process
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("need --batch-size >= 1, --steps >= 1, --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = resolve_device(args.device)
    common = ["--batch-size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--device", device, "--size", *map(str, args.size)]
    if args.channels:
        common += ["--channels", *map(str, args.channels)]
    if args.worker:
        for name in args.models:
            step_figures(name, device, args.batch_size, args.steps, args.warmup, args.channels, tuple(args.size))
        return
    print(f"device: {describe_device(device)}")
    print(f"torch {torch.__version__}, Python {platform.python_version()}, "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '') or 'none'}")
    for name in args.models:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", "--models", name, *common],
                              capture_output=True, text=True, encoding="utf-8")
        if proc.returncode:
            print(proc.stdout + proc.stderr)
            raise SystemExit(proc.returncode)
        print(proc.stdout, end="", flush=True)


if __name__ == "__main__":
    main()
