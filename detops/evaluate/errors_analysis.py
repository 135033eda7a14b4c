"""TIDE-style error breakdown: what kind of mistake each false positive is, and what it costs.

After Bolya et al., "TIDE: A General Toolbox for Identifying Object Detection Errors" (2020).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detops.evaluate._inputs import GroundTruth, load_ground_truth, predictions_array
from detops.evaluate.coco import build_gt, run_engine, subset
from detops.evaluate.matching import FP, iou_matrix, match_dataset

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")


@dataclass(frozen=True)
class ErrorAnalysis:
    """The outcome of :func:`error_analysis`.

    ``counts[type]`` — how many errors of each type; ``delta_ap50[type]`` — AP50 (COCO, area
    all, 100 per image) gained when every error of that type, alone, is fixed by the oracle;
    ``ap50`` — the baseline. ``detection_errors`` maps a prediction's index in the input list to
    its error type; ``missed`` lists the annotation ids of the ``Miss`` GT.
    """

    ap50: float
    counts: dict[str, int]
    delta_ap50: dict[str, float | None]
    detection_errors: dict[int, str]
    missed: tuple[int, ...]
    score_threshold: float


def error_analysis(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    score_threshold: float = 0.0,
    *,
    pos_thr: float = 0.5,
    bg_thr: float = 0.1,
) -> ErrorAnalysis:
    """Classify every false positive and missed box, TIDE-style, and price each type in AP50.

    Only predictions scoring ``>= score_threshold`` take part (the baseline AP50 too). They are
    matched per image and class with COCO's greedy rule at IoU ``pos_thr`` (0.5); predictions
    taken by a crowd region are ignored, and crowd GT take no part below. Each false positive,
    with ``same`` = its highest IoU with a GT of its own class and ``other`` = the highest with a
    GT of another class, is — checked in this order, as TIDE does —

    * ``Loc``  localisation: ``bg_thr <= same < pos_thr`` (right class, box off);
    * ``Cls``  classification: ``other >= pos_thr`` (good box, wrong class);
    * ``Dupe`` duplicate: ``same >= pos_thr`` — the GT was already taken by a higher score;
    * ``Bkg``  background: every IoU ``< bg_thr``;
    * ``Both`` class and box wrong: what is left, ``bg_thr <= other < pos_thr``.

    ``Miss``: a non-crowd GT that no prediction found and that is not the target of a ``Loc`` or
    ``Cls`` error (fixing those would find it).

    ``delta_ap50[type]`` (``None`` where fixing leaves no ground truth, so AP50 is undefined)
    is the AP50 after fixing only that type, minus the baseline, both
    computed by the COCO engine with annotation ids renumbered from 1 (so pycocotools' id-0
    quirk plays no part). The oracle: ``Cls`` relabels the prediction to its GT's class and
    ``Loc`` moves its box onto its GT — unless that GT is already found (or claimed by an earlier
    fix), in which case the prediction is removed; ``Dupe``, ``Bkg`` and ``Both`` remove the
    prediction; ``Miss`` removes the missed GT from the ground truth.

    >>> gt = {"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    ...       "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}]}
    >>> preds = [{"image_id": 1, "category_id": 2, "bbox": [0, 0, 10, 10], "score": 0.9}]
    >>> error_analysis(gt, preds).detection_errors
    {0: 'Cls'}
    """
    g = load_ground_truth(gt)
    dets_all = predictions_array(predictions, g)
    kept = np.flatnonzero(dets_all[:, 5] >= score_threshold)
    dets = dets_all[kept]
    m = match_dataset(g, dets, pos_thr)

    real = np.flatnonzero(g.iscrowd == 0)
    gt_rows_by_img: dict[int, np.ndarray] = {}
    for img in np.unique(g.ann_image_ids[real]):
        gt_rows_by_img[int(img)] = real[g.ann_image_ids[real] == img]

    kind: dict[int, str] = {}  # row in dets -> type
    target: dict[int, int] = {}  # row in dets -> GT row (Loc / Cls / Dupe)
    for i in np.flatnonzero(m.status == FP).tolist():
        rows = gt_rows_by_img.get(int(dets[i, 0]), np.zeros(0, np.int64))
        ious = iou_matrix(dets[i : i + 1, 1:5], g.boxes[rows])[0]
        same_c = g.ann_category_ids[rows] == dets[i, 6]
        same = float(ious[same_c].max()) if same_c.any() else 0.0
        other = float(ious[~same_c].max()) if (~same_c).any() else 0.0
        if bg_thr <= same < pos_thr:
            kind[i] = "Loc"
            target[i] = int(rows[same_c][np.argmax(ious[same_c])])
        elif other >= pos_thr:
            kind[i] = "Cls"
            target[i] = int(rows[~same_c][np.argmax(ious[~same_c])])
        elif same >= pos_thr:
            kind[i] = "Dupe"
        elif max(same, other) < bg_thr:
            kind[i] = "Bkg"
        else:
            kind[i] = "Both"

    explained = {target[i] for i in target if kind[i] in ("Loc", "Cls")}
    missed_rows = [int(j) for j in real if not m.gt_found[j] and int(j) not in explained]

    renumbered = np.arange(1, len(g.ann_ids) + 1, dtype=np.int64)
    base = _ap50(g, dets, renumbered)
    delta: dict[str, float | None] = {}
    for t in ERROR_TYPES:
        if t == "Miss":
            keep = np.ones(len(g.ann_ids), bool)
            keep[missed_rows] = False
            fixed_g = _drop_annotations(g, keep)
            after = _ap50(fixed_g, dets, renumbered[keep])
            # Every GT missed: nothing is left to find, so the gain is undefined.
            delta[t] = None if after < 0 else after - base
            continue
        fixed = dets.copy()
        drop = np.zeros(len(dets), bool)
        claimed = set(np.flatnonzero(m.gt_found).tolist())
        for i in sorted((i for i in kind if kind[i] == t), key=lambda i: -dets[i, 5]):
            j = target.get(i)
            if t in ("Cls", "Loc") and j is not None and j not in claimed:
                claimed.add(j)
                if t == "Cls":
                    fixed[i, 6] = g.ann_category_ids[j]
                else:
                    fixed[i, 1:5] = g.boxes[j]
            else:
                drop[i] = True
        delta[t] = _ap50(g, fixed[~drop], renumbered) - base

    counts = {t: 0 for t in ERROR_TYPES}
    for t in kind.values():
        counts[t] += 1
    counts["Miss"] = len(missed_rows)
    return ErrorAnalysis(
        ap50=base,
        counts=counts,
        delta_ap50=delta,
        detection_errors={int(kept[i]): kind[i] for i in sorted(kind)},
        missed=tuple(int(g.ann_ids[j]) for j in missed_rows),
        score_threshold=score_threshold,
    )


def _drop_annotations(g: GroundTruth, keep: np.ndarray) -> GroundTruth:
    sub = subset(g, g.image_ids)
    return GroundTruth(
        images=sub.images,
        categories=sub.categories,
        image_ids=sub.image_ids,
        ann_ids=g.ann_ids[keep],
        ann_image_ids=g.ann_image_ids[keep],
        ann_category_ids=g.ann_category_ids[keep],
        boxes=g.boxes[keep],
        area=g.area[keep],
        iscrowd=g.iscrowd[keep],
    )


def _ap50(g: GroundTruth, dets: np.ndarray, ann_ids: np.ndarray) -> float:
    return run_engine(build_gt(g, ann_ids), dets).stats["AP50"]
