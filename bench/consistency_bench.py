"""Time ``check_consistency`` on 10,000 images x 3 annotators x ~8 boxes against a plain loop.

    python bench/consistency_bench.py             # 10,000 images (the issue's target: <= 10 s)
    python bench/consistency_bench.py --n 1000    # a tenth

The annotations are made in memory (no image files): ~8 objects per image, annotator A
jitters 10% of its boxes, B draws 20% loose, C misses 10% and calls 40% of stars squares.
The baseline beside it is the straightforward way: for every image and every pair of
annotators, an IoU matrix and ``scipy.optimize.linear_sum_assignment``, counting the three
disagreement types. It computes only the pair counts, so the table has two detops rows: the
matching engine giving the same counts, and the full report (which also builds objects, alpha,
per-annotator rates, conventions and the ranked images). Both must give the baseline's pair
counts. Times are the best of --repeat runs (the baseline runs once).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from detops.data.dataset import Annotation, Category, Dataset, ImageRecord

CLASSES = ("circle", "square", "triangle", "star", "cross")


def make_dataset(n_images: int, seed: int = 0, mean_boxes: float = 8.0) -> Dataset:
    rng = np.random.default_rng(seed)
    ds = Dataset(categories=[Category(i, c) for i, c in enumerate(CLASSES)])
    ds.images = [ImageRecord(i, f"{i:06d}.jpg", 640, 480) for i in range(n_images)]
    n_obj = np.maximum(1, rng.poisson(mean_boxes, n_images))
    img = np.repeat(np.arange(n_images), n_obj)
    total = len(img)
    wh = np.exp(rng.uniform(np.log(12), np.log(160), (total, 2)))
    xy = rng.uniform(0, 1, (total, 2)) * (np.array([640, 480]) - wh)
    truth = np.concatenate([xy, xy + wh], 1)
    cls = rng.integers(0, len(CLASSES), total)
    anns: list[Annotation] = []
    specs = {"A": {"jitter": 0.10}, "B": {"loose": 0.20}, "C": {"miss": 0.10, "confuse": 0.4}}
    for name, spec in specs.items():
        u = rng.random((total, 8))
        keep = u[:, 0] >= spec.get("miss", 0.0)
        box = truth.copy()
        size = np.concatenate([wh, wh], 1)
        jit = u[:, 1] < spec.get("jitter", 0.0)
        box[jit] += rng.uniform(-0.12, 0.12, (int(jit.sum()), 4)) * size[jit]
        loose = u[:, 2] < spec.get("loose", 0.0)
        grow = rng.uniform(0.05, 0.12, (int(loose.sum()), 4)) * size[loose]
        box[loose] += grow * np.array([-1, -1, 1, 1])
        c = cls.copy()
        conf = (cls == 3) & (u[:, 3] < spec.get("confuse", 0.0))
        c[conf] = 1
        box = np.clip(box, 0, [640, 480, 640, 480])
        for k in np.flatnonzero(keep):
            anns.append(Annotation(len(anns), int(img[k]), tuple(box[k].tolist()),  # type: ignore[arg-type]
                                   int(c[k]), name))
    ds.annotations = anns
    return ds


def baseline(ds: Dataset, iou: float = 0.5, strict: float = 0.75) -> dict[tuple[str, str], dict]:
    """Per image, per pair: IoU matrix + linear_sum_assignment, then count."""
    from scipy.optimize import linear_sum_assignment

    by: dict[tuple[int, str], list[Annotation]] = {}
    for a in ds.annotations:
        by.setdefault((a.image_id, a.annotator or ""), []).append(a)
    names = ds.annotators
    out = {}
    for i, A in enumerate(names):
        for B in names[i + 1:]:
            c = {"matched": 0, "missing_box": 0, "class_mismatch": 0, "localisation": 0}
            for img in ds.images:
                xa, xb = by.get((img.id, A), []), by.get((img.id, B), [])
                if not xa or not xb:
                    continue  # an annotator without boxes here did not label this image
                ba = np.array([a.box for a in xa])
                bb = np.array([b.box for b in xb])
                iw = np.minimum(ba[:, None, 2], bb[None, :, 2]) - np.maximum(ba[:, None, 0],
                                                                             bb[None, :, 0])
                ih = np.minimum(ba[:, None, 3], bb[None, :, 3]) - np.maximum(ba[:, None, 1],
                                                                             bb[None, :, 1])
                inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
                area_a = (ba[:, 2] - ba[:, 0]) * (ba[:, 3] - ba[:, 1])
                area_b = (bb[:, 2] - bb[:, 0]) * (bb[:, 3] - bb[:, 1])
                m = inter / (area_a[:, None] + area_b[None, :] - inter)
                m[m < iou] = 0
                r, k = linear_sum_assignment(m, maximize=True)
                ok = m[r, k] >= iou
                n = int(ok.sum())
                c["matched"] += n
                c["missing_box"] += len(xa) + len(xb) - 2 * n
                for ri, ki in zip(r[ok], k[ok], strict=True):
                    c["class_mismatch"] += xa[ri].category_id != xb[ki].category_id
                    c["localisation"] += m[ri, ki] < strict
            out[(A, B)] = c
    return out


def detops_pairs(ds: Dataset, iou: float = 0.5, strict: float = 0.75) -> dict:
    """The same pair counts as :func:`baseline` from detops' matching engine alone."""
    from detops.data._agreement import labels_from_dataset, match_all

    L, _ = labels_from_dataset(ds)
    out = {}
    for (a, b), m in match_all(L, iou).items():
        both = L.labelled[:, a] & L.labelled[:, b]
        n = int(both[L.image[L.rows_of(a)]].sum() + both[L.image[L.rows_of(b)]].sum())
        out[(L.names[a], L.names[b])] = {
            "matched": len(m.ia), "missing_box": n - 2 * len(m.ia),
            "class_mismatch": int(np.sum(L.category[m.ia] != L.category[m.ib])),
            "localisation": int(np.sum(m.iou < strict))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="images")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for detops")
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    from detops.data.consistency import check_consistency

    t = time.perf_counter()
    ds = make_dataset(args.n)
    made = time.perf_counter() - t
    print(f"{len(ds.images)} images, {len(ds.annotations)} boxes by {', '.join(ds.annotators)} "
          f"(made in {made:.1f}s)")
    check_consistency(ds, top=20)  # warm: imports of scipy pieces
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        report = check_consistency(ds, top=20)
        times.append(time.perf_counter() - t)
    ours = min(times)
    pair_times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        pairs = detops_pairs(ds)
        pair_times.append(time.perf_counter() - t)
    engine = min(pair_times)
    rows: list[tuple[str, float, float | None]] = [
        ("detops matching engine (the same pair counts)", engine, None),
        ("detops check_consistency (full report)", ours, None)]
    same = "-"
    if not args.skip_baseline:
        t = time.perf_counter()
        ref = baseline(ds)
        base = time.perf_counter() - t
        mine = {tuple(p["annotators"]): {
            "matched": p["matched"], "missing_box": sum(p["missing_box"].values()),
            "class_mismatch": p["class_mismatch"], "localisation": p["localisation"]}
            for p in report.pairs}
        ok = mine == ref and pairs == ref
        same = "yes" if ok else f"NO: {mine} / {pairs} vs {ref}"
        rows = [("per-image per-pair loop + linear_sum_assignment (pair counts)", base, 1.0),
                (rows[0][0], engine, base / engine), (rows[1][0], ours, base / ours)]
    print(f"\n{'engine':<70} {'seconds':>8} {'speed-up':>9}")
    for name, secs, ratio in rows:
        print(f"{name:<70} {secs:8.2f} {'' if ratio is None else f'{ratio:8.1f}x':>9}")
    print(f"\nsame pair counts as the baseline: {same}")
    met = "met" if ours <= 10 * args.n / 10_000 else "MISSED"
    print(f"target: <= 10 s for 10,000 images (scaled to {args.n}) -> {met} ({ours:.2f}s; "
          f"{len(report.conventions)} conventions, alpha {report.agreement['alpha']:.3f})")
    for c in report.conventions:
        print(f"  - {c['statement']}")


if __name__ == "__main__":
    main()
