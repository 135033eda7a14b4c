"""Checking and normalising COCO ground truth and prediction lists.

Everything downstream works on the two frozen containers built here:

* :class:`GroundTruth` — the GT dict reduced to what bbox evaluation reads, as columns, with
  ``area`` filled in (``w*h``) and ``iscrowd`` defaulted to 0 where the file leaves them out.
* a ``(N, 7)`` float64 array of predictions, columns
  ``[image_id, x, y, w, h, score, category_id]`` in the caller's order (row ``i`` is
  ``predictions[i]``; the engine gives it the result id ``i + 1``, as pycocotools' ``loadRes``
  does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any

import numpy as np

from detops.errors import EvaluationError

PRED_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")


@dataclass(frozen=True)
class GroundTruth:
    """Ground truth as columns. Row ``j`` of every annotation array is ``annotations[j]``."""

    images: tuple[dict[str, Any], ...]  # the caller's image dicts, in file order
    categories: tuple[dict[str, Any], ...]  # {"id", "name"}, in file order
    image_ids: np.ndarray  # (I,) int64
    ann_ids: np.ndarray  # (G,) int64
    ann_image_ids: np.ndarray  # (G,) int64
    ann_category_ids: np.ndarray  # (G,) int64
    boxes: np.ndarray  # (G, 4) float64 xywh
    area: np.ndarray  # (G,) float64
    iscrowd: np.ndarray  # (G,) int64 (0/1)

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def category_names(self) -> dict[int, str]:
        return {int(c["id"]): str(c["name"]) for c in self.categories}

    def to_dict(self, ann_ids: np.ndarray | None = None) -> dict[str, Any]:
        """The normalised COCO dict (what pycocotools would be given), optionally with new ids."""
        ids = self.ann_ids if ann_ids is None else ann_ids
        anns = [
            {
                "id": int(ids[j]),
                "image_id": int(self.ann_image_ids[j]),
                "category_id": int(self.ann_category_ids[j]),
                "bbox": [float(v) for v in self.boxes[j]],
                "area": float(self.area[j]),
                "iscrowd": int(self.iscrowd[j]),
            }
            for j in range(len(ids))
        ]
        return {
            "images": [dict(im) for im in self.images],
            "categories": [dict(c) for c in self.categories],
            "annotations": anns,
        }


def _is_int(v: object) -> bool:
    if type(v) is int:  # the common case, without the abc machinery
        return True
    if isinstance(v, bool):
        return False
    if isinstance(v, Integral):
        return True
    return isinstance(v, Real) and math.isfinite(float(v)) and float(v).is_integer()


def _is_number(v: object) -> bool:
    if type(v) is float or type(v) is int:
        return True
    return isinstance(v, Real) and not isinstance(v, bool)


def _box_problem(box: object) -> str | None:
    if type(box) is not list and (
        not isinstance(box, Sequence | np.ndarray) or isinstance(box, str)
    ):
        return f"bbox must be 4 numbers [x, y, w, h], got {box!r}"
    if len(box) != 4:
        return f"bbox must be 4 numbers [x, y, w, h], got {box!r}"
    if not all(_is_number(v) for v in box):
        return f"bbox must be 4 numbers [x, y, w, h], got {box!r}"
    if not all(math.isfinite(float(v)) for v in box):
        return f"bbox {list(box)!r} is not finite (NaN or inf)"
    if float(box[2]) < 0 or float(box[3]) < 0:
        return f"bbox {list(box)!r} has negative width or height"
    return None


def load_ground_truth(gt: Mapping[str, Any]) -> GroundTruth:
    """Check a COCO GT dict and return it as columns.

    Missing ``area`` becomes ``w*h`` (pycocotools would raise ``KeyError`` in ``evaluate``);
    missing ``iscrowd`` becomes 0 (likewise). Annotation ids are required, as pycocotools
    indexes by them.
    """
    if not isinstance(gt, Mapping):
        raise EvaluationError(f"ground truth must be a COCO dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise EvaluationError(f"ground truth: '{key}' must be a list (COCO json layout)")
    images = tuple(gt["images"])
    image_ids: list[int] = []
    for i, im in enumerate(images):
        if not isinstance(im, Mapping) or not _is_int(im.get("id")):
            raise EvaluationError(f"gt['images'][{i}]: needs an integer 'id'")
        image_ids.append(int(im["id"]))
    if len(set(image_ids)) != len(image_ids):
        raise EvaluationError("ground truth: image ids are not unique")
    categories = []
    for i, c in enumerate(gt["categories"]):
        if not isinstance(c, Mapping) or not _is_int(c.get("id")):
            raise EvaluationError(f"gt['categories'][{i}]: needs an integer 'id'")
        categories.append({"id": int(c["id"]), "name": str(c.get("name", c["id"]))})
    cat_set = {c["id"] for c in categories}
    if len(cat_set) != len(categories):
        raise EvaluationError("ground truth: category ids are not unique")
    img_set = set(image_ids)

    anns = gt["annotations"]
    n = len(anns)
    ids = np.empty(n, np.int64)
    img = np.empty(n, np.int64)
    cat = np.empty(n, np.int64)
    boxes = np.empty((n, 4), np.float64)
    area = np.empty(n, np.float64)
    crowd = np.empty(n, np.int64)
    for j, a in enumerate(anns):
        where = f"gt['annotations'][{j}]"
        if not isinstance(a, Mapping):
            raise EvaluationError(f"{where}: must be a dict")
        for key in ("id", "image_id", "category_id"):
            if not _is_int(a.get(key)):
                raise EvaluationError(f"{where}: needs an integer '{key}', got {a.get(key)!r}")
        if int(a["image_id"]) not in img_set:
            raise EvaluationError(f"{where}: image_id {a['image_id']} is not in gt['images']")
        if int(a["category_id"]) not in cat_set:
            raise EvaluationError(
                f"{where}: category_id {a['category_id']} is not in gt['categories']"
            )
        problem = _box_problem(a.get("bbox"))
        if problem:
            raise EvaluationError(f"{where}: {problem}")
        ids[j], img[j], cat[j] = int(a["id"]), int(a["image_id"]), int(a["category_id"])
        boxes[j] = [float(v) for v in a["bbox"]]
        ar = a.get("area")
        if ar is None:
            area[j] = boxes[j, 2] * boxes[j, 3]
        elif _is_number(ar) and math.isfinite(float(ar)):
            area[j] = float(ar)
        else:
            raise EvaluationError(f"{where}: area must be a finite number, got {ar!r}")
        crowd[j] = 1 if a.get("iscrowd", 0) else 0
    if n:
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = int(uniq[counts > 1][0])
            at = np.flatnonzero(ids == dup)
            # pycocotools and hotcoco disagree here, and neither number means much.
            raise EvaluationError(
                f"gt['annotations'][{at[1]}]: id {dup} is also the id of "
                f"gt['annotations'][{at[0]}]; annotation ids must be unique"
            )
    return GroundTruth(
        images=images,
        categories=tuple(categories),
        image_ids=np.asarray(image_ids, np.int64),
        ann_ids=ids,
        ann_image_ids=img,
        ann_category_ids=cat,
        boxes=boxes,
        area=area,
        iscrowd=crowd,
    )


def _record_problem(i: int, p: object, img_set: set[int], cat_set: set[int]) -> str | None:
    if not isinstance(p, Mapping):
        return f"must be a dict, got {type(p).__name__}"
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in p:
            return f"missing '{key}'"
    if not _is_int(p["image_id"]):
        return f"image_id must be an integer, got {p['image_id']!r}"
    if int(p["image_id"]) not in img_set:
        return f"image_id {p['image_id']} is not in the ground truth"
    if not _is_int(p["category_id"]):
        return f"category_id must be an integer, got {p['category_id']!r}"
    if int(p["category_id"]) not in cat_set:
        return f"category_id {p['category_id']} is not in the ground truth categories"
    problem = _box_problem(p["bbox"])
    if problem:
        return problem
    s = p["score"]
    if not _is_number(s):
        return f"score must be a number, got {s!r}"
    if not math.isfinite(float(s)):
        return f"score {s!r} is not finite"
    return None


def _diagnose(preds: Sequence[object], gt: GroundTruth) -> None:
    img_set = set(gt.image_ids.tolist())
    cat_set = set(gt.category_ids)
    for i, p in enumerate(preds):
        problem = _record_problem(i, p, img_set, cat_set)
        if problem:
            raise EvaluationError(f"predictions[{i}]: {problem}")


def predictions_array(preds: Sequence[Mapping[str, Any]], gt: GroundTruth) -> np.ndarray:
    """Check a COCO results list against ``gt``; return it as an ``(N, 7)`` array.

    A vectorised pass handles the common all-good list in a few list comprehensions; any doubt
    sends it to a record-by-record pass that names the first bad record.
    """
    if not isinstance(preds, Sequence) or isinstance(preds, str | bytes | Mapping):
        raise EvaluationError(f"predictions must be a list of dicts, got {type(preds).__name__}")
    n = len(preds)
    if n == 0:
        return np.zeros((0, 7), np.float64)
    try:
        img = np.array([p["image_id"] for p in preds])
        cat = np.array([p["category_id"] for p in preds])
        score_list = [p["score"] for p in preds]
        score = np.array(score_list)
        if bool in set(map(type, score_list)):  # numpy would read True as 1.0
            raise TypeError("bool score")
        boxes = np.array([p["bbox"] for p in preds])
        ok = (
            img.shape == (n,)
            and cat.shape == (n,)
            and score.shape == (n,)
            and boxes.shape == (n, 4)
            and img.dtype.kind in "iuf"
            and cat.dtype.kind in "iuf"
            and score.dtype.kind in "iuf"
            and boxes.dtype.kind in "iuf"
        )
        if ok:
            img = img.astype(np.float64)
            cat = cat.astype(np.float64)
            score = score.astype(np.float64)
            boxes = boxes.astype(np.float64)
            ok = bool(
                np.isfinite(boxes).all()
                and np.isfinite(score).all()
                and (boxes[:, 2:] >= 0).all()
                and (img == np.round(img)).all()
                and (cat == np.round(cat)).all()
                and np.isin(img, gt.image_ids).all()
                and np.isin(cat, np.asarray(gt.category_ids)).all()
            )
    except (KeyError, TypeError, ValueError, IndexError):
        ok = False
    out = np.empty((n, 7), np.float64)
    if not ok:
        _diagnose(preds, gt)
        # Every record passed one by one (the fast pass can trip on mixed types): build slowly.
        for i, p in enumerate(preds):
            b = p["bbox"]
            out[i] = (p["image_id"], b[0], b[1], b[2], b[3], p["score"], p["category_id"])
        return out
    out[:, 0] = img
    out[:, 1:5] = boxes
    out[:, 5] = score
    out[:, 6] = cat
    return out
