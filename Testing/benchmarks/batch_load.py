"""Benchmark: ``batch`` under load: throughput, resident memory per worker, and whether memory grows.

Issue: a department runs ``batch`` over years of archives; a worker that leaks a little per case fails on case
5,000. On N phantom cases (head field of view, 1-3 nodes; seeds outside the bundled model's training cohort)
the real ``run_batch_parallel`` runs with ``--workers W`` and the bundled model; each worker reports its
resident memory after every case it finishes. Printed: cases per minute, the largest of those per worker,
and each worker's memory after its 5th case against after its last (target: within 10 %); memory is read after
each case (/proc/self/statm), so the peak within a case is not seen. Run:

    python Testing/benchmarks/batch_load.py [--cases 50] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from HNTumorSegLib.cli.batch import DONE, BatchOptions, find_batch_cases, run_batch_parallel
from HNTumorSegLib.phantom import make_phantom, write_case

FIRST_SEED = 930_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        for i in range(args.cases):
            write_case(make_phantom(FIRST_SEED + i, "head", n_nodes=1 + i % 3, case_id=f"LOAD-{i + 1:03d}"),
                       root / "cases")
        made = time.perf_counter() - t0
        cases = find_batch_cases(root / "cases")
        t0 = time.perf_counter()
        rows = run_batch_parallel(cases, BatchOptions(root / "out", device="cpu"), summary=root / "out" / "summary.csv",
                                  workers=args.workers, progress=False)
        seconds = time.perf_counter() - t0
    done = [r for r in rows if r["status"] == DONE]
    by_worker = defaultdict(list)
    for r in done:  # in case order: each worker takes its cases in that order
        if r.get("rss_mib") is not None:
            by_worker[r["worker_pid"]].append(r["rss_mib"])
    print(f"{len(cases)} phantom cases (made in {made:.0f} s), {args.workers} workers, bundled model, CPU: "
          f"{len(done)} done in {seconds:.0f} s = {60 * len(done) / seconds:.1f} cases/min")
    print("| worker | cases | resident after case 5 (MiB) | after its last case | change | largest after a case |\n"
          "|---|---|---|---|---|---|")
    for pid, rss in by_worker.items():
        fifth = rss[min(4, len(rss) - 1)]
        print(f"| {pid} | {len(rss)} | {fifth:.0f} | {rss[-1]:.0f} | {rss[-1] / fifth - 1:+.1%} | {max(rss):.0f} |")


if __name__ == "__main__":
    main()
