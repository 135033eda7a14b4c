"""The ``detops`` command: one sub-command group per life-cycle stage.

Start-up stays fast: this module imports only typer; each command imports what it needs
(torch, onnxruntime, matplotlib, ...) inside its body.
"""

from __future__ import annotations

import importlib
import sys

import typer

from detops.cli._common import fail

app = typer.Typer(
    name="detops",
    help="Carry an object detector through its life cycle: data, model, deploy, monitor.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines ``register(app)``; add yours here.
COMMAND_MODULES = (
    "detops.cli.workspace",
    "detops.cli.data",
    "detops.cli.train",
    "detops.cli.models",
    "detops.cli.quickstart",
    "detops.cli.serve",
    "detops.cli.baseline",
    "detops.cli.deploy",
)

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def main() -> None:
    from detops.errors import DetopsError

    try:
        app()
    except DetopsError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        sys.exit(130)
