"""Factories for evaluation tests: seeded COCO cases and the pycocotools oracle."""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest


def make_coco_case(
    seed: int = 0,
    *,
    n_images: int = 8,
    n_cats: int = 4,
    max_gt: int = 6,
    crowd_rate: float = 0.1,
    empty_image_rate: float = 0.2,
    no_pred_rate: float = 0.2,
    score_levels: int | None = None,
    id_zero: bool = False,
    dense_image: bool = False,
    integer_boxes: bool = False,
    drop_area: bool = False,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A random COCO GT dict and results list, with the traps pycocotools is known for.

    The last category never has ground truth (its predictions are false positives that
    pycocotools drops); ``score_levels`` quantises scores to make ties; ``id_zero`` gives one
    annotation id 0; ``dense_image`` puts 150 detections of one class on image 1 (per-category
    cap of 100).
    """
    rng = np.random.default_rng(seed)
    images = [{"id": i + 1, "width": 640, "height": 480} for i in range(n_images)]
    cats = [{"id": 10 + c, "name": f"class{c}"} for c in range(n_cats)]
    gt_cats = [c["id"] for c in cats[:-1]] if n_cats > 1 else [cats[0]["id"]]
    anns: list[dict[str, Any]] = []

    def box(scale: float) -> list[float]:
        w, h = rng.uniform(0.3, 1.0, 2) * scale
        x, y = rng.uniform(0, 400, 2)
        b = [x, y, w, h]
        return [float(round(v)) for v in b] if integer_boxes else [float(v) for v in b]

    for im in images:
        if rng.random() < empty_image_rate:
            continue
        for _ in range(int(rng.integers(1, max_gt + 1))):
            scale = float(rng.choice([20.0, 60.0, 200.0]))  # small, medium, large
            b = box(scale)
            a = {
                "id": len(anns) + 1,
                "image_id": im["id"],
                "category_id": int(rng.choice(gt_cats)),
                "bbox": b,
                "area": b[2] * b[3] * float(rng.uniform(0.6, 1.0)),  # mask area < box area
                "iscrowd": int(rng.random() < crowd_rate),
            }
            if drop_area:
                del a["area"]
            anns.append(a)
    if id_zero and anns:
        anns[int(rng.integers(len(anns)))]["id"] = 0

    def score() -> float:
        if score_levels:
            return float(rng.integers(score_levels)) / score_levels
        return float(rng.random())

    preds: list[dict[str, Any]] = []
    by_image: dict[int, list[dict[str, Any]]] = {}
    for a in anns:
        by_image.setdefault(a["image_id"], []).append(a)
    for im in images:
        if rng.random() < no_pred_rate:
            continue
        for a in by_image.get(im["id"], []):
            for _ in range(int(rng.integers(0, 3))):
                x, y, w, h = a["bbox"]
                j = rng.normal(0, 0.15, 4) * [w, h, w, h]
                b = [x + j[0], y + j[1], max(0.0, w + j[2]), max(0.0, h + j[3])]
                if integer_boxes:
                    b = [float(round(v)) for v in b]
                cat = a["category_id"] if rng.random() < 0.8 else int(rng.choice(cats)["id"])
                preds.append(
                    {"image_id": im["id"], "category_id": cat, "bbox": b, "score": score()}
                )
        for _ in range(int(rng.integers(0, 4))):
            preds.append(
                {
                    "image_id": im["id"],
                    "category_id": int(rng.choice(cats)["id"]),
                    "bbox": box(float(rng.choice([20.0, 60.0, 200.0]))),
                    "score": score(),
                }
            )
    if dense_image:
        cat = gt_cats[0]
        for _ in range(150):
            preds.append({"image_id": 1, "category_id": cat, "bbox": box(60.0), "score": score()})
    order = rng.permutation(len(preds))
    preds = [preds[i] for i in order]
    return {"images": images, "categories": cats, "annotations": anns}, preds


def pycocotools_stats(gt: dict[str, Any], preds: list[dict[str, Any]]) -> np.ndarray:
    """The oracle: ``COCOeval.stats``, quietly. Empty results become a COCO with no anns."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if preds:
            coco_dt = coco_gt.loadRes(copy.deepcopy(preds))
        else:
            coco_dt = COCO()
            coco_dt.dataset = {
                "images": gt["images"],
                "categories": gt["categories"],
                "annotations": [],
            }
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def pycocotools_eval(gt: dict[str, Any], preds: list[dict[str, Any]]) -> Any:
    """The oracle's whole ``COCOeval`` (for its precision array)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(preds)), "bbox")
        ev.evaluate()
        ev.accumulate()
    return ev


@pytest.fixture(scope="session")
def make_case() -> Callable[..., tuple[dict[str, Any], list[dict[str, Any]]]]:
    return make_coco_case


@pytest.fixture(scope="session")
def oracle_stats() -> Callable[[dict[str, Any], list[dict[str, Any]]], np.ndarray]:
    return pycocotools_stats


@pytest.fixture(scope="session")
def oracle_eval() -> Callable[[dict[str, Any], list[dict[str, Any]]], Any]:
    return pycocotools_eval
