"""``detops quickstart``: the whole life cycle on one machine, as far as it is built.

Stage 1 (data): create a workspace, synthesise scenes labelled by three simulated annotators,
register them as a dataset version, validate it, print its statistics, check whether the
annotators agree (consistency verdict and conventions) and store their human-level performance.
Stage 2 (model): train the default detector briefly, evaluate it through the ONNX runtime,
register it and point the alias ``production`` at it.
Stage 3 (roll out): synthesise shifted scenes (dusk: darker, lower contrast, noisier), train a
second version on them, run it in shadow beside ``det@production``, then as a canary through
its steps until the controller promotes it or rolls it back, printing each decision and why.
Stage 4 (deploy): serve the deployment and print a curl line to try (``--no-serve`` skips).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from detops.data.dataset import Dataset
    from detops.data.versions import DatasetVersion
    from detops.workspace import Workspace


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)


def _step(title: str) -> float:
    typer.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def quickstart(
    directory: Path = typer.Option(Path("detops-quickstart"), "--dir", help="Workspace folder."),
    n: int = typer.Option(800, "--n", min=20, help="Synthetic images to make."),
    seed: int = typer.Option(0, "--seed"),
    train_minutes: float = typer.Option(
        4.0, "--train-minutes", min=0.1, help="Training time budget (the full recipe takes 10)."
    ),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="End by serving the model."),
    port: int = typer.Option(8000, "--port", help="Port to serve on."),
) -> None:
    """Run the life cycle end to end on synthetic data (idempotent: re-running reuses work)."""
    from detops.data.formats import save
    from detops.data.stats import compute_stats, format_stats, plot_stats
    from detops.data.synth import AnnotatorSpec, SceneConfig, synthesize
    from detops.data.validate import validate
    from detops.data.versions import add_dataset, load_version
    from detops.workspace import Workspace, init_workspace

    t = _step(f"workspace: {directory.resolve()}")
    root = init_workspace(directory)
    ws = Workspace(root)
    typer.echo(
        f"store {ws.store_url}, artifacts {ws.artifacts.root} ({time.perf_counter() - t:.1f}s)"
    )

    t = _step(f"synthesise {n} scenes, labelled by annotators A (careful), B (loose boxes) "
              "and C (misses some, calls some stars squares)")
    src = root / "sources" / f"shapes-{seed}"
    annotators = [AnnotatorSpec("A"), AnnotatorSpec("B", loose=0.3, jitter=0.1),
                  AnnotatorSpec("C", miss=0.05, confuse=("star", "square", 0.2))]
    ds = synthesize(src, n, seed, SceneConfig(), annotators)
    save(ds, src, "coco", copy_images=False)
    typer.echo(
        f"{len(ds.images)} images, {len(ds.annotations)} boxes, classes "
        f"{', '.join(ds.category_names)} -> {src} ({time.perf_counter() - t:.1f}s)"
    )

    t = _step("register as dataset version")
    from detops.data.formats import load_coco

    dv = add_dataset(
        ws, "shapes", load_coco(src / "annotations.json"), source=str(src), source_format="coco"
    )
    typer.echo(
        f"{'registered' if dv.created else 'already registered as'} {dv.ref} "
        f"(digest {dv.digest[:12]}) ({time.perf_counter() - t:.1f}s)"
    )

    t = _step(f"validate {dv.ref}")
    stored = load_version(ws, dv)
    report = validate(stored)
    typer.echo(
        f"{len(report.errors)} errors, {len(report.warnings)} warnings "
        f"({time.perf_counter() - t:.1f}s)"
    )
    for f in report.findings[:5]:
        typer.echo(f"  {f.severity} {f.kind} {f.file} [{f.record}]: {f.message}")

    t = _step(f"statistics of {dv.ref}")
    st = compute_stats(stored)
    st["name"] = dv.ref
    plot = root / "reports" / f"{dv.name}-v{dv.version}-stats.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    plot_stats(st, plot)
    typer.echo(format_stats(st))
    typer.echo(f"plot: {plot} ({time.perf_counter() - t:.1f}s)")

    _consistency_stage(ws, dv, stored)

    _model_stage(ws, dv, train_minutes, seed)
    _rollout_stage(ws, root, n, seed, train_minutes)
    ws.close()
    typer.secho(
        "\nnext: detops data show shapes | detops runs list | detops models show det@production"
        " | detops eval det@production --data shapes --slice-by brightness_bin",
        fg="green",
    )
    typer.echo(f"(run commands inside {root} or pass --workspace {root})")
    if serve:
        _serve_stage(root, src, port)


# the drift the second version is trained for: dusk (darker, flatter, noisier scenes)
DUSK = {"brightness": -45.0, "contrast": 0.75, "noise": 9.0}
DEPLOYMENT = "quickstart"


def _rollout_stage(ws: Workspace, root: Path, n: int, seed: int, train_minutes: float) -> None:
    """Train det on shifted scenes, then shadow + canary it against det@production."""
    from detops.data.formats import load_coco, save
    from detops.data.synth import SceneConfig, synthesize
    from detops.data.versions import add_dataset, load_version
    from detops.model.registry import list_models
    from detops.model.train import TrainConfig
    from detops.model.workflow import register_run, train_run
    from detops.serve.rollout import demo_rollout

    n_dusk = max(20, n // 2)
    t = _step(f"drift: synthesise {n_dusk} dusk scenes (brightness {DUSK['brightness']:+g}, "
              f"contrast x{DUSK['contrast']}, noise {DUSK['noise']:g})")  # fmt: skip
    src = root / "sources" / f"shapes-dusk-{seed}"
    if not (src / "annotations.json").exists():
        dusk = SceneConfig(brightness=DUSK["brightness"], contrast=DUSK["contrast"],
                           noise=DUSK["noise"])  # fmt: skip
        ds = synthesize(src, n_dusk, seed + 1, dusk)
        save(ds, src, "coco", copy_images=False)
    dv = add_dataset(ws, "shapes-dusk", load_coco(src / "annotations.json"), source=str(src),
                     source_format="coco")  # fmt: skip
    typer.echo(f"{'registered' if dv.created else 'already registered as'} {dv.ref} "
               f"({time.perf_counter() - t:.1f}s)")  # fmt: skip

    existing = [m for m in list_models(ws, "det") if m.lineage.get("dataset") == dv.ref]
    if existing:
        candidate = existing[-1]
        _step(f"candidate: reusing {candidate.ref} trained on {dv.ref}")
    else:
        minutes = max(0.1, train_minutes / 2)
        t = _step(f"train a second version on {dv.ref} for up to {minutes:g} min")
        from detops.cli.train import _EpochBar

        with _EpochBar() as bar:
            run = train_run(ws, dv.ref, TrainConfig(time_budget_s=minutes * 60, seed=seed),
                            progress=bar, echo=typer.echo)  # fmt: skip
        candidate = register_run(ws, run.id, "det")
        typer.echo(f"registered {candidate.ref} ({time.perf_counter() - t:.0f}s)")

    _step(f"roll out {candidate.ref} in deployment {DEPLOYMENT!r}: shadow, then canary")
    # the traffic is what the new version was made for: dusk scenes it did not train on
    stored = load_version(ws, dv)
    held_out = [img for img in stored.images if img.split != "train"] or stored.images
    images = [stored.image_path(img).read_bytes() for img in held_out[:32]]
    result = demo_rollout(ws, DEPLOYMENT, candidate.ref, model="det@production",
                          echo=lambda line: typer.echo(f"  {line}"), images=images)  # fmt: skip
    outcome = result["outcome"]
    reason = f": {result['reason']}" if result.get("reason") else ""
    colour = "green" if outcome in ("promoted", "already_live") else "yellow"
    typer.secho(f"outcome: {outcome}{reason}; det@production is now {result['live']} "
                f"({result['requests']} requests, {result['failed_requests']} failed)",
                fg=colour)  # fmt: skip
    typer.echo(f"history: detops deploy history {DEPLOYMENT}")


def _consistency_stage(ws: Workspace, dv: DatasetVersion, stored: Dataset) -> None:
    """Do the annotators agree? Then their human-level performance, stored as the baseline."""
    from detops.data.baseline import get_baseline, human_level, save_baseline, summary_lines
    from detops.data.consistency import check_consistency, write_html
    from detops.data.consistency import summary_lines as consistency_lines

    t = _step(f"label consistency of {dv.ref}")
    # the simulated annotators looked at every image: no box there means they saw nothing
    report = check_consistency(stored, all_labelled=True)
    for line in consistency_lines(report):
        typer.echo(line)
    page = write_html(report, stored,
                      ws.root / "reports" / f"{dv.name}-v{dv.version}-consistency.html")
    typer.echo(f"report: {page} ({time.perf_counter() - t:.1f}s)")

    t = _step(f"human-level performance (HLP) on {dv.ref}: each annotator against the others")
    base = get_baseline(ws, dv.ref)
    if base is None:
        # intervals on val, where the model is evaluated (same resamples as its bootstrap)
        base = human_level(stored, splits=["all"], bootstrap=0, all_labelled=True)
        if any(img.split == "val" for img in stored.images):
            val = human_level(stored, splits=["val"], all_labelled=True)
            base["splits"].update(val["splits"])
        save_baseline(ws, dv, base, {"splits": list(base["splits"]), "all_labelled": True})
    for split in base["splits"]:
        for line in summary_lines(base, split)[:1]:
            typer.echo(line)
    typer.echo(f"stored as the baseline of {dv.ref} ({time.perf_counter() - t:.1f}s)")


def _model_stage(ws: Workspace, dv: DatasetVersion, train_minutes: float, seed: int) -> None:
    from detops.model.registry import get_model, list_models, set_alias
    from detops.model.train import TrainConfig
    from detops.model.workflow import register_run, train_run

    existing = [m for m in list_models(ws, "det") if m.lineage.get("dataset") == dv.ref]
    if existing:
        mv = existing[-1]
        _step(f"model: reusing {mv.ref} trained on {dv.ref}")
    else:
        t = _step(f"train the default detector on {dv.ref} for up to {train_minutes:g} min")
        from detops.cli.train import _EpochBar

        config = TrainConfig(time_budget_s=train_minutes * 60, seed=seed)
        with _EpochBar() as bar:
            run = train_run(ws, dv.ref, config, progress=bar, echo=typer.echo)
        typer.echo(
            f"run {run.id}: {len(run.metrics)} epochs in {run.duration_s / 60:.1f} min, "
            f"parity torch vs onnx ok ({time.perf_counter() - t:.0f}s)"
        )
        mv = register_run(ws, run.id, "det")
    if "production" not in mv.aliases:
        set_alias(ws, mv.ref, "production", actor="quickstart")
    mv = get_model(ws, "det@production")
    ev = mv.evaluation or {}
    c, ci, thr = ev.get("coco", {}), ev.get("ci") or {}, ev.get("at_threshold") or {}
    _step(f"{mv.ref} is det@production; evaluated on the val split through the ONNX runtime")

    def with_ci(key: str) -> str:
        r = ci.get(key)
        return f"{c[key]:.3f}" + (f" [{r['low']:.3f}, {r['high']:.3f}]" if r else "")

    typer.echo(
        f"mAP@0.5 {with_ci('AP50')}   mAP@[.5:.95] {with_ci('AP')}   "
        f"(COCO definitions, 95% bootstrap CI)"
    )
    if thr:
        typer.echo(
            f"at score >= {thr['score_threshold']}: precision {thr['precision']:.3f} "
            f"recall {thr['recall']:.3f} F1 {thr['f1']:.3f}"
        )
    typer.echo(
        f"latency {ev.get('ms_per_image', float('nan')):.2f} ms/image "
        "(decode + preprocess + ONNX Runtime + NMS, batch 8, this machine)"
    )
    from detops.data.baseline import beside_lines, hlp_beside

    hlp = hlp_beside(ws, ev.get("dataset"), ev.get("split"))
    if hlp is not None:
        typer.echo(f"{mv.ref} beside human-level performance:")
        for line in beside_lines(ev, hlp):
            typer.echo(f"  {line}")


def _serve_stage(root: Path, src: Path, port: int) -> None:
    from detops.serve.server import serve
    from detops.workspace import Workspace

    image = sorted((src / "images").iterdir())[0]
    _step(f"serve deployment {DEPLOYMENT!r} (det@production) on http://127.0.0.1:{port} "
          "(Ctrl-C stops it)")  # fmt: skip
    typer.echo("try, from another terminal:")
    typer.echo(
        f"  curl -s -X POST -H 'Content-Type: image/jpeg' --data-binary @{image} "
        f"http://127.0.0.1:{port}/v1/detect"
    )
    typer.echo(f"  docs: http://127.0.0.1:{port}/docs   metrics: http://127.0.0.1:{port}/metrics")
    serve(Workspace(root, flags={"serve.deployment": DEPLOYMENT, "serve.port": port}))
