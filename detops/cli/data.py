"""``detops data …``: register, inspect, validate, export and synthesise datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from detops.cli._common import (
    JsonOpt,
    ProgressBar,
    WorkspaceOpt,
    comma_list,
    fail,
    open_workspace,
    print_json,
)

data_app = typer.Typer(
    help="Datasets: add, add-feedback, list, show, diff, export, validate, stats, synth, "
    "consistency, consensus, label-errors.",
    no_args_is_help=True,
)

FormatOpt = typer.Option(None, "--format", "-f", help="coco | yolo | voc (default: detected)")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


def _load_source(path: Path, fmt: str | None, *, strict: bool, one_based: bool = True) -> Any:
    from detops.data.formats import detect_format, load

    fmt = fmt or detect_format(path)
    return load(path, fmt, strict=strict, one_based=one_based), fmt


@data_app.command("add")
def add(
    name: str = typer.Argument(..., help="Dataset name; the new version is NAME@vN."),
    path: Path = typer.Argument(..., help="COCO JSON file or folder, YOLO folder, VOC folder."),
    fmt: str = FormatOpt,
    keep_splits: bool = typer.Option(
        False, "--keep-splits", help="Keep the source's train/val folders instead of hash splits."
    ),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register an immutable dataset version (identical content returns the existing one)."""
    from detops.data.versions import add_dataset

    ws = open_workspace(workspace)
    ds, fmt = _load_source(path, fmt, strict=True, one_based=ws.settings.data.voc_one_based)
    with ProgressBar("hashing images") as bar:
        dv = add_dataset(
            ws,
            name,
            ds,
            source=str(path.resolve()),
            source_format=fmt,
            keep_splits=keep_splits,
            progress=bar,
        )
    if as_json:
        print_json({**dv.to_dict(), "created": dv.created, "loss_report": dv.loss_report})
        return
    verb = "registered" if dv.created else "unchanged, already registered as"
    typer.echo(
        f"{verb} {dv.ref}  ({dv.n_images} images, {dv.n_annotations} boxes, "
        f"{dv.n_categories} categories, digest {dv.digest[:12]})"
    )
    counts = (dv.loss_report or {}).get("counts") or {}
    if counts:
        typer.echo("import loss report (what could not be carried as it was):")
        for kind, n in counts.items():
            typer.echo(f"  {kind}: {n}")
        typer.echo(f"  details: detops data show {dv.ref} --json")


@data_app.command("list")
def list_(
    name: str = typer.Argument(None, help="Only this dataset."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List dataset versions."""
    from detops.data.versions import list_versions

    ws = open_workspace(workspace)
    rows = list_versions(ws, name)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    if not rows:
        typer.echo("no datasets yet; add one with `detops data add NAME PATH`")
        return
    typer.echo(f"{'dataset':<28} {'images':>8} {'boxes':>8} {'classes':>7}  digest        created")
    for r in rows:
        typer.echo(
            f"{r.ref:<28} {r.n_images:>8} {r.n_annotations:>8} {r.n_categories:>7}  "
            f"{r.digest[:12]}  {str(r.created_at)[:19]}"
        )


@data_app.command("show")
def show(
    ref: str = typer.Argument(..., help="NAME@vN (or NAME for the latest)."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a dataset version: counts, categories, splits, annotators, import loss report."""
    from collections import Counter

    from detops.data.versions import get_version, load_version

    ws = open_workspace(workspace)
    dv = get_version(ws, ref)
    ds = load_version(ws, dv)
    per_class = Counter(ds.category_names[a.category_id] for a in ds.annotations)
    out = {
        **dv.to_dict(),
        "categories": [
            {"id": c.id, "name": c.name, "boxes": per_class.get(c.name, 0)} for c in ds.categories
        ],
        "splits": dict(sorted(Counter(img.split for img in ds.images).items())),
        "annotators": ds.annotators,
        "loss_report": dv.loss_report,
    }
    if as_json:
        print_json(out)
        return
    typer.echo(f"{dv.ref}  digest {dv.digest}")
    typer.echo(f"  source:      {dv.source} ({dv.source_format})")
    typer.echo(f"  images:      {dv.n_images}   boxes: {dv.n_annotations}")
    typer.echo(f"  splits:      {', '.join(f'{k}={v}' for k, v in out['splits'].items())}")
    typer.echo(f"  annotators:  {', '.join(ds.annotators) or '-'}")
    typer.echo(
        "  categories:  " + ", ".join(f"{c['name']} ({c['boxes']})" for c in out["categories"])
    )
    counts = (dv.loss_report or {}).get("counts") or {}
    typer.echo("  import loss: " + (", ".join(f"{k}={v}" for k, v in counts.items()) or "none"))


@data_app.command("diff")
def diff(
    a: str = typer.Argument(..., help="NAME@vA"),
    b: str = typer.Argument(..., help="NAME@vB"),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Images added / removed and labels changed per image between two versions."""
    from detops.data.versions import diff_versions, load_version

    ws = open_workspace(workspace)
    d = diff_versions(load_version(ws, a), load_version(ws, b))
    if as_json:
        print_json(d)
        return
    s = d["summary"]
    typer.echo(
        f"{a} -> {b}: {s['added']} images added, {s['removed']} removed, "
        f"{s['changed']} with changed labels, {s['unchanged']} unchanged"
    )
    for f in d["images_added"][:20]:
        typer.echo(f"  + {f}")
    for f in d["images_removed"][:20]:
        typer.echo(f"  - {f}")
    for c in d["images_changed"][:20]:
        typer.echo(
            f"  ~ {c['image']}: +{len(c['labels_added'])} / -{len(c['labels_removed'])} labels"
        )
    if d["categories_added"] or d["categories_removed"]:
        typer.echo(f"  categories +{d['categories_added']} -{d['categories_removed']}")


@data_app.command("export")
def export(
    ref: str = typer.Argument(..., help="NAME@vN"),
    out: Path = typer.Argument(..., help="Output folder."),
    fmt: str = typer.Option("coco", "--format", "-f", help="coco | yolo | voc"),
    annotator: str = typer.Option(None, "--annotator", help="Only this annotator's boxes."),
    workspace: str = WorkspaceOpt,
) -> None:
    """Write a dataset version as COCO, YOLO or Pascal VOC (images copied)."""
    from detops.data.formats import save
    from detops.data.versions import load_version

    ws = open_workspace(workspace)
    ds = load_version(ws, ref)
    if annotator is not None:
        if annotator not in ds.annotators:
            fail(
                f"{ref} has no annotator {annotator!r} "
                f"(annotators: {', '.join(ds.annotators) or 'none'})"
            )
        ds.annotations = [a for a in ds.annotations if a.annotator == annotator]
    if fmt not in ("coco", "yolo", "voc"):
        fail(f"--format {fmt!r}: expected coco, yolo or voc")
    from detops.data.formats import export_losses

    path = save(ds, out, fmt, one_based=ws.settings.data.voc_one_based)
    typer.echo(f"wrote {ref} as {fmt} to {path}")
    for entry in export_losses(ds, fmt).entries:
        typer.echo(f"  not carried by {fmt}: {entry.message}")


@data_app.command("add-feedback")
def add_feedback(
    name: str = typer.Argument(..., help="Dataset name; the new version is NAME@vN."),
    since: str = typer.Option(
        None,
        "--since",
        help="Only reviews submitted since: an ISO date or time (UTC unless it says) or an age "
        "such as 7d, 12h.",
    ),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register reviewed images (the review queue's corrected boxes) as a dataset version.

    Images come from the review queue's store, boxes from the submitted feedback, and each
    box's annotator is its reviewer; use the version to retrain. Identical content returns the
    existing version; a failure registers nothing.
    """
    from detops.data.versions import add_dataset
    from detops.serve.review import feedback_dataset, parse_since

    ws = open_workspace(workspace)
    after = parse_since(since) if since else None
    source = "review feedback" + (f" since {after.isoformat()}" if after else "")
    with feedback_dataset(ws, after) as (ds, summary), ProgressBar("hashing images") as bar:
        dv = add_dataset(ws, name, ds, source=source, source_format="feedback", progress=bar)
    if as_json:
        print_json({**dv.to_dict(), "created": dv.created, "feedback": summary})
        return
    verb = "registered" if dv.created else "unchanged, already registered as"
    typer.echo(
        f"{verb} {dv.ref}  ({dv.n_images} reviewed images, {dv.n_annotations} boxes by "
        f"{', '.join(summary['reviewers'])}; digest {dv.digest[:12]})"
    )
    if summary["skipped_image_expired"]:
        typer.echo(
            f"  skipped {len(summary['skipped_image_expired'])} reviews whose image the "
            "retention (serve.review_retention_days) already deleted"
        )


@data_app.command("validate")
def validate_cmd(
    target: str = typer.Argument(..., help="NAME@vN, or a path to a COCO / YOLO / VOC dataset."),
    fmt: str = FormatOpt,
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Report problems, each naming the file and the record; exit 1 when any is an error."""
    from detops.data.validate import validate

    ds = _resolve_dataset(target, fmt, workspace, strict=False)
    with ProgressBar("validating") as bar:
        report = validate(ds, progress=bar)
    if as_json:
        print_json(report.to_dict())
    else:
        for f in report.findings:
            typer.echo(f"{f.severity:<7} {f.kind:<18} {f.file} [{f.record}]: {f.message}")
        typer.echo(
            f"{len(report.errors)} errors, {len(report.warnings)} warnings "
            f"in {len(ds.images)} images"
        )
    if report.errors:
        raise typer.Exit(1)


def _resolve_dataset(target: str, fmt: str | None, workspace: str | None, *, strict: bool) -> Any:
    p = Path(target)
    if p.exists():
        one_based = True
        try:
            one_based = open_workspace(workspace).settings.data.voc_one_based
        except Exception:  # validating a folder needs no workspace
            pass
        return _load_source(p, fmt, strict=strict, one_based=one_based)[0]
    from detops.data.versions import load_version

    return load_version(open_workspace(workspace), target)


@data_app.command("stats")
def stats(
    target: str = typer.Argument(..., help="NAME@vN, or a path to a dataset."),
    fmt: str = FormatOpt,
    plot: Path = typer.Option(None, "--plot", help="Write a PNG overview to this file."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Class counts, boxes per image, COCO size buckets, image sizes, brightness, contrast."""
    from detops.data.stats import compute_stats, format_stats, plot_stats

    ds = _resolve_dataset(target, fmt, workspace, strict=False)
    with ProgressBar("measuring") as bar:
        st = compute_stats(ds, progress=bar)
    st["name"] = target
    if plot is not None:
        plot_stats(st, plot)
    if as_json:
        print_json(st)
    else:
        typer.echo(format_stats(st))
        if plot is not None:
            typer.echo(f"plot: {plot.resolve()}")


@data_app.command("synth")
def synth(
    out: Path = typer.Argument(..., help="Output folder."),
    n: int = typer.Option(200, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed"),
    fmt: str = typer.Option("coco", "--format", "-f", help="coco | yolo | voc"),
    size: int = typer.Option(320, "--size", min=32, help="Image width and height in pixels."),
    brightness: float = typer.Option(None, help="Added to grey levels (-255..255); default 0."),
    contrast: float = typer.Option(None, help="Contrast multiplier about mid-grey; default 1."),
    noise: float = typer.Option(None, help="Gaussian noise sigma; default 6."),
    blur: float = typer.Option(None, help="Gaussian blur radius in px; default 0."),
    scale: float = typer.Option(None, help="Object scale multiplier; default 1."),
    min_objects: int = typer.Option(None, help="Fewest objects per image; default 1."),
    max_objects: int = typer.Option(None, help="Most objects per image; default 10."),
    class_mix: str = typer.Option(None, help="Class weights, e.g. 'circle=3,star=1'."),
    occlusion: float = typer.Option(
        None, help="Rate of occluder patches over objects; default 0.15."
    ),
    unseen_class: float = typer.Option(
        None, help="Rate of an unlabelled, never-seen class; default 0."
    ),
    annotators: str = typer.Option(None, help="Simulated annotators, e.g. 'A,B,C'."),
    annotator_spec: str = typer.Option(
        None,
        help="Inconsistency per annotator: 'B:loose=0.3;C:miss=0.1,confuse=star>square@0.5' "
        "(keys jitter, loose, miss, confuse=FROM>TO@RATE, seed).",
    ),
    image_format: str = typer.Option("jpg", help="jpg | png"),
    workers: int = typer.Option(0, help="Processes; 0 = one per core."),
) -> None:
    """Write labelled synthetic scenes with drift knobs and simulated annotators."""
    from detops.data.formats import save
    from detops.data.synth import SceneConfig, parse_annotators, synthesize

    knobs: dict[str, Any] = dict(
        width=size,
        height=size,
        brightness=brightness,
        contrast=contrast,
        noise=noise,
        blur=blur,
        scale=scale,
        min_objects=min_objects,
        max_objects=max_objects,
        occlusion=occlusion,
        unseen_class=unseen_class,
    )
    if class_mix:
        try:
            knobs["class_mix"] = {
                k.strip(): float(v)
                for k, v in (part.split("=", 1) for part in class_mix.split(","))
            }
        except ValueError:
            fail(f"--class-mix {class_mix!r}: expected NAME=WEIGHT[,NAME=WEIGHT...]")
    config = SceneConfig(**{k: v for k, v in knobs.items() if v is not None})
    if annotator_spec and not annotators:
        fail("--annotator-spec needs --annotators NAMES")
    specs = (
        parse_annotators(annotators, annotator_spec, classes=config.classes) if annotators else None
    )
    with ProgressBar("rendering") as bar:
        ds = synthesize(
            out, n, seed, config, specs, image_format=image_format, workers=workers, progress=bar
        )
    if fmt == "yolo" and specs and len(specs) > 1:
        fail("YOLO labels cannot say who drew a box; use --format coco or voc with annotators")
    save(ds, out, fmt, copy_images=False)
    typer.echo(
        f"wrote {len(ds.images)} images, {len(ds.annotations)} boxes "
        f"({', '.join(ds.category_names)}) to {out.resolve()} as {fmt}"
    )


# -- label consistency (issue 6): agreement, consensus, label-error candidates ------------------
AnnotatorsOpt = typer.Option(
    None, "--annotators", help="Compare only these, e.g. 'A,B' (default: every annotator)."
)
AllLabelledOpt = typer.Option(
    False,
    "--all-labelled",
    help="Every annotator looked at every image (no box means 'saw nothing'); by default an "
    "annotator labelled the images it drew on, or those whose tag 'annotators' names it.",
)


def _names(value: str | None) -> list[str] | None:
    return comma_list(value, "--annotators", "A,B")


@data_app.command("consistency")
def consistency(
    ref: str = typer.Argument(..., help="NAME@vN with several annotators."),
    iou: float = typer.Option(0.5, "--iou", help="IoU at which two annotators' boxes match."),
    strict_iou: float = typer.Option(
        0.75, "--strict-iou", help="Matched boxes below this IoU are a localisation disagreement."
    ),
    edge_tolerance: float = typer.Option(
        0.03, "--edge-tolerance", help="Edge offset (fraction of the box size) that counts."
    ),
    annotators: str = AnnotatorsOpt,
    all_labelled: bool = AllLabelledOpt,
    top: int = typer.Option(20, "--top", min=0, help="Most inconsistent images to list."),
    report: Path = typer.Option(None, "--report", help="Write a self-contained HTML report."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Do the annotators agree? Typed disagreements, Krippendorff's alpha, conventions in words."""
    from detops.data.consistency import check_consistency, format_report, write_html
    from detops.data.versions import load_version

    ws = open_workspace(workspace)
    ds = load_version(ws, ref)
    rep = check_consistency(ds, annotators=_names(annotators), iou=iou, strict_iou=strict_iou,
                            edge_tolerance=edge_tolerance, all_labelled=all_labelled, top=top)
    path = write_html(rep, ds, report) if report is not None else None
    if as_json:
        print_json({**rep.to_dict(), "report": None if path is None else str(path.resolve())})
        return
    typer.echo(format_report(rep))
    if path is not None:
        typer.echo(f"report: {path.resolve()}")


@data_app.command("consensus")
def consensus(
    ref: str = typer.Argument(..., help="NAME@vN with several annotators."),
    name: str = typer.Option(..., "--name", help="Dataset name of the consensus version."),
    iou: float = typer.Option(0.5, "--iou", help="IoU at which boxes are the same object."),
    min_votes: int = typer.Option(
        None, "--min-votes", min=1,
        help="Annotators who must draw an object (default: half of those who labelled it).",
    ),
    annotators: str = AnnotatorsOpt,
    all_labelled: bool = AllLabelledOpt,
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register a consensus version: majority vote, median-fused boxes, who agreed per box."""
    from detops.data.consensus import add_consensus

    ws = open_workspace(workspace)
    with ProgressBar("hashing images") as bar:
        dv, info = add_consensus(ws, ref, name, annotators=_names(annotators), iou=iou,
                                 min_votes=min_votes, all_labelled=all_labelled, progress=bar)
    if as_json:
        print_json({**dv.to_dict(), "created": dv.created, "consensus": info})
        return
    verb = "registered" if dv.created else "unchanged, already registered as"
    typer.echo(f"{verb} {dv.ref}: consensus of {ref} by {', '.join(info.get('annotators', []))} "
               f"({info.get('rule')}): {info.get('objects_kept')} boxes kept, "
               f"{info.get('objects_dropped')} objects without enough votes dropped, "
               f"{info.get('class_ties')} class ties")
    typer.echo(f"  who agreed on each box: detops data export {dv.ref} OUT (attributes)")


@data_app.command("label-errors")
def label_errors(
    ref: str = typer.Argument(..., help="NAME@vN whose labels to check."),
    model: str = typer.Option(..., "--model", help="MODEL@ALIAS or MODEL@vN to check with."),
    annotator: str = typer.Option(
        None, "--annotator", help="Whose labels (default: the model's, else the first)."
    ),
    min_score: float = typer.Option(
        None, "--min-score", help="Confident predictions (default: the model's threshold)."
    ),
    iou: float = typer.Option(0.5, "--iou", help="Below this IoU a matched label is misplaced."),
    include_train: bool = typer.Option(
        False, "--include-train",
        help="Also use images the model trained on (flagged in_sample; their errors hide).",
    ),
    top: int = typer.Option(20, "--top", min=0, help="Candidates to print."),
    out: Path = typer.Option(None, "--out", help="Write all candidates as JSON to this file."),
    to_review: bool = typer.Option(
        False, "--to-review", help="Queue the images with candidates for human review."
    ),
    review_limit: int = typer.Option(
        None, "--review-limit", min=1, help="Queue at most this many images (best first)."
    ),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Likely missed boxes, wrong classes and misplaced boxes, from out-of-sample predictions."""
    import json

    from detops.data.label_errors import find_label_errors, send_to_review, summary_lines

    ws = open_workspace(workspace)
    with ProgressBar("predicting") as bar:
        result = find_label_errors(ws, ref, model, annotator=annotator, min_score=min_score,
                                   iou=iou, include_train=include_train, progress=bar)
    if to_review:
        result["review_ids"] = send_to_review(ws, result, limit=review_limit)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    if as_json:
        print_json(result)
        return
    for line in summary_lines(result, top=top):
        typer.echo(line)
    if out is not None:
        typer.echo(f"candidates: {out.resolve()}")
    if to_review:
        typer.echo(f"queued {len(result['review_ids'])} images for review (reason label_errors; "
                   "images already waiting for review are not queued again); corrections come "
                   "back with `detops data add-feedback NAME`")
