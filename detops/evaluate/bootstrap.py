"""Percentile bootstrap confidence intervals for COCO AP, resampling images."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hotcoco
import numpy as np

from detops.evaluate._inputs import load_ground_truth, predictions_array
from detops.evaluate.coco import evaluate_arrays, run_engine


@dataclass(frozen=True)
class BootstrapCI:
    """``point[m]`` is :func:`evaluate_coco`'s value, ``low[m]``/``high[m]`` the interval,
    for ``m`` in ``("AP", "AP50")``; ``samples[m]`` holds the ``n`` resampled values."""

    point: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    n: int
    alpha: float
    seed: int
    samples: dict[str, np.ndarray] = field(repr=False)


METRICS = ("AP", "AP50")


def bootstrap_ci(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    n: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapCI:
    """Percentile ``1 - alpha`` intervals for AP and AP50 by resampling images.

    Each of the ``n`` replicates draws as many images as the ground truth has, with replacement
    (``numpy.random.default_rng(seed)``, so the same seed gives the same interval); a drawn image
    becomes a new image (ids ``1..I``) carrying copies of its GT and predictions, annotation ids
    ``1..G`` — so pycocotools' id-0 quirk never applies to replicates. Each replicate is one
    engine evaluation (milliseconds on small data).

    >>> gt = {"images": [{"id": 1}, {"id": 2}], "categories": [{"id": 1, "name": "a"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9]},
    ...                       {"id": 2, "image_id": 2, "category_id": 1, "bbox": [0, 0, 9, 9]}]}
    >>> preds = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 9, 9], "score": 0.9}]
    >>> ci = bootstrap_ci(gt, preds, n=20, seed=1)
    >>> ci.low["AP50"] <= ci.point["AP50"] <= ci.high["AP50"]
    True
    """
    if n < 1 or not 0 < alpha < 1:
        raise ValueError("bootstrap_ci: need n >= 1 and 0 < alpha < 1")
    g = load_ground_truth(gt)
    dets = predictions_array(predictions, g)
    eng, _ = evaluate_arrays(g, dets)
    point = {m: eng.stats[m] for m in METRICS}

    n_img = len(g.image_ids)
    pos = {int(i): k for k, i in enumerate(g.image_ids.tolist())}
    gt_img = np.array([pos[int(i)] for i in g.ann_image_ids], np.int64)
    dt_img = np.array([pos[int(i)] for i in dets[:, 0]], np.int64)
    gt_rows = _rows_by(gt_img, n_img)
    dt_rows = _rows_by(dt_img, n_img)
    categories = [dict(c) for c in g.categories]

    samples = {m: np.empty(n) for m in METRICS}
    for r, pick in enumerate(resample_images(n_img, n, seed)):
        ga = [gt_rows[k] for k in pick]
        da = [dt_rows[k] for k in pick]
        g_rows = np.concatenate(ga) if ga else np.zeros(0, np.int64)
        d_rows = np.concatenate(da) if da else np.zeros(0, np.int64)
        g_new_img = np.repeat(np.arange(1, n_img + 1), [len(x) for x in ga])
        d_new_img = np.repeat(np.arange(1, n_img + 1), [len(x) for x in da])
        coco_gt = hotcoco.COCO.from_arrays(
            [{"id": i} for i in range(1, n_img + 1)],
            categories,
            g_new_img,
            g.ann_category_ids[g_rows],
            g.boxes[g_rows].reshape(-1, 4),
            ids=np.arange(1, len(g_rows) + 1),
            area=g.area[g_rows],
            iscrowd=g.iscrowd[g_rows],
        )
        d = dets[d_rows].reshape(-1, 7).copy()
        d[:, 0] = d_new_img
        stats = run_engine(coco_gt, d).stats
        for m in METRICS:
            samples[m][r] = stats[m]
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    low, high = {}, {}
    for m in METRICS:
        lo, hi = np.percentile(samples[m], q)
        low[m], high[m] = float(lo), float(hi)
    return BootstrapCI(point, low, high, n, alpha, seed, samples)


def resample_images(n_img: int, n: int, seed: int) -> Iterator[np.ndarray]:
    """The ``n`` bootstrap draws of :func:`bootstrap_ci`: each ``n_img`` image indexes drawn
    with replacement. Other statistics resampled with the same ``seed`` (e.g. precision and
    recall beside AP) use the very same replicates.

    >>> [p.tolist() for p in resample_images(3, 2, seed=0)]
    [[2, 1, 1], [0, 0, 0]]
    """
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, n_img, n_img)


def _rows_by(owner: np.ndarray, n: int) -> list[np.ndarray]:
    order = np.argsort(owner, kind="stable")
    counts = np.bincount(owner, minlength=n)
    return np.split(order, np.cumsum(counts)[:-1])
