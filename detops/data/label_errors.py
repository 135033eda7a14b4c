"""Label-error candidates: where a model that never trained on an image disagrees with its labels.

:func:`find_label_errors` runs a registered model (through the ONNX runtime that serves it)
over a dataset version and compares its confident predictions with one annotator's boxes:

* ``missed_box`` — a confident prediction with no label near it (IoU with every label under
  ``iou``, and not matched to one): a box the annotator probably overlooked; score = the
  prediction's score;
* ``wrong_class`` — a label matched to a confident prediction of another class at IoU >= ``iou``;
  score = that prediction's score minus the best score the model gives the label's own class
  there (candidates only where the model prefers the other class);
* ``bad_location`` — a label matched to a confident prediction at IoU under ``iou``; score =
  prediction score x (1 - IoU).

Labels and confident predictions are paired by the same optimal assignment as annotators are
(:mod:`detops.data._agreement`), class-agnostic, at IoU >= ``min_overlap`` (0.1). "Confident"
is ``min_score``, by default the model's deployed threshold. Candidates are ranked by score.

**Out of sample.** A model has seen its training images, so its predictions there agree with
their labels, errors included. The model's lineage names the dataset version it was trained on;
images of that version's ``train`` split (matched by content hash, so other versions of the
same images count too) are left out unless ``include_train`` is set, in which case each
candidate says ``in_sample``. A model with no recorded training data cannot be checked: every
image is used and the output says so.

:func:`send_to_review` puts the images with candidates into the review queue
(:mod:`detops.serve.review`, reason ``label_errors``), with the model's boxes as suggestions;
the corrected boxes come back as a dataset version with ``detops data add-feedback``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from detops.data._agreement import iou_grid, match_boxes
from detops.errors import ConsistencyError

__all__ = ["KINDS", "find_label_errors", "send_to_review", "summary_lines"]

KINDS = ("missed_box", "wrong_class", "bad_location")


def training_images(ws: Any, mv: Any) -> tuple[set[str] | None, str]:
    """Content hashes of the images the model trained on, and a sentence saying how known."""
    from detops.data.versions import get_version, load_version
    from detops.errors import DatasetNotFound

    ref = (mv.lineage or {}).get("dataset")
    if not ref:
        return None, (f"{mv.ref} records no training data (it was registered without a run), "
                      "so predictions may be in sample on any image")
    try:
        train = load_version(ws, get_version(ws, ref)).split("train")
    except DatasetNotFound:
        return None, f"{mv.ref} was trained on {ref}, which is not in this workspace"
    return ({img.sha256 for img in train.images if img.sha256},
            f"{mv.ref} was trained on the train split of {ref} ({len(train.images)} images)")


def find_label_errors(
    ws: Any,
    data: str,
    model: str,
    *,
    annotator: str | None = None,
    iou: float = 0.5,
    min_overlap: float = 0.1,
    min_score: float | None = None,
    include_train: bool = False,
    batch: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Rank likely label errors of dataset version ``data`` with model ``model`` (see the
    module docstring). Returns a JSON-ready dict with ``candidates`` best first."""
    from detops.data.versions import get_version, load_version
    from detops.model.detections import Detections
    from detops.model.predict import predict_files
    from detops.model.registry import get_model, load_runtime
    from detops.model.workflow import pick_annotator

    t0 = time.perf_counter()
    if not 0 < min_overlap <= iou <= 1:
        raise ConsistencyError(f"need 0 < min_overlap ({min_overlap}) <= iou ({iou}) <= 1")
    mv = get_model(ws, model)
    dv = get_version(ws, data)
    ds = load_version(ws, dv)
    if annotator is None:
        lineage_annotator = (mv.lineage or {}).get("annotator")
        annotator = lineage_annotator if lineage_annotator in ds.annotators else None
    try:
        annotator = pick_annotator(ds, annotator)
    except Exception as exc:
        raise ConsistencyError(f"{dv.ref}: {exc}") from None
    runtime = load_runtime(ws, mv)
    model_names = list(runtime.spec.class_names)
    names = ds.category_names
    to_ds = np.array([names.index(n) if n in names else -1 for n in model_names], np.int64)
    if not (to_ds >= 0).any():
        raise ConsistencyError(
            f"{mv.ref} knows none of the classes of {dv.ref} (model: {', '.join(model_names)}; "
            f"dataset: {', '.join(names) or 'none'}): its predictions cannot check these labels")
    notes: list[str] = []
    unknown = [n for n, k in zip(model_names, to_ds.tolist(), strict=True) if k < 0]
    if unknown:
        notes.append(f"predictions of {', '.join(unknown)} (classes {mv.ref} knows and "
                     f"{dv.ref} does not) are left out")
    threshold = float(runtime.spec.score_threshold if min_score is None else min_score)
    train, lineage_note = training_images(ws, mv)
    in_sample = [None if train is None else (img.sha256 in train) for img in ds.images]
    use = [i for i, s in enumerate(in_sample) if include_train or not s]
    n_in = sum(1 for s in in_sample if s)
    if train is None:
        sample_note = lineage_note + f"; all {len(ds.images)} images of {dv.ref} used"
    elif include_train:
        sample_note = (lineage_note + f"; all {len(ds.images)} images of {dv.ref} used, "
                       f"{n_in} of them in sample (flagged in_sample)")
    else:
        sample_note = (lineage_note + f"; {n_in} of those images are in {dv.ref} and were left "
                       f"out: {len(use)} images used, all out of sample")
    images = [ds.images[i] for i in use]
    dets = predict_files(runtime, [ds.image_path(img) for img in images], batch=batch,
                         score_threshold=min(0.05, threshold), progress=progress)
    by_image = ds.annotations_by_image()
    candidates: list[dict[str, Any]] = []
    flagged: dict[str, dict[str, Any]] = {}
    for row, (img, d) in enumerate(zip(images, dets, strict=True)):
        labels = [a for a in by_image.get(img.id, []) if a.annotator == annotator
                  and not a.iscrowd]
        where = {"image_id": img.id, "file": img.file, "sha256": img.sha256,
                 "split": img.split, "in_sample": in_sample[use[row]]}
        found = _image_candidates(labels, d, to_ds, names, model_names, where,
                                  threshold=threshold, iou=iou, min_overlap=min_overlap)
        if found:  # what a reviewer needs: the image and the model's confident boxes
            keep = d.scores >= threshold
            flagged[str(img.id)] = {
                "file": img.file, "path": str(ds.image_path(img)), "width": img.width,
                "height": img.height,
                "predictions": [{**p, "box": [round(v, 2) for v in p["box"]],
                                 "score": round(p["score"], 4)} for p in
                                Detections(d.boxes[keep], d.scores[keep],
                                           d.labels[keep]).to_list(model_names)]}
        candidates += found
    candidates.sort(key=lambda c: (-c["score"], c["image_id"], c["kind"]))
    counts = {k: sum(1 for c in candidates if c["kind"] == k) for k in KINDS}
    return {
        "model": mv.ref,
        "dataset": dv.ref,
        "annotator": annotator,
        "out_of_sample": sample_note,
        "images_used": len(images),
        "images_in_sample": sum(1 for i in use if in_sample[i]) if train is not None else None,
        "score_threshold": threshold,
        "model_classes": model_names,
        "iou": iou,
        "min_overlap": min_overlap,
        "counts": counts,
        "candidates": candidates,
        "images": flagged,
        "definitions": {
            "missed_box": "confident prediction with no label near it (score = its score)",
            "wrong_class": "label matched at IoU >= iou by a confident prediction of another "
                           "class (score = that score minus the model's score for the label's "
                           "class there)",
            "bad_location": "label matched by a confident prediction at IoU < iou (score = "
                            "prediction score x (1 - IoU))",
        },
        "notes": notes,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _image_candidates(labels: list[Any], d: Any, to_ds: np.ndarray, names: list[str],
                      model_names: list[str], where: dict[str, Any], *, threshold: float,
                      iou: float, min_overlap: float) -> list[dict[str, Any]]:
    """The candidates of one image: its labels against the model's detections ``d``."""
    lb = np.array([a.box for a in labels], np.float64).reshape(-1, 4)
    lc = np.array([a.category_id for a in labels], np.int64)
    pb = d.boxes.astype(np.float64)
    ps = d.scores.astype(np.float64)
    pc = to_ds[d.labels] if len(d.labels) else np.zeros(0, np.int64)  # -1: not a dataset class
    conf = (ps >= threshold) & (pc >= 0)  # a class the dataset lacks cannot be checked
    cb, cs, cc, cl = pb[conf], ps[conf], pc[conf], d.labels[conf]
    li, pi, ov, _ = match_boxes(np.zeros(len(lb), np.int64), lb, np.zeros(len(cb), np.int64),
                                cb, 1, min_overlap)
    grid_all = iou_grid(lb, pb)

    def label(k: int) -> dict[str, Any]:
        return {"annotation_id": labels[k].id, "box": [round(v, 2) for v in lb[k].tolist()],
                "class": names[int(lc[k])]}

    def pred(k: int) -> dict[str, Any]:
        return {"box": [round(v, 2) for v in cb[k].tolist()],
                "class": model_names[int(cl[k])], "score": round(float(cs[k]), 4)}

    out: list[dict[str, Any]] = []
    for k, p, v in zip(li.tolist(), pi.tolist(), ov.tolist(), strict=True):
        if v >= iou and cc[p] != lc[k]:
            own = (grid_all[k] >= iou) & (pc == lc[k])
            margin = float(cs[p]) - (float(ps[own].max()) if own.any() else 0.0)
            if margin > 0:
                out.append({"kind": "wrong_class", "score": round(margin, 4), **where,
                            "label": label(k), "prediction": pred(p), "iou": round(v, 4)})
        elif v < iou:
            out.append({"kind": "bad_location", "score": round(float(cs[p]) * (1 - v), 4),
                        **where, "label": label(k), "prediction": pred(p), "iou": round(v, 4)})
    matched = set(pi.tolist())
    near = grid_all[:, conf].max(0) if len(lb) else np.zeros(len(cb))  # cb is pb[conf]
    for p in range(len(cb)):
        if p not in matched and near[p] < iou:
            out.append({"kind": "missed_box", "score": round(float(cs[p]), 4), **where,
                        "label": None, "prediction": pred(p), "iou": round(float(near[p]), 4)})
    return out


def send_to_review(ws: Any, result: dict[str, Any], *, limit: int | None = None) -> list[str]:
    """Queue each image with candidates (best first, at most ``limit``) in the workspace's
    review queue (:mod:`detops.serve.review`), with the model's confident boxes as the
    suggestions; reviewers' corrections come back with ``detops data add-feedback``. Returns
    the review ids.

    The items are written at once, all or none, and their images are kept for
    ``serve.review_retention_days``. An image that already waits for review (a pending item
    from an earlier run on the same dataset version) is not queued again.
    """
    import datetime as dt
    import uuid

    from PIL import Image

    from detops.serve.review import OFFLINE, ReviewQueue

    name, _, version = result["model"].partition("@v")
    order: list[int] = []
    for c in result["candidates"]:
        if c["image_id"] not in order:
            order.append(c["image_id"])
    order = order[:limit] if limit is not None else order
    request_ids = {i: _request_id(result["dataset"], i) for i in order}
    queue = ReviewQueue(ws, retention_days=ws.settings.serve.review_retention_days)
    waiting = queue.pending_requests(list(request_ids.values()))
    batch: list[tuple[dict[str, Any], bytes]] = []
    for image_id in order:
        if request_ids[image_id] in waiting:
            continue
        info = result["images"][str(image_id)]
        path = info["path"]
        with Image.open(path) as im:
            fmt = (im.format or "").lower() or None
        with open(path, "rb") as f:
            data = f.read()
        batch.append(({"id": uuid.uuid4().hex, "request_id": request_ids[image_id],
                       "at": dt.datetime.now(dt.UTC), "model_name": name,
                       "model_version": int(version), "level": OFFLINE,
                       "reason": "label_errors", "detections": info["predictions"],
                       "classes": result["model_classes"], "width": info["width"],
                       "height": info["height"], "format": fmt}, data))
    queue.add(batch)
    return [item["id"] for item, _ in batch]


def _request_id(dataset: str, image_id: int) -> str:
    """The request id of a label-error review: readable, at most 64 characters, and distinct
    per (dataset version, image) even when the dataset's name is long."""
    rid = f"label-errors/{dataset}/{image_id}"
    if len(rid) <= 64:
        return rid
    return f"label-errors/{hashlib.sha256(dataset.encode()).hexdigest()[:24]}/{image_id}"


def summary_lines(result: dict[str, Any], top: int = 10) -> list[str]:
    """The candidates in a few terminal lines."""
    c = result["counts"]
    lines = [f"{result['dataset']} labels by {result['annotator'] or '-'} checked with "
             f"{result['model']} on {result['images_used']} images: "
             + ", ".join(f"{k} {v}" for k, v in c.items()),
             f"  {result['out_of_sample']}"]
    lines += [f"  note: {n}" for n in result.get("notes", [])]
    for cand in result["candidates"][:top]:
        lab, pr = cand["label"], cand["prediction"]
        if cand["kind"] == "missed_box":
            what = f"no label; model sees {pr['class']} {pr['score']:.2f} at {pr['box']}"
        elif cand["kind"] == "wrong_class":
            what = f"label {lab['class']}, model says {pr['class']} {pr['score']:.2f}"
        else:
            what = f"label {lab['class']} at {lab['box']}, model at {pr['box']} (IoU {cand['iou']})"
        flag = " [in sample]" if cand["in_sample"] else ""
        lines.append(f"  {cand['score']:.3f} {cand['kind']:<12} {cand['file']}: {what}{flag}")
    if len(result["candidates"]) > top:
        lines.append(f"  ... {len(result['candidates']) - top} more (--json or --out FILE)")
    return lines
