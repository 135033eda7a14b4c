"""Time ``synthesize`` on 2,000 320x320 scenes against the 20 s target.

    python bench/synth_bench.py [--n 2000] [--formats jpg,png] [--workers 1,0]

``workers=0`` means every CPU. Each run writes to a fresh temporary folder that is removed
afterwards; the table shows images, wall seconds, images/s, wall seconds as a fraction of the
target (below 1.0 meets it) and CPU seconds summed over processes, which other load on the
machine does not inflate (CPU seconds / cores is the wall time an idle machine would give).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

# Run from a checkout without installing: the repository root holds the detops package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detops.data.synth import AnnotatorSpec, SceneConfig, synthesize  # noqa: E402

TARGET_S = 20.0


def _cpu() -> float:
    """CPU seconds of this process and its reaped children: the cost without other load."""
    return sum(u.ru_utime + u.ru_stime for u in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def run(n: int, fmt: str, workers: int, annotators: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one ``synthesize`` call."""
    specs = ([AnnotatorSpec("A"), AnnotatorSpec("B", jitter=0.2, loose=0.2),
              AnnotatorSpec("C", miss=0.1, confuse=("star", "square", 0.3))]
             if annotators else None)
    with tempfile.TemporaryDirectory(prefix="synth_bench_") as out:
        c0, t0 = _cpu(), time.perf_counter()
        synthesize(out, n, seed=0, config=SceneConfig(), annotators=specs,
                   image_format=fmt, workers=workers)
        return time.perf_counter() - t0, _cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--formats", default="jpg,png")
    ap.add_argument("--workers", default="1,0", help="comma-separated; 0 = every CPU")
    ap.add_argument("--annotators", action="store_true", help="also simulate 3 annotators")
    args = ap.parse_args()
    print(f"cpus={os.cpu_count()}  n={args.n}  320x320  target={TARGET_S:.0f}s  "
          f"load average={os.getloadavg()[0]:.2f}")
    header = (f"{'format':>6} {'workers':>8} {'images':>7} {'seconds':>8} {'images/s':>9} "
              f"{'vs 20s':>7} {'cpu s':>7}")
    print(header)
    print("-" * len(header))
    for fmt in args.formats.split(","):
        for w in (int(x) for x in args.workers.split(",")):
            wall, cpu = run(args.n, fmt, w, args.annotators)
            label = f"{w}" if w else f"0 ({os.cpu_count()})"
            print(f"{fmt:>6} {label:>8} {args.n:>7} {wall:>8.2f} {args.n / wall:>9.1f} "
                  f"{wall / TARGET_S:>7.2f} {cpu:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
