"""COCO-style greedy matching at one IoU threshold, and the counts it gives.

Used where a single operating point is wanted (precision/recall/F1 at a score threshold, the
error analysis) rather than the whole precision-recall curve. The rule is pycocotools' per image
and category: detections by descending score (stable), each takes the unmatched non-crowd GT of
its class with the highest IoU >= threshold; failing that, a crowd GT with IoU (over the
detection's area) >= threshold makes it ignored; otherwise it is a false positive. Unlike
``evaluate_coco`` there is no 100-per-image cap and no size bucket, and every GT id counts (the
id-0 quirk is pycocotools' alone).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detops.evaluate._inputs import GroundTruth, load_ground_truth, predictions_array

TP, FP, IGNORED = 1, 0, -1


def iou_matrix(dets: np.ndarray, gts: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """IoU of xywh boxes, ``(D, G)``; for crowd GT the union is the detection's area."""
    if len(dets) == 0 or len(gts) == 0:
        return np.zeros((len(dets), len(gts)))
    dx1, dy1 = dets[:, 0:1], dets[:, 1:2]
    dx2, dy2 = dx1 + dets[:, 2:3], dy1 + dets[:, 3:4]
    gx1, gy1 = gts[:, 0], gts[:, 1]
    gx2, gy2 = gx1 + gts[:, 2], gy1 + gts[:, 3]
    iw = np.minimum(dx2, gx2) - np.maximum(dx1, gx1)
    ih = np.minimum(dy2, gy2) - np.maximum(dy1, gy1)
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    da = dets[:, 2:3] * dets[:, 3:4]
    union = da + gts[:, 2] * gts[:, 3] - inter
    if crowd is not None:
        union = np.where(crowd.astype(bool)[None, :], da, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out


def iou_matrix_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`iou_matrix` of ``xyxy`` boxes, ``(A, B)``."""

    def xywh(x: np.ndarray) -> np.ndarray:
        x = x.reshape(-1, 4)
        return np.concatenate([x[:, :2], x[:, 2:4] - x[:, :2]], axis=1)

    return iou_matrix(xywh(a), xywh(b))


def greedy_match(
    ious: np.ndarray, crowd: np.ndarray, thr: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Match detections (rows, already in score order) to GT (columns).

    Returns ``status`` per detection (TP, FP or IGNORED) and ``match``: the GT column a TP or
    ignored detection took, else -1.
    """
    d_n, g_n = ious.shape
    status = np.full(d_n, FP, np.int64)
    match = np.full(d_n, -1, np.int64)
    crowd = crowd.astype(bool)
    used = np.zeros(g_n, bool)
    t = min(thr, 1 - 1e-10)
    for d in range(d_n):
        free = ~used & ~crowd & (ious[d] >= t)
        if free.any():
            g = int(np.flatnonzero(free)[np.argmax(ious[d, free])])
            used[g] = True
            status[d], match[d] = TP, g
            continue
        hit = crowd & (ious[d] >= t)
        if hit.any():
            status[d], match[d] = IGNORED, int(np.flatnonzero(hit)[np.argmax(ious[d, hit])])
    return status, match


@dataclass(frozen=True)
class Matching:
    """Greedy matching of a whole dataset, one entry per prediction / GT annotation."""

    status: np.ndarray  # (N,) TP / FP / IGNORED, by prediction index
    match: np.ndarray  # (N,) GT row matched (TP or crowd), else -1
    gt_found: np.ndarray  # (G,) bool, by GT row


def match_dataset(g: GroundTruth, dets: np.ndarray, thr: float = 0.5) -> Matching:
    """Greedy matching for every (image, category) group. ``dets`` as ``predictions_array``."""
    n = len(dets)
    status = np.full(n, FP, np.int64)
    match = np.full(n, -1, np.int64)
    found = np.zeros(len(g.ann_ids), bool)
    gt_groups: dict[tuple[int, int], np.ndarray] = {}
    if len(g.ann_ids):
        key = np.stack([g.ann_image_ids, g.ann_category_ids], 1)
        for k, rows in _groups(key).items():
            gt_groups[k] = rows
    if n:
        key = dets[:, [0, 6]].astype(np.int64)
        for k, rows in _groups(key).items():
            rows = rows[np.argsort(-dets[rows, 5], kind="mergesort")]
            grows = gt_groups.get(k)
            if grows is None:
                continue
            ious = iou_matrix(dets[rows, 1:5], g.boxes[grows], g.iscrowd[grows])
            st, m = greedy_match(ious, g.iscrowd[grows], thr)
            status[rows] = st
            hit = m >= 0
            match[rows[hit]] = grows[m[hit]]
            found[grows[m[st == TP]]] = True
    return Matching(status, match, found)


def _groups(key: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """Row indices per distinct key row, each in ascending row order."""
    order = np.lexsort((np.arange(len(key)), key[:, 1], key[:, 0]))
    k = key[order]
    cut = np.flatnonzero((np.diff(k, axis=0) != 0).any(axis=1)) + 1
    out = {}
    for part in np.split(order, cut):
        out[(int(key[part[0], 0]), int(key[part[0], 1]))] = part
    return out


@dataclass(frozen=True)
class PRF:
    """Counts and rates at one score threshold; ``per_class`` keyed by category name."""

    score_threshold: float
    iou_threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    per_class: dict[str, dict[str, float]]


def _rates(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def precision_recall_f1(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    score_threshold: float = 0.5,
    *,
    iou_threshold: float = 0.5,
) -> PRF:
    """Precision, recall and F1 of the predictions scoring ``>= score_threshold``.

    Matching is COCO's greedy rule at ``iou_threshold`` (see the module docstring); predictions
    on crowd regions are ignored, crowd GT are never counted as missed. Rates with a zero
    denominator are 0.0.

    >>> gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "cat"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}]}
    >>> preds = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},
    ...          {"image_id": 1, "category_id": 1, "bbox": [50, 50, 10, 10], "score": 0.8}]
    >>> r = precision_recall_f1(gt, preds, 0.5)
    >>> r.tp, r.fp, r.fn, r.precision, r.recall
    (1, 1, 0, 0.5, 1.0)
    """
    g = load_ground_truth(gt)
    dets = predictions_array(predictions, g)
    dets = dets[dets[:, 5] >= score_threshold]
    m = match_dataset(g, dets, iou_threshold)
    real = g.iscrowd == 0
    per_class: dict[str, dict[str, float]] = {}
    for cid, name in g.category_names.items():
        in_c = dets[:, 6] == cid
        tp = int(np.sum(m.status[in_c] == TP))
        fp = int(np.sum(m.status[in_c] == FP))
        fn = int(np.sum(real & ~m.gt_found & (g.ann_category_ids == cid)))
        p, r, f = _rates(tp, fp, fn)
        per_class[name] = {"tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r, "f1": f}
    tp = int(np.sum(m.status == TP))
    fp = int(np.sum(m.status == FP))
    fn = int(np.sum(real & ~m.gt_found))
    p, r, f = _rates(tp, fp, fn)
    return PRF(score_threshold, iou_threshold, tp, fp, fn, p, r, f, per_class)


def best_f1_threshold(
    gt: dict[str, Any], preds: list[dict[str, Any]], candidates: Any = None
) -> tuple[float, float]:
    """The score threshold (from ``candidates``, default 0.05..0.95) maximising F1 at IoU 0.5."""
    grid = np.round(np.arange(0.05, 0.96, 0.05), 2) if candidates is None else candidates
    best = (0.3, -1.0)
    for t in grid:
        f1 = precision_recall_f1(gt, preds, float(t)).f1
        if f1 > best[1]:
            best = (float(t), float(f1))
    return best
