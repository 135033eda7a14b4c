"""The PR plot is a real PNG."""

from __future__ import annotations

from PIL import Image

from detops.evaluate import evaluate_coco, plot_pr_curves


def test_pr_plot_writes_a_png(make_case, tmp_path):
    gt, preds = make_case(51, n_images=20, n_cats=5)
    out = plot_pr_curves(evaluate_coco(gt, preds), tmp_path / "pr.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 500


def test_pr_plot_without_ground_truth(tmp_path):
    gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}], "annotations": []}
    assert plot_pr_curves(evaluate_coco(gt, []), tmp_path / "empty.png").exists()
