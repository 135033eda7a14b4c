"""Greedy non-maximum suppression in numpy.

Boxes are visited in descending score (ties: lower index first); each kept box suppresses every
later box of the same class (any class when ``labels`` is ``None``) whose IoU with it is
strictly greater than ``iou_threshold``, as torchvision's ``nms``/``batched_nms`` do. IoU is
computed in float64; a pair with zero union has IoU 0.

Two ways to the same result. A loop runs once per KEPT box (each step vectorised over the
remaining candidates) and stops at ``max_output`` kept boxes, so its cost is bounded by
``max_detections`` rather than by the number of candidates; but a step costs ~15-30 us of numpy
calls, so keeping many boxes is slow (57 of the default detector's 100 outputs with random
weights: 1.2-2.0 ms). Once at most ``MATRIX_MAX`` candidates remain and a step suppressed at
most one (spread-out boxes: most will be kept), the rest go at once: their pairwise IoU matrix,
each row packed into a Python int (a bitmask of the later boxes it suppresses), and the greedy
scan a loop of integer operations. Clustered candidates (a raw YOLO-style head: many per
object) stay in the loop, where each step removes a cluster.

>>> import numpy as np
>>> boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
>>> nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
[0, 2]
>>> nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5, labels=np.array([0, 1, 0])).tolist()
[0, 1, 2]
"""

from __future__ import annotations

import numpy as np

# the most candidates the matrix takes (a 256 x 256 float64 matrix is 512 KB). Measured with
# bench/nms_bench.py against the loop alone, three runs: 4.1-6.0x on the default detector's
# outputs, 6.2-9.0x on 50-128 spread-out boxes, 3.2-3.6x on 300 (1.4-1.6x with 128 here);
# clustered candidates level (they stay in the loop)
MATRIX_MAX = 256


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    *,
    labels: np.ndarray | None = None,
    max_output: int | None = None,
) -> np.ndarray:
    """Indices (int64) of the boxes kept, in descending score order.

    ``boxes``: (N, 4) ``xyxy``; ``scores``: (N,); ``labels``: (N,) class ids for per-class
    suppression, or ``None`` for class-agnostic.
    """
    n = scores.shape[0]
    limit = n if max_output is None else min(n, max_output)
    if n == 0 or limit <= 0:
        return np.zeros((0,), np.int64)
    order = np.argsort(-scores, kind="stable")
    b = boxes.astype(np.float64)
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    area = np.maximum(x2 - x1, 0.0) * np.maximum(y2 - y1, 0.0)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if len(keep) == limit:
            return np.array(keep, np.int64)
        rest = order[1:]
        iw = np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])
        np.maximum(iw, 0.0, out=iw)
        ih = np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])
        np.maximum(ih, 0.0, out=ih)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        survive = iou <= iou_threshold
        if labels is not None:
            survive |= labels[rest] != labels[i]
        order = rest[survive]
        if order.size <= MATRIX_MAX and rest.size - order.size <= 1:
            break  # spread-out boxes (this one suppressed at most one): most will be kept
    if order.size:
        lab = None if labels is None else labels[order]
        ox1, oy1, ox2, oy2 = x1[order], y1[order], x2[order], y2[order]
        found = _scan(ox1, oy1, ox2, oy2, area[order], lab, iou_threshold, limit - len(keep))
        keep.extend(order[found].tolist())
    return np.array(keep, np.int64)


def _scan(
    x1: np.ndarray,
    y1: np.ndarray,
    x2: np.ndarray,
    y2: np.ndarray,
    area: np.ndarray,
    labels: np.ndarray | None,
    iou_threshold: float,
    limit: int,
) -> list[int]:
    """Greedy NMS of candidates already in descending score order, from their IoU matrix (the
    same float64 arithmetic, pair by pair, as the loop in :func:`nms`); positions kept."""
    iw = np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :])
    np.maximum(iw, 0.0, out=iw)
    ih = np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :])
    np.maximum(ih, 0.0, out=ih)
    inter = iw * ih
    union = area[:, None] + area[None, :] - inter
    over = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0) > iou_threshold
    if labels is not None:
        over &= labels[:, None] == labels[None, :]
    # row i as an int: bit j set when box i, if kept, suppresses the later box j
    rows = np.packbits(np.triu(over, 1), axis=1, bitorder="little")
    kept: list[int] = []
    suppressed = 0
    for j in range(area.shape[0]):
        if suppressed >> j & 1:
            continue
        kept.append(j)
        if len(kept) == limit:
            break
        suppressed |= int.from_bytes(rows[j].tobytes(), "little")
    return kept
