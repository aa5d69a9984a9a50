"""Smoke test of the benchmark scripts: they run end to end on a tiny size and print their figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_throughput_tiny(capsys):
    bench = load_benchmark("train_throughput")
    bench.main(["--size", "16", "32", "32", "--steps", "1", "--warmup", "0", "--channels", "2", "4", "8", "16", "32",
                "--device", "cpu"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("device: CPU"), lines
    assert lines[1].startswith("torch "), lines
    results = [line for line in lines if line.startswith(bench.RESULT_PREFIX)]
    assert [line.split()[2] for line in results] == ["psam", "unet"], lines
    for line in results:
        assert "samples/s" in line and "peak RSS" in line and "[16, 32, 32]" in line, line
