"""Time detops' evaluate_coco against pycocotools on a COCO-val-sized synthetic set.

    python bench/eval_bench.py            # 5,000 images, ~37k GT boxes, ~500k detections
    python bench/eval_bench.py --small    # 500 images (a tenth)

Prints one row per engine: seconds (best of --repeat for the fast ones, one run of pycocotools),
the ratio to pycocotools, and whether the twelve numbers equal pycocotools' (max |diff| shown).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import time
from typing import Any

import numpy as np

from detops.evaluate import STAT_KEYS, evaluate_coco


def make_dataset(n_images: int, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """~7.4 GT boxes and ~100 detections per image over 80 classes, COCO-like sizes."""
    rng = np.random.default_rng(seed)
    n_cats = 80
    images = [{"id": i + 1, "width": 640, "height": 480} for i in range(n_images)]
    cats = [{"id": c + 1, "name": f"class{c}"} for c in range(n_cats)]
    n_gt = rng.poisson(7.4, n_images)
    anns = []
    for i in range(n_images):
        k = int(n_gt[i])
        wh = np.exp(rng.normal(3.6, 1.0, (k, 2))).clip(2, 600)
        xy = rng.uniform(0, 1, (k, 2)) * (np.array([640, 480]) - wh).clip(1)
        cls = rng.integers(1, n_cats + 1, k)
        crowd = rng.random(k) < 0.01
        for j in range(k):
            w, h = float(wh[j, 0]), float(wh[j, 1])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": int(cls[j]),
                    "bbox": [float(xy[j, 0]), float(xy[j, 1]), w, h],
                    "area": w * h * 0.7,
                    "iscrowd": int(crowd[j]),
                }
            )
    by_img: dict[int, list[dict[str, Any]]] = {}
    for a in anns:
        by_img.setdefault(a["image_id"], []).append(a)
    preds = []
    for i in range(n_images):
        gts = by_img.get(i + 1, [])
        n_det = int(rng.poisson(100))
        for _ in range(n_det):
            if gts and rng.random() < 0.3:
                a = gts[int(rng.integers(len(gts)))]
                x, y, w, h = a["bbox"]
                jit = rng.normal(0, 0.1, 4) * [w, h, w, h]
                box = [x + jit[0], y + jit[1], max(1.0, w + jit[2]), max(1.0, h + jit[3])]
                cat = a["category_id"] if rng.random() < 0.85 else int(rng.integers(1, n_cats + 1))
                score = float(rng.beta(5, 2))
            else:
                w, h = np.exp(rng.normal(3.6, 1.0, 2)).clip(2, 600)
                box = [float(rng.uniform(0, 600)), float(rng.uniform(0, 440)), float(w), float(h)]
                cat = int(rng.integers(1, n_cats + 1))
                score = float(rng.beta(2, 5))
            preds.append(
                {
                    "image_id": i + 1,
                    "category_id": cat,
                    "bbox": [float(v) for v in box],
                    "score": round(score, 3),
                }  # rounded: ties, as real detectors have
            )
    return {"images": images, "categories": cats, "annotations": anns}, preds


def run_pycocotools(gt: dict[str, Any], preds: list[dict[str, Any]]) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(preds), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def run_hotcoco_raw(gt: dict[str, Any], preds: list[dict[str, Any]]) -> np.ndarray:
    import hotcoco

    coco_gt = hotcoco.COCO(gt)
    ev = hotcoco.COCOeval(coco_gt, coco_gt.load_res(preds), "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def run_detops(gt: dict[str, Any], preds: list[dict[str, Any]]) -> np.ndarray:
    r = evaluate_coco(gt, preds)
    return np.array([r.stats[k] for k in STAT_KEYS])


def timed(fn, *args, repeat: int = 1) -> tuple[float, np.ndarray]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="500 images instead of 5,000")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="runs of the fast engines (best kept)")
    args = ap.parse_args()
    n_images = 500 if args.small else 5000

    t = time.perf_counter()
    gt, preds = make_dataset(n_images, args.seed)
    print(
        f"dataset: {len(gt['images'])} images, {len(gt['annotations'])} GT boxes, "
        f"{len(preds)} detections (seed {args.seed}, built in {time.perf_counter() - t:.1f} s)"
    )
    t_ref, ref = timed(run_pycocotools, copy.deepcopy(gt), copy.deepcopy(preds))
    rows = [("pycocotools", t_ref, ref)]
    rows.append(("detops evaluate_coco", *timed(run_detops, gt, preds, repeat=args.repeat)))
    rows.append(
        ("hotcoco (raw, no checks)", *timed(run_hotcoco_raw, gt, preds, repeat=args.repeat))
    )

    print(f"\n{'engine':<26} {'seconds':>9} {'x faster':>9}  12 numbers equal pycocotools")
    for name, secs, stats in rows:
        diff = float(np.max(np.abs(stats - ref)))
        same = "exact" if diff == 0 else ("yes" if diff <= 1e-12 else "NO")
        print(f"{name:<26} {secs:>9.3f} {t_ref / secs:>9.1f}  {same} (max |diff| {diff:.1e})")
    print("\n" + "  ".join(f"{k}={v:.4f}" for k, v in zip(STAT_KEYS, ref, strict=True)))


if __name__ == "__main__":
    main()
