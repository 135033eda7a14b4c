"""NMS: ``detops.model.nms.nms`` against its own per-box loop alone (``MATRIX_MAX = 0``, the
implementation before the matrix scan), in this one process, on the candidate sets a detector
hands it.

    python bench/nms_bench.py            # ~20 s

Cases (boxes in a 640x640 image, per-class suppression at IoU 0.5):

- ``default detector``: the 100 outputs of the default detector exported with random weights
  on a 320x320 photo-like image, above the default score threshold (most of them: random
  weights score everything alike), as ``Runtime.postprocess`` sees them;
- ``crowd``: N boxes scattered, few overlapping: most are kept (a crowded scene);
- ``clusters``: N candidates around N/20 objects, as a raw YOLO-style head gives: few kept;
- ``chain``: N boxes each shifted a little from the last: every box overlaps its neighbours.

Each figure is the median of 7 rounds of a timed loop; the two sides alternate.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np

from detops.model import nms as nms_module
from detops.model.nms import nms

Case = tuple[np.ndarray, np.ndarray, np.ndarray]


def crowd(n: int, rng: np.random.Generator) -> Case:
    xy = rng.uniform(0, 600, (n, 2))
    wh = rng.uniform(8, 40, (n, 2))
    return _case(np.hstack([xy, xy + wh]), rng.uniform(0.3, 1, n), rng.integers(0, 3, n))


def clusters(n: int, rng: np.random.Generator) -> Case:
    k = max(1, n // 20)
    centres = rng.uniform(50, 590, (k, 2))
    sizes = rng.uniform(30, 120, (k, 2))
    which = rng.integers(0, k, n)
    c = centres[which] + rng.normal(0, 4, (n, 2))
    s = sizes[which] * rng.uniform(0.9, 1.1, (n, 2))
    boxes = np.hstack([c - s / 2, c + s / 2])
    return _case(boxes, rng.uniform(0.3, 1, n), which % 3)


def chain(n: int, rng: np.random.Generator) -> Case:
    x = np.arange(n) * 3.0
    boxes = np.stack([x, np.zeros(n), x + 10, np.full(n, 10.0)], axis=1)
    return _case(boxes, np.linspace(1, 0.3, n), np.zeros(n, np.int64))


def _case(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> Case:
    return boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64)


def detector_outputs() -> Case:
    """What ``Runtime.postprocess`` hands NMS for the default detector (taken on the way)."""
    import serve_bench  # the serving benchmark's model and image

    from detops.model import runtime as runtime_module
    from detops.model.spec import ModelSpec

    seen: dict[str, Any] = {}

    def spy(boxes: np.ndarray, scores: np.ndarray, iou: float, **kw: Any) -> np.ndarray:
        seen.update(boxes=boxes.copy(), scores=scores.copy(), labels=kw["labels"].copy())
        return nms(boxes, scores, iou, **kw)

    with tempfile.TemporaryDirectory(prefix="nms-bench-") as tmp:
        path = Path(tmp) / "d.onnx"
        spec = ModelSpec.model_validate(serve_bench.export_detector(path, 320, 3))
        rt = runtime_module.Runtime(path, spec)
        x, transforms = rt.preprocess([rt.decode_image(serve_bench.photo_jpeg(320))])
        with mock.patch.object(runtime_module, "nms", spy):
            rt.postprocess(rt.infer(x), transforms)
    return _case(seen["boxes"], seen["scores"], seen["labels"])


def per_call_us(fn: Callable[[], Any], seconds: float = 0.15) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n * 1e6


def measure(case: Case, matrix_max: int, rounds: int = 7) -> tuple[float, float, int]:
    boxes, scores, labels = case

    def run() -> np.ndarray:
        return nms(boxes, scores, 0.5, labels=labels, max_output=300)

    new, old = [], []
    for r in range(rounds):
        for side in (0, 1) if r % 2 == 0 else (1, 0):
            with mock.patch.object(nms_module, "MATRIX_MAX", matrix_max if side == 0 else 0):
                (new if side == 0 else old).append(per_call_us(run))
    with mock.patch.object(nms_module, "MATRIX_MAX", 0):
        want = run()
    with mock.patch.object(nms_module, "MATRIX_MAX", matrix_max):
        got = run()
    assert np.array_equal(got, want), "the two ways disagree"
    return float(np.median(new)), float(np.median(old)), len(got)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--matrix-max", type=int, nargs="*", default=[nms_module.MATRIX_MAX],
                    help="MATRIX_MAX values to compare (default: the module's)")  # fmt: skip
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    cases: list[tuple[str, Case]] = [("default detector", detector_outputs())]
    for n in (50, 128, 300, 1000):
        cases += [(f"crowd {n}", crowd(n, rng)), (f"clusters {n}", clusters(n, rng))]
    cases += [("chain 128", chain(128, rng)), ("chain 300", chain(300, rng))]
    print(f"{'case':<18}{'N':>6}{'kept':>6}  " + "".join(
        f"{f'MATRIX_MAX={m}':>26}" for m in args.matrix_max) + f"{'per-box loop':>16}")  # fmt: skip
    for name, case in cases:
        cols, old_us, kept = [], [], 0
        for m in args.matrix_max:
            new, old, kept = measure(case, m)
            cols.append(f"{new:9.1f} us ({old / new:5.2f}x)")
            old_us.append(old)
        print(f"{name:<18}{len(case[1]):>6}{kept:>6}  " + "".join(f"{c:>26}" for c in cols)
              + f"{np.median(old_us):13.1f} us")  # fmt: skip
    print("(x: how many times faster than the per-box loop alone, measured beside it)")


if __name__ == "__main__":
    main()
