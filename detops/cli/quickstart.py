"""``detops quickstart``: the whole life cycle on one machine, as far as it is built.

Stage 1 (data): create a workspace, synthesise scenes labelled by two simulated annotators,
register them as a dataset version, validate it and print its statistics.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)


def _step(title: str) -> float:
    typer.secho(f"\n== {title}", bold=True)
    return time.perf_counter()


def quickstart(
    directory: Path = typer.Option(Path("detops-quickstart"), "--dir", help="Workspace folder."),
    n: int = typer.Option(400, "--n", min=20, help="Synthetic images to make."),
    seed: int = typer.Option(0, "--seed"),
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

    t = _step(f"synthesise {n} scenes, labelled by annotators A (careful) and B (loose boxes)")
    src = root / "sources" / f"shapes-{seed}"
    annotators = [AnnotatorSpec("A"), AnnotatorSpec("B", loose=0.3, jitter=0.1)]
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

    typer.secho(
        "\nnext: detops data show shapes   |   detops data stats shapes --plot s.png", fg="green"
    )
    typer.echo(f"(run commands inside {root} or pass --workspace {root})")
    ws.close()
