"""Human-level performance (HLP): how well people agree, in the metrics a model is given.

Each annotator is scored against the **consensus of the others** (:mod:`detops.data.consensus`:
majority vote, fused boxes, at least half of the other annotators who labelled the image)
with the model's metrics and engine (:mod:`detops.evaluate`):

* COCO mAP@0.5 and mAP@[.5:.95] (pycocotools-exact). A person gives no confidence, so every
  annotator box has score 1.0; COCO ranks tied detections in input order (images in dataset
  order), so the precision-recall "curve" is the one operating point walked image by image and
  AP comes out close to precision x recall;
* precision, recall and F1 at IoU 0.5 (COCO's greedy matching, same class);
* 95% bootstrap intervals resampling images: :func:`detops.evaluate.bootstrap_ci` for AP and
  AP50, and the same resamples (same seed, same draws) for precision / recall / F1.

The images scored for an annotator are those it labelled and at least one other annotator
labelled. HLP is the mean over annotators; its interval is the percentile interval of the mean
over the same resamples (given when every annotator was scored on the same images). Results
are given for all images and for each split, so a model evaluated on ``val`` can stand beside
HLP on the same images.

:func:`save_baseline` stores the result as the dataset version's baseline (table
``baselines``, one row per computation, the newest wins); :func:`get_baseline` finds it, also
for a consensus version built from that dataset.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from detops.data._agreement import Labels, labels_from_dataset, match_all
from detops.data.consensus import fuse
from detops.data.dataset import Dataset

__all__ = [
    "beside_lines",
    "beside_rows",
    "get_baseline",
    "hlp_beside",
    "human_level",
    "save_baseline",
    "summary_lines",
]

KIND = "hlp"
METRICS = ("AP50", "AP", "precision", "recall", "f1")


def human_level(ds: Dataset, *, annotators: Sequence[str] | None = None, iou: float = 0.5,
                bootstrap: int = 200, seed: int = 0, all_labelled: bool = False,
                splits: Sequence[str] | None = None) -> dict[str, Any]:
    """HLP of ``ds`` (see the module docstring). ``bootstrap=0`` skips the intervals.

    ``splits`` names the image groups to score: ``"all"`` and split names (default: all of
    them; each costs about its share of the images). Returns ``{"annotators", "definition",
    "splits": {"all": {...}, "val": {...}, ...}, "notes", "seconds"}``; each split holds
    ``hlp`` (means over annotators) and ``per_annotator``.
    """
    from detops.errors import ConsistencyError

    if not 0 < iou <= 1:
        raise ConsistencyError(f"iou={iou}: must be in (0, 1]")
    if bootstrap < 0:
        raise ConsistencyError(f"bootstrap={bootstrap}: the number of resamples, 0 for none")
    t0 = time.perf_counter()
    L, notes = labels_from_dataset(ds, annotators, all_labelled=all_labelled)
    matches = match_all(L, iou)
    names = ds.category_names
    split_of = np.array([img.split or "" for img in ds.images], object)
    known = ["all", *sorted({x for x in split_of.tolist() if x})]
    wanted = known if splits is None else list(splits)
    bad = [s for s in wanted if s not in known]
    if bad:
        raise ConsistencyError(f"split {', '.join(map(repr, bad))} is not in the dataset "
                               f"(choose from {', '.join(known)})")
    groups = {s: (np.ones(len(ds.images), bool) if s == "all" else split_of == s)
              for s in wanted}
    per: dict[str, dict[str, Any]] = {g: {} for g in groups}
    samples: dict[str, dict[str, dict[str, np.ndarray]]] = {g: {} for g in groups}
    image_sets: dict[str, list[tuple[int, ...]]] = {g: [] for g in groups}
    M = len(L.names)
    for j, X in enumerate(L.names):
        others = [k for k in range(M) if k != j]
        f = fuse(L, matches, others, len(names))
        scored = L.labelled[:, j] & L.labelled[:, others].any(1)
        for g, mask in groups.items():
            rows = np.flatnonzero(scored & mask)
            if not len(rows):
                continue
            res, smp = _score(L, f, j, rows, names, bootstrap, seed)
            if res["reference_boxes"] == 0:
                notes.append(f"{g} images: the other annotators drew no box where {X} is scored, "
                             f"so {X}'s mAP is undefined (COCO's -1) and left out of the HLP mean")
            per[g][X] = res
            samples[g][X] = smp
            image_sets[g].append(tuple(rows.tolist()))
    out_splits = {}
    for g in groups:
        if not per[g]:
            continue
        same = len(set(image_sets[g])) == 1
        out_splits[g] = {"images": len(image_sets[g][0]) if same else None,
                         "hlp": _mean(per[g], samples[g], same, bootstrap),
                         "per_annotator": per[g]}
    return {
        "annotators": list(L.names),
        "definition": ("each annotator against the consensus of the others (majority vote, "
                       "median-fused boxes, at least half of the others who labelled the "
                       f"image; matched at IoU {iou}); annotator boxes score 1.0; COCO "
                       "mAP (pycocotools-exact) and precision / recall / F1 at IoU 0.5; 95% "
                       f"bootstrap intervals over images ({bootstrap} resamples, seed {seed})"),
        "iou": iou,
        "bootstrap": bootstrap,
        "seed": seed,
        "splits": out_splits,
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _score(L: Labels, f: Any, j: int, rows: np.ndarray, names: list[str], bootstrap: int,
           seed: int) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Annotator ``j``'s boxes on image rows ``rows`` against the fused boxes ``f``."""
    from detops.evaluate import bootstrap_ci, evaluate_coco
    from detops.evaluate.matching import _rates

    pos = np.full(L.n_images, -1, np.int64)
    pos[rows] = np.arange(len(rows))
    gt_keep = np.flatnonzero(pos[f.image] >= 0)
    gt: dict[str, list[dict[str, Any]]] = {
        "images": [{"id": int(i) + 1} for i in range(len(rows))],
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)],
        "annotations": [
            {"id": n + 1, "image_id": int(pos[f.image[c]]) + 1,
             "category_id": int(f.category[c]) + 1,
             "bbox": [float(f.box[c, 0]), float(f.box[c, 1]), float(f.box[c, 2] - f.box[c, 0]),
                      float(f.box[c, 3] - f.box[c, 1])], "iscrowd": 0}
            for n, c in enumerate(gt_keep.tolist())],
    }
    block = L.rows_of(j)
    mine = np.arange(block.start, block.stop)
    mine = mine[pos[L.image[mine]] >= 0]
    preds = [{"image_id": int(pos[L.image[r]]) + 1, "category_id": int(L.category[r]) + 1,
              "bbox": [float(L.box[r, 0]), float(L.box[r, 1]), float(L.box[r, 2] - L.box[r, 0]),
                       float(L.box[r, 3] - L.box[r, 1])], "score": 1.0}
             for r in mine.tolist()]
    coco = evaluate_coco(gt, preds)
    counts = _image_counts(gt, preds, len(rows))
    tp, fp, fn = (int(x) for x in counts.sum(0))
    p, r, f1 = _rates(tp, fp, fn)
    res: dict[str, Any] = {
        "coco": coco.stats,
        "per_class": coco.per_class,
        "at_threshold": {"iou": 0.5, "precision": p, "recall": r, "f1": f1,
                         "tp": tp, "fp": fp, "fn": fn},
        "images": len(rows),
        "boxes": len(preds),
        "reference_boxes": len(gt["annotations"]),
        "ci": None,
    }
    smp: dict[str, np.ndarray] = {}
    if bootstrap:
        ci = bootstrap_ci(gt, preds, n=bootstrap, seed=seed)
        smp = {m: ci.samples[m] for m in ("AP", "AP50")}
        smp.update(_resampled_prf(counts, bootstrap, seed))
        res["ci"] = {m: _interval(v) for m, v in smp.items()}
    return res, smp


def _image_counts(gt: dict[str, Any], preds: list[dict[str, Any]], n_img: int) -> np.ndarray:
    """``(n_img, 3)`` true positives, false positives and missed GT per image (images
    ``1..n_img``), by :func:`detops.evaluate.precision_recall_f1`'s matching at IoU 0.5 (every
    score is 1.0, so no score threshold applies)."""
    from detops.evaluate._inputs import load_ground_truth, predictions_array
    from detops.evaluate.matching import FP, TP, match_dataset

    g = load_ground_truth(gt)
    dets = predictions_array(preds, g)
    m = match_dataset(g, dets, 0.5)
    img_det = dets[:, 0].astype(np.int64) - 1
    img_gt = g.ann_image_ids.astype(np.int64) - 1
    return np.stack([
        np.bincount(img_det[m.status == TP], minlength=n_img),
        np.bincount(img_det[m.status == FP], minlength=n_img),
        np.bincount(img_gt[~m.gt_found & (g.iscrowd == 0)], minlength=n_img),
    ], 1)


def _resampled_prf(counts: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """Precision / recall / F1 over the bootstrap resamples of images that
    :func:`detops.evaluate.bootstrap_ci` draws with the same seed (the same replicates);
    ``counts`` as :func:`_image_counts`."""
    from detops.evaluate.bootstrap import resample_images

    n_img = len(counts)
    weights = np.stack([np.bincount(pick, minlength=n_img)
                        for pick in resample_images(n_img, n, seed)])
    tp, fp, fn = (weights @ counts.astype(np.float64)).T
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        r = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return {"precision": p, "recall": r, "f1": f1}


def _interval(v: np.ndarray, alpha: float = 0.05) -> dict[str, float]:
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"low": float(lo), "high": float(hi)}


def _value(res: dict[str, Any], m: str) -> float:
    return float(res["coco"][m] if m in ("AP", "AP50") else res["at_threshold"][m])


def _mean(per: dict[str, dict[str, Any]], samples: dict[str, dict[str, np.ndarray]],
          same_images: bool, bootstrap: int) -> dict[str, Any]:
    """The mean over annotators of each metric, and the percentile interval of that mean over
    the shared resamples. COCO gives -1 (undefined) where the reference holds no box: such a
    value is left out of the mean (``None`` when no annotator has one), never averaged in."""
    out: dict[str, Any] = {}
    for m in METRICS:
        vals = np.array([_value(r, m) for r in per.values()])
        out[m] = float(vals[vals >= 0].mean()) if (vals >= 0).any() else None
    out["ci"] = None
    if bootstrap and same_images:
        out["ci"] = {}
        for m in METRICS:
            s = np.stack([x[m] for x in samples.values()])  # (annotators, resamples)
            n = (s >= 0).sum(0)
            keep = n > 0
            if out[m] is not None and keep.any():
                means = np.where(s >= 0, s, 0.0).sum(0)[keep] / n[keep]
                out["ci"][m] = _interval(means)
    return out


# -- the store -----------------------------------------------------------------------------------
def save_baseline(ws: Any, dataset: Any, result: dict[str, Any],
                  params: dict[str, Any] | None = None) -> int:
    """Record ``result`` as the baseline of dataset version ``dataset`` (a DatasetVersion)."""
    from sqlalchemy import insert

    from detops.store.db import utcnow
    from detops.store.schema import baselines

    with ws.db.write() as conn:
        r = conn.execute(insert(baselines).values(
            dataset=dataset.ref, dataset_digest=dataset.digest, kind=KIND,
            params=params or {}, result=result, created_at=utcnow()))
        return int(r.inserted_primary_key[0])


def get_baseline(ws: Any, ref: str) -> dict[str, Any] | None:
    """The newest HLP baseline of dataset version ``ref``, or of the dataset a consensus
    version was built from; ``None`` when there is none. Adds ``dataset`` and ``created_at``."""
    from sqlalchemy import select

    from detops.data.versions import get_version
    from detops.errors import DatasetNotFound
    from detops.store.schema import baselines

    try:
        dv = get_version(ws, ref)
    except DatasetNotFound:
        return None
    candidates = [dv]
    if dv.source_format == "consensus" and (dv.source or "").startswith("consensus:"):
        try:
            candidates.append(get_version(ws, (dv.source or "").split(":", 1)[1]))
        except DatasetNotFound:
            pass
    with ws.db.read() as conn:
        for v in candidates:
            row = conn.execute(
                select(baselines).where(baselines.c.dataset == v.ref, baselines.c.kind == KIND,
                                        baselines.c.dataset_digest == v.digest)
                .order_by(baselines.c.id.desc()).limit(1)).first()
            if row is not None:
                return {**row.result, "dataset": v.ref, "created_at": str(row.created_at),
                        "params": row.params}
    return None


def hlp_beside(ws: Any, ref: str | None, split: str | None) -> dict[str, Any] | None:
    """HLP of dataset ``ref`` on ``split`` (``"all"`` or a split name), for showing beside a
    model's numbers on the same images; ``None`` when no baseline covers them."""
    if not ref:
        return None
    base = get_baseline(ws, ref)
    if base is None:
        return None
    part = base["splits"].get(split or "all")
    if part is None:
        return None
    return {"dataset": base["dataset"], "split": split or "all", "images": part["images"],
            "annotators": base["annotators"], "definition": base["definition"], **part["hlp"]}


BESIDE = (("mAP@0.5", "AP50"), ("mAP@[.5:.95]", "AP"), ("precision", "precision"),
          ("recall", "recall"), ("F1", "f1"))


def beside_rows(evaluation: dict[str, Any], hlp: dict[str, Any]) -> list[list[str]]:
    """``[metric, model, HLP, HLP 95% CI, model - HLP]`` rows for a model evaluation (the dict
    ``detops eval`` and the registry hold) beside an :func:`hlp_beside` result.

    >>> ev = {"coco": {"AP50": 0.8, "AP": 0.5},
    ...       "at_threshold": {"precision": 0.9, "recall": 0.7, "f1": 0.79}}
    >>> h = {"AP50": 0.92, "AP": 0.66, "precision": 0.97, "recall": 0.94, "f1": 0.95, "ci": None}
    >>> beside_rows(ev, h)[0]
    ['mAP@0.5', '0.800', '0.920', '-', '-0.120']
    """
    coco, thr = evaluation.get("coco") or {}, evaluation.get("at_threshold") or {}
    ci = hlp.get("ci") or {}
    rows = []
    for label, key in BESIDE:
        model = coco.get(key) if key in ("AP50", "AP") else thr.get(key)
        h = hlp.get(key)
        c = ci.get(key)
        rows.append([label, "-" if model is None else f"{model:.3f}",
                     "-" if h is None else f"{h:.3f}",
                     f"[{c['low']:.3f}, {c['high']:.3f}]" if c else "-",
                     "-" if model is None or h is None else f"{model - h:+.3f}"])
    return rows


def beside_note(evaluation: dict[str, Any], hlp: dict[str, Any]) -> str:
    who = evaluation.get("annotator")
    return (f"HLP: each of {', '.join(hlp['annotators'])} against the consensus of the others "
            f"on the same {hlp['split']} images of {hlp['dataset']}"
            + (f" ({hlp['images']} images)" if hlp.get("images") else "")
            + f"; the model against annotator {who or '-'}'s boxes. Model P/R/F1 at its "
            "deployed threshold; annotators' boxes score 1.0.")


def beside_lines(evaluation: dict[str, Any], hlp: dict[str, Any]) -> list[str]:
    """The model beside HLP as a small terminal table."""
    lines = [f"{'':<14}{'model':>8}{'HLP':>8}  {'HLP 95% CI':<18}{'gap':>7}"]
    for label, model, h, ci, gap in beside_rows(evaluation, hlp):
        lines.append(f"{label:<14}{model:>8}{h:>8}  {ci:<18}{gap:>7}")
    lines.append(beside_note(evaluation, hlp))
    return lines


def summary_lines(result: dict[str, Any], split: str = "all") -> list[str]:
    """HLP in a few lines for a terminal.

    >>> r = {"annotators": ["A", "B"], "splits": {"all": {"images": 3, "hlp": {
    ...     "AP50": 0.9, "AP": 0.7, "precision": 0.95, "recall": 0.9, "f1": 0.92, "ci": None},
    ...     "per_annotator": {}}}}
    >>> summary_lines(r)[0].split("  ")  # doctest: +NORMALIZE_WHITESPACE
    ['HLP on all images (3 images, annotators A, B): mAP@0.5 0.900',
     'mAP@[.5:.95] 0.700', 'P 0.950', 'R 0.900', 'F1 0.920']
    """
    part = result["splits"].get(split)
    if part is None:
        return [f"HLP: no images in split {split!r}"]
    h = part["hlp"]
    ci = h.get("ci") or {}

    def v(m: str) -> str:
        r = ci.get(m)
        if h[m] is None:
            return "n/a"
        return f"{h[m]:.3f}" + (f" [{r['low']:.3f}, {r['high']:.3f}]" if r else "")

    def ap(x: float) -> str:
        return "n/a" if x < 0 else f"{x:.3f}"  # COCO's -1: no reference box

    n = part["images"]
    lines = [f"HLP on {split} images ({'' if n is None else f'{n} images, '}annotators "
             f"{', '.join(result['annotators'])}): mAP@0.5 {v('AP50')}  mAP@[.5:.95] {v('AP')}"
             f"  P {v('precision')}  R {v('recall')}  F1 {v('f1')}"]
    for X, r in part["per_annotator"].items():
        t = r["at_threshold"]
        lines.append(f"  {X} vs the others: mAP@0.5 {ap(r['coco']['AP50'])}  mAP@[.5:.95] "
                     f"{ap(r['coco']['AP'])}  P {t['precision']:.3f}  R {t['recall']:.3f}  "
                     f"F1 {t['f1']:.3f}")
    return lines
