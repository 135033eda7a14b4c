"""``detops serve``: the prediction server (FastAPI on uvicorn, the shared runtime underneath)."""

from __future__ import annotations

import typer

from detops.cli._common import WorkspaceOpt, open_workspace


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    model: str = typer.Option(
        None, "--model", help="NAME@ALIAS to follow (hot swap when it moves); serve.model."
    ),
    deployment: str = typer.Option(
        None,
        "--deployment",
        help="Serve a deployment (`detops deploy ...`): live, candidate, rollout; "
        "serve.deployment.",
    ),
    host: str = typer.Option(None, "--host", help="Interface to bind; serve.host."),
    port: int = typer.Option(None, "--port", help="TCP port; serve.port."),
    workers: int = typer.Option(None, "--workers", help="Server processes; serve.workers."),
    max_batch_size: int = typer.Option(
        None, "--max-batch-size", help="Rows per ONNX Runtime run; serve.max_batch_size."
    ),
    max_queue_delay_ms: float = typer.Option(
        None, "--max-queue-delay-ms", help="Wait to fill a batch; serve.max_queue_delay_ms."
    ),
    max_queue: int = typer.Option(
        None, "--max-queue", help="Queued requests before 503; serve.max_queue."
    ),
    timeout_ms: float = typer.Option(
        None, "--timeout-ms", help="Per-request deadline; serve.timeout_ms."
    ),
    batch_policy: str = typer.Option(
        None, "--batch-policy", help="auto | wait | greedy | off; serve.batch_policy."
    ),
    log_level: str = typer.Option(
        "warning",
        "--log-level",
        help="uvicorn's log level; the server's own lines (models loaded, swapped, rollout "
        "decisions) show unless error or critical.",
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
    workspace: str = WorkspaceOpt,
) -> None:
    """Serve a model: POST /v1/detect, /v2 (Open Inference Protocol), /metrics, /docs.

    Every option is also a detops.yaml `serve:` setting and a DETOPS_SERVE_* variable.
    """
    flags = {
        "serve.model": model,
        "serve.deployment": deployment,
        "serve.host": host,
        "serve.port": port,
        "serve.workers": workers,
        "serve.max_batch_size": max_batch_size,
        "serve.max_queue_delay_ms": max_queue_delay_ms,
        "serve.max_queue": max_queue,
        "serve.timeout_ms": timeout_ms,
        "serve.batch_policy": batch_policy,
    }
    ws = open_workspace(workspace, flags)
    from detops.serve.server import serve as run

    s = ws.settings.serve
    if model is not None and deployment is None:
        s.deployment = None  # --model on the command line beats serve.deployment from config
    if not s.model and not s.deployment:
        from detops.cli._common import fail

        fail(
            "no model to serve: pass --model NAME@ALIAS or --deployment NAME, or set "
            "serve.model in detops.yaml"
        )
    if s.deployment:
        from detops.serve.deployments import get

        get(ws, s.deployment)  # an unknown name fails here, naming the known ones
    what = f"deployment {s.deployment}" if s.deployment else s.model
    typer.echo(
        f"detops serve: {what} on http://{s.host}:{s.port} "
        f"(workers {s.workers}, max batch {s.max_batch_size}, policy {s.batch_policy}); "
        f"docs at /docs",
        err=True,
    )
    run(ws, log_level=log_level, access_log=access_log)
