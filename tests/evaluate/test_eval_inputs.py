"""Bad predictions and ground truth are refused with the record and the problem named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detops.errors import EvaluationError
from detops.evaluate import evaluate_coco

GT = {
    "images": [{"id": 1}, {"id": 2}],
    "categories": [{"id": 1, "name": "a"}],
    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}],
}


def good(**change):
    return {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5, **change}


def without(key):
    p = good()
    del p[key]
    return p


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (good(image_id=999), "predictions[2]: image_id 999 is not in the ground truth"),
        (good(category_id=7), "predictions[2]: category_id 7 is not in the ground truth"),
        (good(image_id="1"), "predictions[2]: image_id must be an integer"),
        (good(image_id=1.5), "predictions[2]: image_id must be an integer"),
        (good(bbox=[0, 0, math.nan, 10]), "predictions[2]: bbox [0, 0, nan, 10] is not finite"),
        (good(bbox=[0, math.inf, 1, 10]), "predictions[2]: bbox [0, inf, 1, 10] is not finite"),
        (good(bbox=[0, 0, -1, 10]), "predictions[2]: bbox [0, 0, -1, 10] has negative width"),
        (good(bbox=[0, 0, 10]), "predictions[2]: bbox must be 4 numbers"),
        (good(bbox=[0, 0, 10, 10, 1]), "predictions[2]: bbox must be 4 numbers"),
        (good(bbox=[0, 0, "10", 10]), "predictions[2]: bbox must be 4 numbers"),
        (good(bbox=None), "predictions[2]: bbox must be 4 numbers"),
        (without("score"), "predictions[2]: missing 'score'"),
        (without("bbox"), "predictions[2]: missing 'bbox'"),
        (without("image_id"), "predictions[2]: missing 'image_id'"),
        (good(score=math.nan), "predictions[2]: score nan is not finite"),
        (good(score=None), "predictions[2]: score must be a number"),
        (good(score=True), "predictions[2]: score must be a number"),
        ("not a dict", "predictions[2]: must be a dict"),
    ],
)
def test_bad_prediction_is_named(bad, message):
    with pytest.raises(EvaluationError) as err:
        evaluate_coco(GT, [good(), good(image_id=2), bad, good()])
    assert str(err.value).startswith(message)


def test_numpy_values_and_integral_float_ids_are_accepted():
    p = {
        "image_id": np.int64(1),
        "category_id": 1.0,
        "bbox": np.array([0, 0, 10, 10.0]),
        "score": np.float32(0.5),
    }
    assert evaluate_coco(GT, [p]).stats["AP50"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("gt", "message"),
    [
        ({"images": []}, "ground truth: 'annotations' must be a list"),
        (
            {
                **GT,
                "annotations": [{"id": 1, "image_id": 5, "category_id": 1, "bbox": [0, 0, 1, 1]}],
            },
            "gt['annotations'][0]: image_id 5 is not in gt['images']",
        ),
        (
            {**GT, "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]},
            "gt['annotations'][0]: needs an integer 'id'",
        ),
        (
            {
                **GT,
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, -1, 1]}],
            },
            "gt['annotations'][0]: bbox [0, 0, -1, 1] has negative width",
        ),
        ({**GT, "images": [{"id": 1}, {"id": 1}]}, "ground truth: image ids are not unique"),
        (
            {**GT, "annotations": GT["annotations"] * 2},
            "gt['annotations'][1]: id 1 is also the id of gt['annotations'][0]",
        ),
    ],
)
def test_bad_ground_truth_is_named(gt, message):
    with pytest.raises(EvaluationError, match=None) as err:
        evaluate_coco(gt, [])
    assert str(err.value).startswith(message)


def test_errors_are_value_errors_too():
    with pytest.raises(ValueError):
        evaluate_coco(GT, [good(image_id=3)])
