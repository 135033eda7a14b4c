"""Bootstrap intervals: deterministic from the seed, around the point estimate."""

from __future__ import annotations

import numpy as np
import pytest

from detops.evaluate import bootstrap_ci, evaluate_coco


def test_same_seed_same_interval_other_seed_other_samples(make_case):
    gt, preds = make_case(41, n_images=30, n_cats=3)
    a = bootstrap_ci(gt, preds, n=50, seed=3)
    b = bootstrap_ci(gt, preds, n=50, seed=3)
    c = bootstrap_ci(gt, preds, n=50, seed=4)
    np.testing.assert_array_equal(a.samples["AP"], b.samples["AP"])
    assert (a.low, a.high) == (b.low, b.high)
    assert not np.array_equal(a.samples["AP"], c.samples["AP"])


def test_interval_contains_the_point_estimate(make_case):
    gt, preds = make_case(42, n_images=40, n_cats=3)
    ci = bootstrap_ci(gt, preds, n=200, seed=0)
    point = evaluate_coco(gt, preds).stats
    for m in ("AP", "AP50"):
        assert ci.point[m] == point[m]
        assert ci.low[m] <= point[m] <= ci.high[m]
        assert ci.high[m] - ci.low[m] > 0


def test_a_replicate_is_pycocotools_on_the_resampled_dataset(make_case, oracle_stats):
    # Replicate r draws default_rng(seed).integers(0, I, I) image positions (documented).
    gt, preds = make_case(43, n_images=10, crowd_rate=0.2)
    ci = bootstrap_ci(gt, preds, n=2, seed=7)
    rng = np.random.default_rng(7)
    for r in range(2):
        pick = rng.integers(0, 10, 10)
        images, anns, res = [], [], []
        for new_id, k in enumerate(pick, start=1):
            old = gt["images"][k]["id"]
            images.append({"id": new_id})
            for a in gt["annotations"]:
                if a["image_id"] == old:
                    anns.append({**a, "image_id": new_id, "id": len(anns) + 1})
            res += [{**p, "image_id": new_id} for p in preds if p["image_id"] == old]
        want = oracle_stats(
            {"images": images, "categories": gt["categories"], "annotations": anns}, res
        )
        assert ci.samples["AP"][r] == pytest.approx(want[0], abs=1e-12)
        assert ci.samples["AP50"][r] == pytest.approx(want[1], abs=1e-12)
