"""``detops train``, ``detops eval`` and ``detops predict``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from detops.cli._common import JsonOpt, ProgressBar, WorkspaceOpt, fail, open_workspace, print_json


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("eval")(evaluate)
    app.command("predict")(predict)


class _EpochBar:
    """Progress bar with loss and ETA for training, on stderr."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> _EpochBar:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"), TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"),
            console=Console(stderr=True, force_terminal=sys.stderr.isatty()),
            disable=not sys.stderr.isatty(),
        )
        self.bar.__enter__()
        self.task = self.bar.add_task("train", total=None, epoch=0, loss=0.0, eta="?")
        return self

    def __call__(self, epoch: int, step: int, total: int, loss: float, eta: float) -> None:
        self.bar.update(self.task, completed=step, total=total, epoch=epoch, loss=loss,
                        eta=f"{int(eta // 60)}:{int(eta % 60):02d}")

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)


def train(
    dataset: str = typer.Argument(..., help="NAME@vN of a registered dataset."),
    config: Path = typer.Option(None, "--config", help="train.yaml with TrainConfig fields."),
    epochs: int = typer.Option(None, min=1),
    lr: float = typer.Option(None),
    batch: int = typer.Option(None, min=1),
    imgsz: int = typer.Option(None, help="Input size (multiple of 32)."),
    seed: int = typer.Option(None),
    time_budget: float = typer.Option(None, "--time-budget", help="Stop after this many seconds."),
    patience: int = typer.Option(None, help="Early stop after N evaluations without better mAP."),
    annotator: str = typer.Option(None, help="Whose boxes to learn (default: first annotator)."),
    resume: str = typer.Option(None, "--resume", help="Continue this run from its last epoch."),
    register_as: str = typer.Option(None, "--register", help="Register the result as NAME@vN."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train the default detector; records params, data, code, environment, metrics, artifacts."""
    from dataclasses import fields

    import yaml

    from detops.model.train import TrainConfig
    from detops.model.workflow import register_run, train_run

    ws = open_workspace(workspace)
    values: dict[str, Any] = {}
    if config is not None:
        try:
            values = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            fail(f"{config}: {exc}")
        known = {f.name for f in fields(TrainConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            fail(f"{config}: unknown training settings {unknown} (known: {sorted(known)})")
    flags = dict(epochs=epochs, lr=lr, batch=batch, imgsz=imgsz, seed=seed,
                 time_budget_s=time_budget, patience=patience, annotator=annotator)
    values.update({k: v for k, v in flags.items() if v is not None})
    if resume is not None:
        from detops.model.tracking import get_run

        previous = get_run(ws, resume)
        values = {**previous.params, **values}
        dataset = previous.dataset or dataset
    cfg = TrainConfig(**values)
    with _EpochBar() as bar:
        run = train_run(ws, dataset, cfg, progress=bar, resume=resume,
                        echo=lambda s: typer.echo(s, err=True))
    out: dict[str, Any] = {"run": run.id, "evaluation": run.evaluation,
                           "duration_s": run.duration_s}
    if register_as:
        mv = register_run(ws, run.id, register_as)
        out["model"] = mv.ref
    if as_json:
        print_json(out)
        return
    c = run.evaluation["coco"]
    ci = run.evaluation.get("ci") or {}
    typer.echo(f"run {run.id} finished in {run.duration_s / 60:.1f} min "
               f"({len(run.metrics)} epochs, stopped by {run.evaluation['training']['stopped']})")
    typer.echo(f"  val mAP@0.5 {c['AP50']:.3f}" + _ci(ci.get("AP50"))
               + f"   mAP@[.5:.95] {c['AP']:.3f}" + _ci(ci.get("AP")))
    typer.echo(f"  parity torch vs onnx: max diff {run.evaluation['parity'].get('max_abs_diff')}")
    if register_as:
        typer.echo(f"  registered {out['model']}")
    else:
        typer.echo(f"  register it: detops models register {run.id} --name NAME")


def _ci(ci: dict[str, Any] | None) -> str:
    return "" if not ci else f" [{ci['low']:.3f}, {ci['high']:.3f}]"


def evaluate(
    model: str = typer.Argument(None, help="NAME@ALIAS or NAME@vN of a registered model."),
    data: str = typer.Option(None, "--data", help="NAME@vN to evaluate on."),
    split: str = typer.Option("val", "--split", help="train | val | test | all"),
    slice_by: str = typer.Option(None, "--slice-by", help="An image tag to slice metrics by."),
    annotator: str = typer.Option(None, help="Whose boxes are the ground truth."),
    gt: Path = typer.Option(None, "--gt", help="COCO ground-truth JSON (no workspace needed)."),
    pred: Path = typer.Option(None, "--pred", help="COCO results JSON for --gt."),
    figures: Path = typer.Option(None, "--figures", help="Folder for the PR-curve PNG."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """COCO-exact evaluation: of plain COCO files (--gt/--pred) or of a registered model."""
    if gt is not None or pred is not None:
        if gt is None or pred is None or model is not None:
            fail("plain-file evaluation takes --gt GT.json and --pred PRED.json (and no model)")
        out = _evaluate_files(gt, pred, slice_by, figures)
    else:
        if model is None or data is None:
            fail("give MODEL@ALIAS --data NAME@vN, or --gt GT.json --pred PRED.json")
        out = _evaluate_model(model, data, split, slice_by, annotator, figures, workspace)
    if as_json:
        print_json(out)
        return
    c = out["coco"]
    typer.echo("COCO bbox (pycocotools-exact, 101-point AP, maxDets 100):")
    for k, v in c.items():
        ci = (out.get("ci") or {}).get(k)
        typer.echo(f"  {k:<6} {v:7.4f}" + _ci(ci))
    if "per_class" in out:
        typer.echo("per class AP50 / AP: " + ", ".join(
            f"{n} {d['AP50']:.3f}/{d['AP']:.3f}" for n, d in out["per_class"].items()))
    if "at_threshold" in out:
        t = out["at_threshold"]
        typer.echo(f"at score >= {t['score_threshold']}: precision {t['precision']:.3f} "
                   f"recall {t['recall']:.3f} F1 {t['f1']:.3f}")
    if "errors" in out:
        gains = out["errors"]["delta_ap50"]
        typer.echo("errors (count / AP50 gained if fixed): " + ", ".join(
            f"{k} {n}/" + ("n/a" if gains.get(k) is None else f"{gains[k]:+.3f}")
            for k, n in out["errors"]["counts"].items()))
    for name, stats in (out.get("slices") or {}).items():
        typer.echo(
            f"  slice {out['slice_by']}={name}: AP50 {stats['AP50']:.3f} AP {stats['AP']:.3f}"
        )
    if out.get("pr_curve"):
        typer.echo(f"PR curve: {out['pr_curve']}")
    if out.get("hlp"):
        from detops.data.baseline import beside_lines

        typer.echo("beside human-level performance:")
        for line in beside_lines(out, out["hlp"]):
            typer.echo(f"  {line}")
    elif "hlp" in out:
        typer.echo(f"no human-level baseline for {out['data']} ({out['split']} images); "
                   f"compute one with `detops baseline hlp {out['data']}`")


def _load_json(path: Path) -> Any:
    from detops.errors import FormatError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FormatError(path, None, "file not found") from None
    except json.JSONDecodeError as exc:
        raise FormatError(path, f"line {exc.lineno}, column {exc.colno}",
                          f"not valid JSON: {exc.msg}") from None


def _evaluate_files(gt: Path, pred: Path, slice_by: str | None,
                    figures: Path | None) -> dict[str, Any]:
    from detops.evaluate import evaluate_coco, evaluate_slices, plot_pr_curves

    gt_doc, preds = _load_json(gt), _load_json(pred)
    if not isinstance(preds, list):
        fail(f"{pred}: expected a COCO results list [{{image_id, category_id, bbox, score}}...]")
    result = evaluate_coco(gt_doc, preds)
    out: dict[str, Any] = {"coco": result.stats, "per_class": result.per_class,
                           "notes": list(result.notes)}
    if slice_by:
        out["slice_by"] = slice_by
        out["slices"] = {k: v.stats for k, v in evaluate_slices(gt_doc, preds, slice_by).items()}
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        out["pr_curve"] = str(plot_pr_curves(result, figures / "pr_curve.png"))
    return out


def _evaluate_model(model: str, data: str, split: str, slice_by: str | None,
                    annotator: str | None, figures: Path | None,
                    workspace: str | None) -> dict[str, Any]:
    from detops.data.versions import load_version
    from detops.model.registry import get_model, load_runtime
    from detops.model.workflow import evaluate_runtime

    ws = open_workspace(workspace)
    mv = get_model(ws, model)
    ds = load_version(ws, data)
    if split != "all":
        if split not in {img.split for img in ds.images}:
            fail(f"{data} has no images in split {split!r}")
        ds = ds.split(split)
    runtime = load_runtime(ws, mv)
    annotator = annotator or mv.lineage.get("annotator")
    with ProgressBar("predicting") as bar:
        out = evaluate_runtime(runtime, ds, annotator=annotator, slice_by=slice_by,
                               figures=figures, progress=bar)
    out.update(model=mv.ref, data=data, split=split)
    from detops.data.baseline import hlp_beside

    # human-level performance on the same images, when `detops baseline hlp` stored one
    out["hlp"] = hlp_beside(ws, data, split)
    return out


def predict(
    model: str = typer.Argument(..., help="NAME@ALIAS or NAME@vN."),
    paths: list[Path] = typer.Argument(..., help="Image files or folders."),
    out: Path = typer.Option(Path("preds.json"), "--out", help="COCO results JSON to write."),
    batch: int = typer.Option(8, min=1),
    score_threshold: float = typer.Option(None, help="Override the model's threshold."),
    workspace: str = WorkspaceOpt,
) -> None:
    """Batch prediction to a COCO results file (image ids follow the sorted file list)."""
    from detops.model.predict import predict_files, to_coco_results
    from detops.model.registry import get_model, load_runtime

    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.suffix.lower() in exts))
        elif p.is_file():
            files.append(p)
        else:
            fail(f"{p}: no such file or folder")
    if not files:
        fail("no images found")
    ws = open_workspace(workspace)
    mv = get_model(ws, model)
    runtime = load_runtime(ws, mv)
    with ProgressBar(f"predicting with {mv.ref}") as bar:
        dets = predict_files(runtime, files, batch=batch, score_threshold=score_threshold,
                             progress=bar)
    results = to_coco_results(dets, list(range(1, len(files) + 1)))
    out.write_text(json.dumps(results))
    index = out.with_suffix(".images.json")
    index.write_text(json.dumps([{"id": i, "file_name": str(f)} for i, f in
                                 enumerate(files, 1)], indent=1))
    typer.echo(f"{len(results)} detections on {len(files)} images by {mv.ref} -> {out} "
               f"(image ids: {index})")
