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


def comma_list(value: str | None, option: str, example: str) -> list[str] | None:
    """The names of a comma-separated option (``None`` when it was not given); an option given
    with no name in it is an error naming the option and an example."""
    if value is None:
        return None
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        fail(f"{option} {value!r}: expected comma-separated names like {example!r}")
    return names


def print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def open_workspace(workspace: str | None, flags: dict[str, Any] | None = None) -> Any:
    from detops.workspace import Workspace

    return Workspace.find(workspace, flags=flags)


class ProgressBar:
    """A rich progress bar on stderr driven by ``callback(done, total)``; silent when not a TTY."""

    def __init__(self, description: str, *, enabled: bool | None = None) -> None:
        self.description = description
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
