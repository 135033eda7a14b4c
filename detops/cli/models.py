"""``detops models …`` and ``detops runs …``: the registry and tracked runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from detops.cli._common import JsonOpt, WorkspaceOpt, fail, open_workspace, print_json

models_app = typer.Typer(
    help="Model registry: register, alias, list, show, compare, card.", no_args_is_help=True
)
runs_app = typer.Typer(help="Tracked training runs: list, show, compare.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(models_app, name="models")
    app.add_typer(runs_app, name="runs")


# -- models ------------------------------------------------------------------------------------
@models_app.command("register")
def models_register(
    run: str = typer.Argument(None, help="A run id whose exported ONNX to register."),
    name: str = typer.Option(..., "--name", help="Model name; the new version is NAME@vN."),
    onnx: Path = typer.Option(None, "--onnx", help="Bring your own ONNX file (with --spec)."),
    spec: Path = typer.Option(None, "--spec", help="Spec YAML for --onnx."),
    description: str = typer.Option(None, "--description"),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Register a run's model, or bring-your-own ONNX + spec, as NAME@vN with lineage."""
    from detops.model.registry import register_model
    from detops.model.spec import ModelSpec

    ws = open_workspace(workspace)
    if (run is None) == (onnx is None):
        fail("give either a RUN id or --onnx FILE --spec SPEC.yaml")
    if onnx is not None:
        if spec is None:
            fail("--onnx needs --spec SPEC.yaml (class names, input size, pre/post-processing)")
        if not onnx.is_file():
            fail(f"{onnx}: no such file")
        mv = register_model(
            ws,
            name,
            onnx,
            ModelSpec.load(spec),
            description=description,
            lineage={"source": "onnx", "onnx_file": str(onnx.resolve())},
        )
    else:
        from detops.model.workflow import register_run

        mv = register_run(ws, run, name, description=description)
    if as_json:
        print_json(mv.to_dict())
    else:
        typer.echo(
            f"registered {mv.ref} (onnx {mv.onnx[:12]}"
            + (f", run {mv.run_id}" if mv.run_id else "")
            + ")"
        )


@models_app.command("alias")
def models_alias(
    ref: str = typer.Argument(..., help="NAME@vN"),
    alias: str = typer.Argument(..., help="Alias name, e.g. production."),
    workspace: str = WorkspaceOpt,
) -> None:
    """Point NAME@ALIAS at a version (atomic, recorded in the alias history)."""
    from detops.model.registry import set_alias

    ws = open_workspace(workspace)
    previous, new = set_alias(ws, ref, alias)
    name = ref.split("@", 1)[0]
    was = f"v{previous}" if previous is not None else "unset"
    typer.echo(f"{name}@{alias}: {was} -> v{new}")


@models_app.command("list")
def models_list(
    name: str = typer.Argument(None),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """List model versions with aliases and headline metrics."""
    from detops.model.registry import list_models

    ws = open_workspace(workspace)
    rows = list_models(ws, name)
    if as_json:
        print_json([m.to_dict() for m in rows])
        return
    if not rows:
        typer.echo("no models yet: `detops train DATASET@vN` then `detops models register RUN`")
        return
    typer.echo(f"{'model':<24} {'AP50':>6} {'AP':>6}  {'aliases':<20} {'run':<12} dataset")
    for m in rows:
        c = (m.evaluation or {}).get("coco", {})
        typer.echo(
            f"{m.ref:<24} {_num(c.get('AP50')):>6} {_num(c.get('AP')):>6}  "
            f"{','.join(m.aliases) or '-':<20} {m.run_id or '-':<12} "
            f"{m.lineage.get('dataset', '-')}"
        )


def _metric_rows(
    name_a: str, ev_a: dict[str, Any] | None, name_b: str, ev_b: dict[str, Any] | None
) -> list[dict[str, Any]]:
    """The COCO numbers of two evaluations side by side, with ``b - a``."""
    ca, cb = (ev_a or {}).get("coco", {}), (ev_b or {}).get("coco", {})
    return [
        {
            "metric": k,
            name_a: ca.get(k),
            name_b: cb.get(k),
            "delta": None if ca.get(k) is None or cb.get(k) is None else cb[k] - ca[k],
        }
        for k in dict.fromkeys([*ca, *cb])
    ]


def _num(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}"


@models_app.command("show")
def models_show(
    ref: str = typer.Argument(..., help="NAME@vN or NAME@ALIAS"),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a version: spec, lineage, evaluation, aliases and alias history."""
    from detops.model.registry import alias_history, get_model

    ws = open_workspace(workspace)
    m = get_model(ws, ref)
    out = {**m.to_dict(), "alias_history": alias_history(ws, m.name)}
    if as_json:
        print_json(out)
        return
    typer.echo(f"{m.ref}  aliases: {', '.join(m.aliases) or '-'}")
    typer.echo(f"  onnx:     {m.onnx}")
    typer.echo(f"  classes:  {', '.join(m.spec['class_names'])}")
    typer.echo(
        f"  input:    {m.spec['input_width']}x{m.spec['input_height']} {m.spec['resize']}, "
        f"adapter {m.spec['adapter']}, score >= {m.spec['score_threshold']}"
    )
    for k, v in m.lineage.items():
        typer.echo(f"  {k + ':':<9} {v}")
    c = (m.evaluation or {}).get("coco")
    if c:
        typer.echo("  eval:     " + "  ".join(f"{k}={v:.3f}" for k, v in c.items()))


@models_app.command("compare")
def models_compare(
    a: str = typer.Argument(...),
    b: str = typer.Argument(...),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Metrics of two versions side by side."""
    from detops.model.registry import get_model

    ws = open_workspace(workspace)
    ma, mb = get_model(ws, a), get_model(ws, b)
    rows = _metric_rows(ma.ref, ma.evaluation, mb.ref, mb.evaluation)
    if as_json:
        print_json(
            {
                "a": ma.ref,
                "b": mb.ref,
                "metrics": rows,
                "lineage": {ma.ref: ma.lineage, mb.ref: mb.lineage},
            }
        )
        return
    typer.echo(f"{'metric':<8} {ma.ref:>16} {mb.ref:>16} {'delta':>8}")
    for r in rows:
        d = r["delta"]
        typer.echo(
            f"{r['metric']:<8} {_num(r[ma.ref]):>16} {_num(r[mb.ref]):>16} "
            f"{'-' if d is None else f'{d:+.3f}':>8}"
        )


@models_app.command("card")
def models_card(
    ref: str = typer.Argument(...),
    out: Path = typer.Option(None, "--out", help="Folder for card.md, card.html and figures."),
    workspace: str = WorkspaceOpt,
) -> None:
    """Write a model card (markdown and HTML): classes, metrics with CIs, PR curve, latency."""
    from detops.model.card import write_model_card

    ws = open_workspace(workspace)
    paths = write_model_card(ws, ref, out)
    for p in paths:
        typer.echo(f"wrote {p}")


# -- runs --------------------------------------------------------------------------------------
@runs_app.command("list")
def runs_list(workspace: str = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """List training runs."""
    from detops.model.tracking import list_runs

    ws = open_workspace(workspace)
    rows = list_runs(ws)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    if not rows:
        typer.echo("no runs yet: `detops train DATASET@vN`")
        return
    typer.echo(
        f"{'run':<12} {'status':<9} {'dataset':<18} {'epochs':>6} {'AP50':>6} {'AP':>6} "
        f"{'minutes':>7}  started"
    )
    for r in rows:
        c = (r.evaluation or {}).get("coco", {})
        typer.echo(
            f"{r.id:<12} {r.status:<9} {r.dataset or '-':<18} {len(r.metrics):>6} "
            f"{_num(c.get('AP50')):>6} {_num(c.get('AP')):>6} "
            f"{(r.duration_s or 0) / 60:>7.1f}  {str(r.started_at)[:19]}"
        )


@runs_app.command("show")
def runs_show(
    run: str = typer.Argument(...), workspace: str = WorkspaceOpt, as_json: bool = JsonOpt
) -> None:
    """Show one run: params, code, data, environment, metrics per epoch, artifacts."""
    from detops.model.tracking import get_run

    ws = open_workspace(workspace)
    r = get_run(ws, run)
    if as_json:
        print_json(r.to_dict())
        return
    typer.echo(f"run {r.id}  {r.status}  dataset {r.dataset} ({(r.dataset_digest or '')[:12]})")
    typer.echo(f"  params:  {r.params}")
    git = r.code.get("project_git") or r.code.get("detops_git") or {}
    typer.echo(
        f"  code:    detops {r.code.get('package_version')} git {str(git.get('sha'))[:12]}"
        f"{' (dirty)' if git.get('dirty') else ''}"
    )
    env = r.environment
    typer.echo(
        f"  env:     python {env.get('python')} torch {env.get('torch')} "
        f"onnxruntime {env.get('onnxruntime')} cpu {env.get('cpu')}"
    )
    for m in r.metrics:
        typer.echo(
            "  epoch "
            + "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items()
            )
        )
    c = (r.evaluation or {}).get("coco")
    if c:
        typer.echo("  final:   " + "  ".join(f"{k}={v:.3f}" for k, v in c.items()))
    for role, digest in r.artifacts.items():
        typer.echo(f"  artifact {role}: {digest[:12]}")
    if r.error:
        typer.echo(f"  error:   {r.error}")


@runs_app.command("compare")
def runs_compare(
    a: str = typer.Argument(...),
    b: str = typer.Argument(...),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Params and final metrics of two runs side by side."""
    from detops.model.tracking import get_run

    ws = open_workspace(workspace)
    ra, rb = get_run(ws, a), get_run(ws, b)
    params = sorted(set(ra.params) | set(rb.params))
    out: dict[str, Any] = {
        "params": {
            k: {ra.id: ra.params.get(k), rb.id: rb.params.get(k)}
            for k in params
            if ra.params.get(k) != rb.params.get(k)
        },
        "metrics": _metric_rows(ra.id, ra.evaluation, rb.id, rb.evaluation),
        "dataset": {ra.id: ra.dataset, rb.id: rb.dataset},
        "duration_s": {ra.id: ra.duration_s, rb.id: rb.duration_s},
    }
    if as_json:
        print_json(out)
        return
    typer.echo(f"{'':<16} {ra.id:>14} {rb.id:>14}")
    typer.echo(f"{'dataset':<16} {ra.dataset or '-':>14} {rb.dataset or '-':>14}")
    for k, v in out["params"].items():
        typer.echo(f"{k:<16} {v[ra.id]!s:>14} {v[rb.id]!s:>14}")
    for r in out["metrics"]:
        typer.echo(f"{r['metric']:<16} {_num(r[ra.id]):>14} {_num(r[rb.id]):>14}")
