"""Greedy non-maximum suppression in numpy.

Boxes are visited in descending score (ties: lower index first); each kept box suppresses every
later box of the same class (any class when ``labels`` is ``None``) whose IoU with it is
strictly greater than ``iou_threshold``, as torchvision's ``nms``/``batched_nms`` do. IoU is
computed in float64; a pair with zero union has IoU 0. The loop runs once per KEPT box (each
step vectorised over the remaining candidates) and stops at ``max_output`` kept boxes, so its
cost is bounded by ``max_detections`` rather than by the number of candidates.

Per-class suppression compares labels instead of shifting boxes by a class offset, so the
result does not depend on coordinate magnitudes.

>>> import numpy as np
>>> boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], np.float32)
>>> nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5).tolist()
[0, 2]
>>> nms(boxes, np.array([0.9, 0.8, 0.7], np.float32), 0.5, labels=np.array([0, 1, 0])).tolist()
[0, 1, 2]
"""

from __future__ import annotations

import numpy as np


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
    keep = np.empty(limit, np.int64)
    k = 0
    while order.size:
        i = order[0]
        keep[k] = i
        k += 1
        if k == limit or order.size == 1:
            break
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
    return keep[:k]
