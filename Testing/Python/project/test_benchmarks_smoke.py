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


def test_click_nodes_ceiling_is_the_case_dice_of_the_drawn_nodes():
    """The node benchmark's "case GTVn ceiling": each case's Dice had its nodes been drawn as measured (the drawn
    voxels rebuilt from the shares left out and drawn outside), cases without nodes 1, as edit_clicks.py counts them."""
    bench = load_benchmark("click_nodes")
    rows = [{"case": "a", "voxels": 100, "left_out": 0.1, "outside": 0.2, "dice": 0.857, "drawing": "network",
             "place": "peak"},
            {"case": "a", "voxels": 300, "left_out": 0.0, "outside": 0.0, "dice": 1.0, "drawing": "network",
             "place": "peak"}]
    (summary,) = bench.summarise(rows, ["a", "b"])
    found, size = 90 + 300, 400 + (90 + 20 + 300)
    assert summary["nodes"] == 2 and abs(summary["case_gtvn_ceiling"] - (2 * found / size + 1.0) / 2) < 1e-12
    assert abs(summary["mean_dice"] - (0.857 + 1.0) / 2) < 1e-12 and summary["median_outside"] == 0.1


def test_click_nodes_times_a_click_apart_from_the_run_s_first():
    """The first click of a run loads torch and the click model: it is reported apart, not in the median."""
    bench = load_benchmark("click_nodes")
    rows = [{"drawing": "network", "seconds": s} for s in (3.0, 0.5, 0.4, 0.6)]
    rows += [{"drawing": "threshold", "seconds": 0.1}]
    timing = bench.click_seconds(rows)
    assert timing["network"]["first"] == 3.0 and timing["network"]["median"] == 0.5
    assert 0.5 < timing["network"]["p90"] < 0.6 and timing["threshold"] == {"first": 0.1, "median": 0.1, "p90": 0.1}
