"""TIDE-style breakdown on a hand-built image where every error type is known."""

from __future__ import annotations

import pytest

from detops.evaluate import ERROR_TYPES, error_analysis, evaluate_coco


def box(x, y, w=10, h=10):
    return [x, y, w, h]


GT = {
    "images": [{"id": 1}],
    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    "annotations": [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": box(0, 0)},  # found
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": box(100, 100)},  # Loc target
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": box(200, 200)},  # Cls target
        {"id": 4, "image_id": 1, "category_id": 1, "bbox": box(300, 300)},  # missed
        {"id": 5, "image_id": 1, "category_id": 1, "bbox": box(400, 400, 50, 50), "iscrowd": 1},
    ],
}
PREDS = [
    {"image_id": 1, "category_id": 1, "bbox": box(0, 0), "score": 0.9},  # TP
    {"image_id": 1, "category_id": 1, "bbox": box(0, 0), "score": 0.8},  # Dupe
    {"image_id": 1, "category_id": 1, "bbox": box(105, 100), "score": 0.7},  # Loc, IoU 1/3
    {"image_id": 1, "category_id": 1, "bbox": box(200, 200), "score": 0.65},  # Cls, IoU 1
    {"image_id": 1, "category_id": 2, "bbox": box(106, 100), "score": 0.6},  # Both, IoU .25
    {"image_id": 1, "category_id": 1, "bbox": box(600, 600), "score": 0.5},  # Bkg
    {"image_id": 1, "category_id": 1, "bbox": box(410, 410), "score": 0.45},  # on crowd: ignored
    {"image_id": 1, "category_id": 2, "bbox": box(700, 700), "score": 0.05},  # below threshold
]


def test_each_prediction_gets_its_known_type():
    ea = error_analysis(GT, PREDS, score_threshold=0.1)
    assert ea.detection_errors == {1: "Dupe", 2: "Loc", 3: "Cls", 4: "Both", 5: "Bkg"}
    assert ea.missed == (4,)
    assert ea.counts == {"Cls": 1, "Loc": 1, "Both": 1, "Dupe": 1, "Bkg": 1, "Miss": 1}
    assert set(ea.delta_ap50) == set(ERROR_TYPES)
    assert all(ea.delta_ap50[t] > 0 for t in ("Cls", "Loc", "Miss"))
    # The Dupe, Both and Bkg predictions rank below every true positive of their class: free.
    assert ea.delta_ap50["Dupe"] == ea.delta_ap50["Both"] == ea.delta_ap50["Bkg"] == 0.0


def test_a_duplicate_above_a_true_positive_costs_ap():
    preds = [
        {"image_id": 1, "category_id": 1, "bbox": box(0, 0), "score": 0.9},  # TP
        {"image_id": 1, "category_id": 1, "bbox": box(0, 0), "score": 0.8},  # Dupe
        {"image_id": 1, "category_id": 1, "bbox": box(300, 300), "score": 0.7},  # TP
    ]
    ea = error_analysis(GT, preds)
    assert ea.detection_errors == {1: "Dupe"}
    want = evaluate_coco(GT, [preds[0], preds[2]]).stats["AP50"] - ea.ap50
    assert ea.delta_ap50["Dupe"] == pytest.approx(want, abs=1e-12) and want > 0


@pytest.mark.parametrize(
    ("kind", "fix"),
    [
        ("Cls", lambda p: [{**q, "category_id": 2} if i == 3 else q for i, q in enumerate(p)]),
        ("Loc", lambda p: [{**q, "bbox": box(100, 100)} if i == 2 else q for i, q in enumerate(p)]),
        ("Dupe", lambda p: [q for i, q in enumerate(p) if i != 1]),
        ("Both", lambda p: [q for i, q in enumerate(p) if i != 4]),
        ("Bkg", lambda p: [q for i, q in enumerate(p) if i != 5]),
    ],
)
def test_delta_is_the_oracle_fix_re_evaluated(kind, fix):
    kept = [p for p in PREDS if p["score"] >= 0.1]
    base = evaluate_coco(GT, kept).stats["AP50"]
    ea = error_analysis(GT, PREDS, score_threshold=0.1)
    assert ea.ap50 == pytest.approx(base, abs=1e-12)
    want = evaluate_coco(GT, fix(kept)).stats["AP50"] - base
    assert ea.delta_ap50[kind] == pytest.approx(want, abs=1e-12)


def test_miss_fix_drops_the_missed_ground_truth():
    kept = [p for p in PREDS if p["score"] >= 0.1]
    ea = error_analysis(GT, PREDS, score_threshold=0.1)
    gt = {**GT, "annotations": [a for a in GT["annotations"] if a["id"] != 4]}
    want = evaluate_coco(gt, kept).stats["AP50"] - ea.ap50
    assert ea.delta_ap50["Miss"] == pytest.approx(want, abs=1e-12)


def test_a_cls_fix_onto_a_found_gt_removes_the_prediction():
    preds = [
        {"image_id": 1, "category_id": 2, "bbox": box(200, 200), "score": 0.9},  # TP on 3
        {"image_id": 1, "category_id": 1, "bbox": box(200, 200), "score": 0.8},  # Cls on 3
    ]
    ea = error_analysis(GT, preds)
    assert ea.detection_errors == {1: "Cls"}
    want = evaluate_coco(GT, preds[:1]).stats["AP50"] - ea.ap50
    assert ea.delta_ap50["Cls"] == pytest.approx(want, abs=1e-12)
