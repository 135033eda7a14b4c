"""Precision/recall/F1 at a score threshold with COCO's greedy matching."""

from __future__ import annotations

import pytest

from detops.evaluate import precision_recall_f1

GT = {
    "images": [{"id": 1}, {"id": 2}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 0, 10, 10]},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10]},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [50, 50, 40, 40], "iscrowd": 1},
    ],
}
PREDS = [
    {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.9},  # TP
    {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "score": 0.8},  # FP duplicate
    {"image_id": 2, "category_id": 2, "bbox": [60, 60, 10, 10], "score": 0.7},  # crowd: ignored
    {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.6},  # FP wrong class
    {"image_id": 2, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.3},  # TP below 0.5
]


@pytest.mark.parametrize(
    ("thr", "tp", "fp", "fn"),
    [
        (0.0, 2, 2, 1),  # everything
        (0.5, 1, 2, 2),  # the class-b TP is cut
        (0.95, 0, 0, 3),  # nothing kept
    ],
)
def test_counts_at_threshold(thr, tp, fp, fn):
    r = precision_recall_f1(GT, PREDS, thr)
    assert (r.tp, r.fp, r.fn) == (tp, fp, fn)
    p = tp / (tp + fp) if tp + fp else 0.0
    rc = tp / (tp + fn)
    assert r.precision == pytest.approx(p) and r.recall == pytest.approx(rc)
    assert r.f1 == pytest.approx(2 * p * rc / (p + rc) if p + rc else 0.0)


def test_per_class_counts():
    r = precision_recall_f1(GT, PREDS, 0.0)
    assert (r.per_class["a"]["tp"], r.per_class["a"]["fp"], r.per_class["a"]["fn"]) == (1, 2, 1)
    assert (r.per_class["b"]["tp"], r.per_class["b"]["fp"], r.per_class["b"]["fn"]) == (1, 0, 0)
