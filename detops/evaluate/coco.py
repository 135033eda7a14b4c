"""COCO bbox evaluation, equal to pycocotools' ``COCOeval``, computed by hotcoco.

pycocotools is the reference; hotcoco (Rust) is the engine because it gives the same numbers
about 300 times faster. The one place the two differ — a ground-truth annotation with ``id`` 0 —
is detected and patched here so that the numbers stay pycocotools' (see :func:`evaluate_coco`).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import hotcoco
import numpy as np

from detops.evaluate._inputs import GroundTruth, load_ground_truth, predictions_array

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")

# pycocotools' Params, spelled the same way so the floats are bit-identical.
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_LBL = ("all", "small", "medium", "large")
AREA_RNG = ((0.0, 1e10), (0.0, 32.0**2), (32.0**2, 96.0**2), (96.0**2, 1e10))
MAX_DETS = (1, 10, 100)


@dataclass(frozen=True)
class CocoResult:
    """The outcome of :func:`evaluate_coco`.

    ``stats`` holds the twelve COCO numbers (``-1.0`` where pycocotools prints -1: no ground
    truth in that size bucket). ``precision`` is the accumulated ``(T=10, R=101, K, A=4, M=3)``
    array and ``recall`` the ``(T, K, A, M)`` array, both in pycocotools' layout, with ``K``
    following ``category_ids`` (sorted). ``notes`` lists anything about the input that changes
    how its numbers should be read (for example an annotation with id 0).
    """

    stats: dict[str, float]
    category_ids: tuple[int, ...]
    category_names: tuple[str, ...]
    precision: np.ndarray = field(repr=False)
    recall: np.ndarray = field(repr=False)
    notes: tuple[str, ...] = ()

    @property
    def recall_thresholds(self) -> np.ndarray:
        """The 101 recall points (0, 0.01, ..., 1) at which ``precision`` is sampled."""
        return REC_THRS.copy()

    @property
    def per_class(self) -> dict[str, dict[str, float]]:
        """``{name: {"AP": ..., "AP50": ...}}``; -1.0 for a class without ground truth."""
        out: dict[str, dict[str, float]] = {}
        for k, name in enumerate(self.category_names):
            p = self.precision[:, :, k, 0, -1]
            out[name] = {"AP": _mean_valid(p), "AP50": _mean_valid(p[0])}
        return out

    @property
    def pr_curves(self) -> dict[str, dict[str, np.ndarray]]:
        """Per class (with ground truth): precision at the 101 recall points.

        ``"iou50"`` is the curve at IoU 0.5, ``"mean"`` the curve averaged over the ten IoU
        thresholds (its mean is the class's AP). Area ``all``, 100 detections per image.
        """
        out: dict[str, dict[str, np.ndarray]] = {}
        for k, name in enumerate(self.category_names):
            p = self.precision[:, :, k, 0, -1]
            if (p > -1).any():
                out[name] = {"iou50": p[0].copy(), "mean": p.mean(axis=0)}
        return out

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the twelve numbers, per-class AP and the notes."""
        return {"stats": dict(self.stats), "per_class": self.per_class, "notes": list(self.notes)}


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return float(np.mean(v)) if v.size else -1.0


def summarize(precision: np.ndarray, recall: np.ndarray) -> dict[str, float]:
    """pycocotools' ``COCOeval.summarize`` on accumulated arrays, without the printing."""

    def one(ap: bool, iou: float | None = None, area: str = "all", max_det: int = 100) -> float:
        a = AREA_LBL.index(area)
        m = MAX_DETS.index(max_det)
        s = precision if ap else recall
        if iou is not None:
            s = s[np.where(iou == IOU_THRS)[0]]
        s = s[:, :, :, a, m] if ap else s[:, :, a, m]
        return _mean_valid(s)

    vals = [
        one(True),
        one(True, iou=0.5),
        one(True, iou=0.75),
        one(True, area="small"),
        one(True, area="medium"),
        one(True, area="large"),
        one(False, max_det=1),
        one(False, max_det=10),
        one(False),
        one(False, area="small"),
        one(False, area="medium"),
        one(False, area="large"),
    ]
    return dict(zip(STAT_KEYS, vals, strict=True))


def _accumulate_one(
    entries: list[list[dict[str, Any]]], det_area: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools' ``accumulate`` for one category, with its id-0 matching rule.

    ``entries[a]`` are hotcoco's per-image records for area range ``a``, in image-id order.
    pycocotools stores the matched GT's *id* as the match, so a match to annotation 0 reads as
    "unmatched": the detection is a false positive, or ignored if its own area is outside the
    range, and the GT stays unrecalled. hotcoco records such a match as ``dtMatches == 0``.
    """
    T, R, A, M = len(IOU_THRS), len(REC_THRS), len(AREA_RNG), len(MAX_DETS)
    precision = -np.ones((T, R, A, M))
    recall = -np.ones((T, A, M))
    for a, es in enumerate(entries):
        lo, hi = AREA_RNG[a]
        if not es:
            continue
        prepared = []
        for e in es:
            dtm = np.asarray(e["dtMatches"], np.float64).reshape(T, -1)
            dt_ig = np.asarray(e["dtIgnore"], bool).reshape(T, -1)
            ids = np.asarray(e["dtIds"], np.int64)
            if ids.size:
                ar = det_area[ids - 1]
                out = (ar < lo) | (ar > hi)
                dt_ig = dt_ig | ((dtm == 0) & out[None, :])
            prepared.append(
                (np.asarray(e["dtScores"], np.float64), dtm, dt_ig, np.asarray(e["gtIgnore"], bool))
            )
        gt_ig = np.concatenate([p[3] for p in prepared])
        npig = np.count_nonzero(gt_ig == 0)
        if npig == 0:
            continue
        for m, max_det in enumerate(MAX_DETS):
            scores = np.concatenate([p[0][:max_det] for p in prepared])
            inds = np.argsort(-scores, kind="mergesort")
            dtm = np.concatenate([p[1][:, :max_det] for p in prepared], axis=1)[:, inds]
            dt_ig = np.concatenate([p[2][:, :max_det] for p in prepared], axis=1)[:, inds]
            tps = np.logical_and(dtm, np.logical_not(dt_ig))
            fps = np.logical_and(np.logical_not(dtm), np.logical_not(dt_ig))
            tp_sum = np.cumsum(tps, axis=1).astype(dtype=float)
            fp_sum = np.cumsum(fps, axis=1).astype(dtype=float)
            for t, (tp, fp) in enumerate(zip(tp_sum, fp_sum, strict=True)):
                nd = len(tp)
                rc = tp / npig
                pr = (tp / (fp + tp + np.spacing(1))).tolist()
                q = [0.0] * R
                recall[t, a, m] = rc[-1] if nd else 0
                for i in range(nd - 1, 0, -1):
                    if pr[i] > pr[i - 1]:
                        pr[i - 1] = pr[i]
                for ri, pi in enumerate(np.searchsorted(rc, REC_THRS, side="left")):
                    if pi >= nd:
                        break
                    q[ri] = pr[pi]
                precision[t, :, a, m] = np.array(q)
    return precision, recall


@dataclass(frozen=True)
class _Engine:
    """One hotcoco evaluation plus what is needed to patch it."""

    coco_gt: Any
    coco_dt: Any
    precision: np.ndarray
    recall: np.ndarray
    stats: dict[str, float]


def build_gt(gt: GroundTruth, ann_ids: np.ndarray | None = None) -> Any:
    """A hotcoco ``COCO`` from normalised ground truth (bbox fields only)."""
    return hotcoco.COCO.from_arrays(
        [dict(im) for im in gt.images],
        [dict(c) for c in gt.categories],
        gt.ann_image_ids,
        gt.ann_category_ids,
        gt.boxes,
        ids=gt.ann_ids if ann_ids is None else ann_ids,
        area=gt.area,
        iscrowd=gt.iscrowd,
    )


def run_engine(coco_gt: Any, dets: np.ndarray) -> _Engine:
    """evaluate + accumulate + summarize in hotcoco; nothing printed."""
    coco_dt = coco_gt.load_res(dets)
    ev = hotcoco.COCOeval(coco_gt, coco_dt, "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
        ev.summary_lines()
    acc = ev.eval
    assert acc is not None  # set by accumulate()
    stats = dict(zip(STAT_KEYS, (float(v) for v in ev.stats), strict=True))
    return _Engine(coco_gt, coco_dt, np.array(acc["precision"]), np.array(acc["recall"]), stats)


def _patch_id_zero(eng: _Engine, gt: GroundTruth, dets: np.ndarray) -> _Engine:
    """Re-accumulate the categories holding a GT with id 0 the pycocotools way."""
    cat_ids = sorted(gt.category_ids)
    bad = sorted({int(c) for c in gt.ann_category_ids[gt.ann_ids == 0]})
    ev = hotcoco.COCOeval(eng.coco_gt, eng.coco_dt, "bbox")
    ev.params.catIds = bad
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
    rank = {int(i): r for r, i in enumerate(sorted(gt.image_ids.tolist()))}
    by_key: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for e in ev.eval_imgs:
        if e is None or e["maxDet"] != MAX_DETS[-1]:
            continue
        a = AREA_RNG.index(tuple(float(v) for v in e["aRng"]))
        by_key.setdefault((int(e["category_id"]), a), []).append(e)
    det_area = dets[:, 3] * dets[:, 4]
    precision = eng.precision.copy()
    recall = eng.recall.copy()
    for c in bad:
        entries = [
            sorted(by_key.get((c, a), []), key=lambda e: rank[int(e["image_id"])])
            for a in range(len(AREA_RNG))
        ]
        k = cat_ids.index(c)
        precision[:, :, k, :, :], recall[:, k, :, :] = _accumulate_one(entries, det_area)
    return _Engine(eng.coco_gt, eng.coco_dt, precision, recall, summarize(precision, recall))


def evaluate_arrays(gt: GroundTruth, dets: np.ndarray) -> tuple[_Engine, tuple[str, ...]]:
    """Evaluate normalised inputs; the building block of every public function here."""
    eng = run_engine(build_gt(gt), dets)
    notes: list[str] = []
    zero = (gt.ann_ids == 0) & (gt.iscrowd == 0)
    if zero.any():
        eng = _patch_id_zero(eng, gt, dets)
        notes.append(
            f"{int(zero.sum())} ground-truth annotation(s) have id 0; pycocotools never "
            "counts them as found (a detection on them is a false positive), and these numbers "
            "follow pycocotools. Number annotations from 1 to have them counted."
        )
    return eng, tuple(notes)


def result_from(gt: GroundTruth, eng: _Engine, notes: tuple[str, ...]) -> CocoResult:
    names = gt.category_names
    ids = tuple(sorted(gt.category_ids))
    return CocoResult(
        stats=dict(eng.stats),
        category_ids=ids,
        category_names=tuple(names[i] for i in ids),
        precision=eng.precision,
        recall=eng.recall,
        notes=notes,
    )


def evaluate_coco(
    gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], *, iou_type: str = "bbox"
) -> CocoResult:
    """COCO bbox evaluation; the twelve numbers equal pycocotools' ``COCOeval.stats``.

    ``gt`` is a COCO ground-truth dict (``images``, ``annotations``, ``categories``);
    ``predictions`` a COCO results list of ``{image_id, category_id, bbox: [x, y, w, h],
    score}``. Computed by hotcoco, checked against pycocotools in the test-suite on generated
    inputs (crowd boxes, empty images, classes without ground truth, score ties, more than 100
    detections per image). Where the input is one pycocotools cannot take, the choice made is:

    * **Annotation id 0.** pycocotools stores a match as the GT's id, so a GT with id 0 is never
      found: the detection matched to it counts as a false positive and the GT as missed. hotcoco
      counts it as found. detops reports **pycocotools' number**: the categories holding such a
      GT are re-accumulated from hotcoco's per-image matches with pycocotools' rule, and
      ``CocoResult.notes`` says so. Renumber annotations from 1 for the number you meant.
    * **Empty prediction list.** pycocotools' ``loadRes([])`` raises ``IndexError``; detops
      returns what ``COCOeval`` gives for a detection set with no annotations: 0.0 for every
      AP/AR whose size bucket has ground truth, -1.0 where it has none.
    * **GT without ``area`` / ``iscrowd``.** pycocotools raises ``KeyError``; detops uses the box
      area ``w*h`` (as ``loadRes`` does for results) and ``iscrowd = 0``. A real COCO ``area``
      is the mask area, so give it when you have it: the size buckets read it.
    * Result ``id`` and ``area`` fields are replaced, as ``loadRes`` does (ids ``1..N`` in list
      order, area ``w*h``).

    Bad predictions (unknown image or category, NaN/inf, negative size, a bbox that is not four
    numbers, no score) raise :class:`detops.errors.EvaluationError` naming the record.

    >>> gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "cat"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
    ...                        "bbox": [10, 10, 40, 40], "iscrowd": 0}]}
    >>> r = evaluate_coco(gt, [{"image_id": 1, "category_id": 1,
    ...                          "bbox": [10, 10, 40, 40], "score": 0.9}])
    >>> round(r.stats["AP"], 6), r.stats["APs"]  # pycocotools' precision is tp/(tp+fp+eps)
    (1.0, -1.0)
    """
    if iou_type != "bbox":
        raise NotImplementedError(f"iou_type {iou_type!r}: only 'bbox' is supported")
    g = load_ground_truth(gt)
    dets = predictions_array(predictions, g)
    eng, notes = evaluate_arrays(g, dets)
    return result_from(g, eng, notes)


def _slice_value(image: Mapping[str, Any], key: str) -> object:
    tags = image.get("tags")
    if isinstance(tags, Mapping) and key in tags:
        return tags[key]
    return image.get(key)


UNTAGGED = "(untagged)"


def evaluate_slices(
    gt: Mapping[str, Any], predictions: Sequence[Mapping[str, Any]], slice_by: str
) -> dict[str, CocoResult]:
    """:func:`evaluate_coco` per group of images sharing a tag.

    An image's group is ``image["tags"][slice_by]`` if present, else ``image[slice_by]``; the
    value is turned into a string key. Images with neither go under ``"(untagged)"``. Each group
    is evaluated as its own dataset (its images, their GT and predictions; all categories), so
    its numbers are what pycocotools gives on that subset. Object-size slices are the
    ``APs``/``APm``/``APl`` numbers of every result.

    >>> gt = {"images": [{"id": 1, "tags": {"time": "day"}}, {"id": 2, "time": "night"}],
    ...       "categories": [{"id": 1, "name": "cat"}], "annotations": []}
    >>> sorted(evaluate_slices(gt, [], "time"))
    ['day', 'night']
    """
    g = load_ground_truth(gt)
    dets = predictions_array(predictions, g)
    groups: dict[str, list[int]] = {}
    for im in g.images:
        v = _slice_value(im, slice_by)
        groups.setdefault(UNTAGGED if v is None else str(v), []).append(int(im["id"]))
    out: dict[str, CocoResult] = {}
    for name, ids in sorted(groups.items()):
        sub = subset(g, np.asarray(ids, np.int64))
        keep = np.isin(dets[:, 0], sub.image_ids)
        eng, notes = evaluate_arrays(sub, dets[keep])
        out[name] = result_from(sub, eng, notes)
    return out


def subset(g: GroundTruth, image_ids: np.ndarray) -> GroundTruth:
    """The ground truth restricted to ``image_ids`` (categories kept)."""
    keep_img = np.isin(g.image_ids, image_ids)
    keep = np.isin(g.ann_image_ids, image_ids)
    return GroundTruth(
        images=tuple(im for im, k in zip(g.images, keep_img, strict=True) if k),
        categories=g.categories,
        image_ids=g.image_ids[keep_img],
        ann_ids=g.ann_ids[keep],
        ann_image_ids=g.ann_image_ids[keep],
        ann_category_ids=g.ann_category_ids[keep],
        boxes=g.boxes[keep],
        area=g.area[keep],
        iscrowd=g.iscrowd[keep],
    )
