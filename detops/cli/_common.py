"""Helpers shared by the CLI modules: workspace option, JSON output, errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

WorkspaceOpt = typer.Option(
    None,
    "--workspace",
    "-w",
    help="Workspace folder (default: DETOPS_HOME, else the current folder upwards).",
    show_default=False,
)
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON.")


def fail(message: str, code: int = 2) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def open_workspace(workspace: str | None, flags: dict[str, Any] | None = None) -> Any:
    from detops.workspace import Workspace

    return Workspace.find(workspace, flags=flags)
