"""The Modelling stage end to end: tracked training, export with parity, evaluation, registry.

Every evaluation here runs the exported ONNX graph through :class:`detops.model.runtime.Runtime`
(the runtime the server uses), never the PyTorch model: what was evaluated is what is served.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from detops.data.dataset import Dataset
from detops.errors import DetopsError, EvaluationError
from detops.workspace import Workspace

EVAL_ENGINE = "hotcoco, checked bit-exact against pycocotools COCOeval (101-point AP)"


# -- evaluation through the runtime ---------------------------------------------------------------
def pick_annotator(ds: Dataset, wanted: str | None) -> str | None:
    """The annotator whose boxes are the ground truth (first alphabetically by default)."""
    names = ds.annotators
    if wanted is not None:
        if wanted not in names:
            raise EvaluationError(
                f"annotator {wanted!r} is not in the dataset (annotators: "
                f"{', '.join(names) or 'none: boxes carry no annotator'})"
            )
        return wanted
    return names[0] if names else None


def ground_truth(ds: Dataset, annotator: str | None) -> dict[str, Any]:
    from detops.data.formats import to_coco_dict

    view = Dataset(ds.images, [a for a in ds.annotations if a.annotator == annotator or
                               annotator is None], ds.categories, ds.root, ds.info)
    return to_coco_dict(view)


def evaluate_runtime(
    runtime: Any,
    ds: Dataset,
    *,
    annotator: str | None = None,
    slice_by: str | None = None,
    batch: int = 8,
    bootstrap: int = 200,
    seed: int = 0,
    figures: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    tune_threshold: bool = False,
) -> dict[str, Any]:
    """Predict ``ds`` through the runtime and evaluate: COCO twelve, per class, P/R/F1 at the
    deployed threshold, TIDE-style errors, bootstrap CIs, slices; optionally a PR-curve PNG.

    ``tune_threshold`` picks the score threshold with the best F1 on ``ds`` (for a model about
    to be registered) instead of the spec's; ``at_threshold`` then reports that one.
    """
    from detops.evaluate import (
        best_f1_threshold,
        bootstrap_ci,
        error_analysis,
        evaluate_coco,
        evaluate_slices,
        plot_pr_curves,
        precision_recall_f1,
    )
    from detops.model.predict import predict_files, to_coco_results

    if not ds.images:
        raise EvaluationError("the evaluation set has no images")
    annotator = pick_annotator(ds, annotator)
    gt = ground_truth(ds, annotator)
    t0 = time.perf_counter()
    # A low threshold for mAP (the whole PR curve); the deployed one for P/R/F1.
    dets = predict_files(runtime, [ds.image_path(img) for img in ds.images], batch=batch,
                         score_threshold=0.01, progress=progress)
    predict_s = time.perf_counter() - t0
    preds = to_coco_results(dets, [img.id for img in ds.images])
    result = evaluate_coco(gt, preds)
    threshold = float(runtime.spec.score_threshold)
    if tune_threshold:
        threshold = best_f1_threshold(gt, preds)[0]
    prf = precision_recall_f1(gt, preds, score_threshold=threshold)
    errors = error_analysis(gt, preds, score_threshold=threshold)
    ci = bootstrap_ci(gt, preds, n=bootstrap, seed=seed) if bootstrap else None
    out: dict[str, Any] = {
        "coco": result.stats,
        "per_class": result.per_class,
        "at_threshold": {"score_threshold": threshold, "iou": 0.5, "precision": prf.precision,
                         "recall": prf.recall, "f1": prf.f1, "tp": prf.tp, "fp": prf.fp,
                         "fn": prf.fn},
        "errors": {"counts": errors.counts, "delta_ap50": errors.delta_ap50},
        "ci": None if ci is None else {
            m: {"low": ci.low[m], "high": ci.high[m], "n": ci.n, "alpha": ci.alpha}
            for m in ci.low},
        "images": len(ds.images),
        "annotator": annotator,
        "engine": EVAL_ENGINE,
        "notes": list(result.notes),
        "predict_seconds": round(predict_s, 3),
        "ms_per_image": round(1000 * predict_s / len(ds.images), 3),
    }
    if slice_by:
        if slice_by == "split":  # the split is a field of the record, not a tag: expose it
            splits = {img.id: img.split for img in ds.images}
            for img in gt["images"]:
                img.setdefault("tags", {}).setdefault("split", splits[img["id"]])
        out["slices"] = {k: v.stats for k, v in
                         sorted(evaluate_slices(gt, preds, slice_by).items())}
        out["slice_by"] = slice_by
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        out["pr_curve"] = str(plot_pr_curves(result, figures / "pr_curve.png"))
    return out


# -- training runs ---------------------------------------------------------------------------
def train_run(
    ws: Workspace,
    dataset_ref: str,
    config: Any,
    *,
    progress: Any = None,
    resume: str | None = None,
    echo: Callable[[str], None] = lambda _s: None,
) -> Any:
    """Train, export, check parity, evaluate through the runtime and record it all as a run."""
    from detops.data.versions import get_version, load_version
    from detops.model.detector import spec_dict
    from detops.model.export import export_onnx, parity_check
    from detops.model.runtime import Runtime
    from detops.model.spec import ModelSpec
    from detops.model.tracking import RunRecorder
    from detops.model.train import load_checkpoint, train

    dv = get_version(ws, dataset_ref)
    ds = load_version(ws, dv)
    train_ds, val_ds = ds.split("train"), ds.split("val")
    if not train_ds.images or not val_ds.images:
        raise DetopsError(
            f"{dv.ref} has {len(train_ds.images)} train and {len(val_ds.images)} val images; "
            "training needs both (set data.split in detops.yaml and add the data again)")
    annotator = pick_annotator(ds, getattr(config, "annotator", None))
    config.annotator = annotator
    params = {k: v for k, v in asdict(config).items()}
    recorder = (RunRecorder.reopen(ws, resume) if resume else
                RunRecorder(ws, dataset=dv.ref, dataset_digest=dv.digest, params=params))
    out_dir = ws.state_dir / "runs" / recorder.id
    out_dir.mkdir(parents=True, exist_ok=True)
    truth = f"annotator {annotator}" if annotator else "the dataset's boxes"
    echo(f"run {recorder.id}: {len(train_ds.images)} train / {len(val_ds.images)} val images "
         f"of {dv.ref}, ground truth: {truth}")
    try:
        result = train(train_ds, val_ds, config, out_dir=out_dir, progress=progress,
                       resume=bool(resume),
                       on_epoch=lambda m: recorder.log_epoch(
                           {k: v for k, v in asdict(m).items() if v is not None}))
        model, _state = load_checkpoint(result.best_path)
        onnx_file = export_onnx(model, out_dir / "model.onnx", imgsz=config.imgsz)
        import numpy as np
        from PIL import Image

        sample = [np.asarray(Image.open(val_ds.image_path(img)).convert("RGB"))
                  for img in val_ds.images[:16]]
        parity = parity_check(model, onnx_file, sample, imgsz=config.imgsz)
        spec = ModelSpec.model_validate(spec_dict(ds.category_names, imgsz=config.imgsz))
        runtime = Runtime(onnx_file, spec)
        evaluation = evaluate_runtime(runtime, val_ds, annotator=annotator,
                                      figures=out_dir / "figures", tune_threshold=True)
        # The deployed threshold is the one with the best F1 on validation data.
        spec = spec.model_copy(
            update={"score_threshold": evaluation["at_threshold"]["score_threshold"]})
        spec_file = spec.save(out_dir / "spec.yaml")
        evaluation["parity"] = _parity_dict(parity)
        evaluation["split"] = "val"
        evaluation["dataset"] = dv.ref
        evaluation["training"] = {"stopped": result.stopped, "best_epoch": result.best_epoch,
                                  "seconds": round(result.seconds, 1), "amp": result.amp}
        report = out_dir / "report.json"
        report.write_text(json.dumps(evaluation, indent=2, default=float))
        for role, path in (("checkpoint", result.best_path), ("onnx", onnx_file),
                           ("spec", spec_file), ("report", report),
                           ("pr_curve", Path(evaluation["pr_curve"]))):
            recorder.add_artifact(role, path)
        return recorder.finish(evaluation)
    except BaseException as exc:
        recorder.finish(None, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise


def _parity_dict(parity: Any) -> dict[str, Any]:
    d = asdict(parity) if hasattr(parity, "__dataclass_fields__") else dict(parity.__dict__)
    return {k: (float(v) if isinstance(v, int | float) else v) for k, v in d.items()
            if not k.startswith("_")}


def register_run(ws: Workspace, run_id: str, name: str, *,
                 description: str | None = None) -> Any:
    """Register a finished run's ONNX + spec as ``NAME@vN`` with lineage and its evaluation."""
    from detops.model.registry import register_model
    from detops.model.spec import ModelSpec
    from detops.model.tracking import get_run

    run = get_run(ws, run_id)
    if run.status != "finished" or "onnx" not in run.artifacts:
        raise DetopsError(f"run {run.id} is {run.status} and has no exported model to register")
    spec = ModelSpec.from_yaml(ws.artifacts.get_bytes(run.artifacts["spec"]).decode(),
                               source=f"run {run.id} spec")
    git = run.code.get("project_git") or run.code.get("detops_git") or {}
    lineage = {
        "run": run.id, "dataset": run.dataset, "dataset_digest": run.dataset_digest,
        "annotator": run.params.get("annotator"),
        "code": {"package_version": run.code.get("package_version"),
                 "git_sha": git.get("sha"), "dirty": git.get("dirty")},
    }
    return register_model(ws, name, ws.artifacts.path(run.artifacts["onnx"]), spec,
                          run_id=run.id, lineage=lineage, evaluation=run.evaluation,
                          description=description)
