"""``python -m HNTumorSegLib.phantom``: generation timings per field of view and per style."""

from __future__ import annotations

import argparse
import time

from . import STYLES, make_phantom


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m HNTumorSegLib.phantom",
        description="Print how long each phantom field of view and style takes to generate (seed 7). Phantom "
                    "cohorts for training are written by `hntumorseg-train phantoms`.").parse_args(argv)
    for fov, kw in (("head", {}), ("head_upper", {}), ("whole_body", {}), ("head", {"brain_cut": True}),
                    ("head_upper", {"small_fov": True}), ("whole_body", {"flip_xy": True})):
        t = time.perf_counter()
        c = make_phantom(7, fov, **kw)
        dt = time.perf_counter() - t
        print(f"classic {fov:11s} {str(kw):22s} CT {c.ct.GetSize()} PET {c.pet.GetSize()} "
              f"nodes {c.info['n_nodes']}  {dt:5.2f} s  {c.info['timings_s']}")
    for name in STYLES:
        for fov in ("head", "head_upper"):
            t = time.perf_counter()
            c = make_phantom(7, fov, style=name)
            dt = time.perf_counter() - t
            print(f"{name:8s} {fov:11s} CT {c.ct.GetSize()} PET {c.pet.GetSize()} nodes {c.info['n_nodes']}  "
                  f"{dt:5.2f} s  {c.info['timings_s']}")


if __name__ == "__main__":
    main()
