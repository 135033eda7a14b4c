"""Cost of the per-request input features (brightness, contrast, sharpness) by image size.

    python bench/features_bench.py            # 1080p, 720p, 4K, 320x320; 1,000 calls each

Target: p99 <= 1 ms for a 1080p image (the features run on every served request). The baseline
beside it is the cost of reading every pixel once (``img.mean()``), which a full-resolution
feature pass could not beat.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from detops.monitor.features import image_features


def timings(fn, n: int) -> np.ndarray:
    out = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t
    return out * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    sizes = {"320x320": (320, 320), "720p": (720, 1280), "1080p": (1080, 1920), "4K": (2160, 3840)}
    print(f"{'image':>8} {'p50 ms':>8} {'p99 ms':>8} {'full-read p50 ms':>17} {'ratio':>6} target")
    for name, (h, w) in sizes.items():
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image_features(img)  # warm
        ft = timings(lambda img=img: image_features(img), args.n)
        base = timings(lambda img=img: img.mean(), max(50, args.n // 10))
        p50, p99, b50 = np.percentile(ft, 50), np.percentile(ft, 99), np.percentile(base, 50)
        target = ("p99<=1ms " + ("PASS" if p99 <= 1.0 else "FAIL")) if name == "1080p" else ""
        print(f"{name:>8} {p50:8.3f} {p99:8.3f} {b50:17.3f} {p50 / b50:6.2f} {target}")


if __name__ == "__main__":
    main()
