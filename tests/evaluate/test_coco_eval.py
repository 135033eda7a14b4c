"""evaluate_coco against the oracle, pycocotools' COCOeval, on generated inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detops.evaluate import STAT_KEYS, evaluate_coco, evaluate_slices


def as_array(result) -> np.ndarray:
    return np.array([result.stats[k] for k in STAT_KEYS])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    n_images=st.integers(1, 12),
    n_cats=st.integers(1, 5),
    crowd_rate=st.sampled_from([0.0, 0.15, 0.5]),
    score_levels=st.sampled_from([None, 2, 5]),
    id_zero=st.booleans(),
    dense_image=st.booleans(),
    integer_boxes=st.booleans(),
)
def test_twelve_numbers_equal_pycocotools(
    make_case,
    oracle_stats,
    seed,
    n_images,
    n_cats,
    crowd_rate,
    score_levels,
    id_zero,
    dense_image,
    integer_boxes,
):
    gt, preds = make_case(
        seed,
        n_images=n_images,
        n_cats=n_cats,
        crowd_rate=crowd_rate,
        score_levels=score_levels,
        id_zero=id_zero,
        dense_image=dense_image,
        integer_boxes=integer_boxes,
    )
    got = as_array(evaluate_coco(gt, preds))
    np.testing.assert_allclose(got, oracle_stats(gt, preds), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "case",
    [
        dict(seed=1),  # plain
        dict(seed=2, id_zero=True, score_levels=3),  # id 0 with ties
        dict(seed=3, id_zero=True, dense_image=True, crowd_rate=0.3),  # id 0, cap, crowd
        dict(seed=4, empty_image_rate=1.0),  # no ground truth at all
        dict(seed=5, no_pred_rate=1.0),  # GT but no predictions (list is empty)
        dict(seed=6, n_images=1, dense_image=True, score_levels=1),  # 150 tied scores
    ],
)
def test_named_cases_equal_pycocotools(make_case, oracle_stats, case):
    gt, preds = make_case(**case)
    np.testing.assert_allclose(
        as_array(evaluate_coco(gt, preds)), oracle_stats(gt, preds), rtol=0, atol=1e-12
    )


def test_id_zero_follows_pycocotools_and_says_so():
    gt = {
        "images": [{"id": 1}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "id": 0,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 10, 10],
                "area": 100,
                "iscrowd": 0,
            }
        ],
    }
    perfect = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 1.0}]
    r = evaluate_coco(gt, perfect)
    assert r.stats["AP"] == 0.0  # pycocotools: the perfect box is a false positive
    assert r.notes and "id 0" in r.notes[0]
    gt["annotations"][0]["id"] = 1
    r = evaluate_coco(gt, perfect)
    assert r.stats["AP"] == pytest.approx(1.0, abs=1e-12) and r.notes == ()


def test_missing_area_and_iscrowd_use_box_area(make_case, oracle_stats):
    gt, preds = make_case(11, drop_area=True)
    for a in gt["annotations"]:
        a.pop("iscrowd")
    filled = {
        **gt,
        "annotations": [
            {**a, "area": a["bbox"][2] * a["bbox"][3], "iscrowd": 0} for a in gt["annotations"]
        ],
    }
    np.testing.assert_allclose(
        as_array(evaluate_coco(gt, preds)), oracle_stats(filled, preds), rtol=0, atol=1e-12
    )


def test_empty_predictions_are_zero_where_there_is_ground_truth():
    gt = {
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0}
        ],
    }
    s = evaluate_coco(gt, []).stats
    assert s["AP"] == s["APs"] == s["AR100"] == 0.0
    assert s["APm"] == s["APl"] == s["ARm"] == -1.0


def test_per_class_and_curves_come_from_the_engine_arrays(make_case, oracle_eval):
    gt, preds = make_case(21, n_images=10, n_cats=4)
    r = evaluate_coco(gt, preds)
    ev = oracle_eval(gt, preds)
    np.testing.assert_allclose(r.precision, ev.eval["precision"], rtol=0, atol=1e-12)
    for k, name in enumerate(r.category_names):
        p = ev.eval["precision"][:, :, k, 0, -1]
        if (p > -1).any():
            assert r.per_class[name]["AP"] == pytest.approx(np.mean(p[p > -1]), abs=1e-12)
            assert r.per_class[name]["AP50"] == pytest.approx(np.mean(p[0]), abs=1e-12)
            np.testing.assert_array_equal(r.pr_curves[name]["iou50"], p[0])
        else:
            assert r.per_class[name] == {"AP": -1.0, "AP50": -1.0}
            assert name not in r.pr_curves
    assert r.recall_thresholds.shape == (101,)


def test_slices_equal_evaluating_each_subset(make_case, oracle_stats):
    gt, preds = make_case(31, n_images=12)
    for i, im in enumerate(gt["images"]):
        if i % 3 == 0:
            im["tags"] = {"weather": "rain"}
        elif i % 3 == 1:
            im["weather"] = "sun"
    slices = evaluate_slices(gt, preds, "weather")
    assert sorted(slices) == ["(untagged)", "rain", "sun"]
    for name, res in slices.items():
        ids = {
            im["id"]
            for im in gt["images"]
            if (im.get("tags", {}).get("weather") or im.get("weather") or "(untagged)") == name
        }
        sub = {
            "images": [im for im in gt["images"] if im["id"] in ids],
            "categories": gt["categories"],
            "annotations": [a for a in gt["annotations"] if a["image_id"] in ids],
        }
        sub_preds = [p for p in preds if p["image_id"] in ids]
        np.testing.assert_allclose(as_array(res), oracle_stats(sub, sub_preds), rtol=0, atol=1e-12)
