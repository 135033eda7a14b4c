"""``detops init`` and ``detops config show``."""

from __future__ import annotations

from pathlib import Path

import typer

from detops.cli._common import JsonOpt, WorkspaceOpt, open_workspace, print_json


def register(app: typer.Typer) -> None:
    app.command("init")(init)
    config_app = typer.Typer(help="Show the resolved settings.", no_args_is_help=True)
    config_app.command("show")(config_show)
    app.add_typer(config_app, name="config")


def init(path: Path = typer.Argument(Path("."), help="Folder to make a workspace.")) -> None:
    """Create detops.yaml (commented defaults) and .detops/ in PATH."""
    from detops.workspace import Workspace, init_workspace

    root = init_workspace(path)
    ws = Workspace(root)
    ws.db  # noqa: B018 - create and migrate the store now, not on first use
    ws.artifacts  # noqa: B018
    ws.close()
    typer.echo(f"workspace ready: {root}")
    typer.echo(f"  settings:  {root / 'detops.yaml'}")
    typer.echo(f"  store:     {ws.store_url}")
    typer.echo(f"  artifacts: {ws.artifacts.root}")


def config_show(workspace: str = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Print every resolved setting and where it came from (flag, env, detops.yaml, default)."""
    ws = open_workspace(workspace)
    rows = ws.config.rows()
    if as_json:
        print_json(
            {
                "workspace": str(ws.root),
                "settings": {k: {"value": v, "source": s} for k, v, s in rows},
            }
        )
        return
    typer.echo(f"workspace: {ws.root}")
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        typer.echo(f"  {key:<{width}}  {value!s:<24}  ({source})")
    typer.echo(f"  {'store (resolved URL)':<{width}}  {ws.store_url}")
