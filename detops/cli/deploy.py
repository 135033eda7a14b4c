"""``detops deploy …``: deployments, shadow, canary with gates and automatic rollback, blue-green.

Commands change the deployment in the store; every server serving it (``detops serve
--deployment NAME``) follows within ``rollout.poll_s``. The same actions are admin REST
endpoints under ``/admin/deployments``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from detops.cli._common import JsonOpt, WorkspaceOpt, open_workspace, print_json

deploy_app = typer.Typer(
    help="Roll a model out: shadow, canary with gates and automatic rollback, blue-green.",
    no_args_is_help=True,
)


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")


def _describe(dep: Any) -> str:
    what = f"deployment {dep.name}: {dep.state}, live {dep.live_ref}"
    if dep.candidate_ref:
        if dep.state == "shadowing":
            what += f", {dep.candidate_ref} in shadow on {dep.sample:.0%} of requests"
        elif dep.strategy == "canary":
            what += (
                f", {dep.candidate_ref} on {dep.share:.0%} of clients "
                f"(step {dep.step + 1}/{len(dep.steps)})"
            )
        elif dep.strategy == "bluegreen":
            colours = dep.colours
            what += (
                f" ({colours.get(dep.live_version, 'blue')}), {dep.candidate_ref} "
                f"({colours.get(dep.candidate_version, 'green')}) warm, no traffic"
            )
    elif dep.previous_version is not None and dep.state == "promoted":
        what += f" (previous v{dep.previous_version}: `detops deploy rollback {dep.name}`)"
    return what + f" [revision {dep.revision}]"


def _done(dep: Any, as_json: bool) -> None:
    if as_json:
        print_json(dep.to_dict())
    else:
        typer.echo(_describe(dep))


@deploy_app.command("create")
def create(
    name: str = typer.Argument(..., help="Deployment name."),
    model: str = typer.Option(..., "--model", help="MODEL@ALIAS (or MODEL@vN) served as live."),
    automation: str = typer.Option(
        None,
        "--automation",
        help="human_only | shadow | ai_assistance | partial | full (default: serve.automation).",
    ),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create a deployment serving MODEL@ALIAS; serve it with `detops serve --deployment NAME`."""
    from detops.serve import deployments as deps

    dep = deps.create(open_workspace(workspace), name, model, automation=automation)
    _done(dep, as_json)


@deploy_app.command("shadow")
def shadow(
    name: str = typer.Argument(...),
    candidate: str = typer.Argument(..., help="vN, N, MODEL@vN or MODEL@ALIAS."),
    sample: float = typer.Option(1.0, "--sample", help="Share of live requests copied (0..1]."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run CANDIDATE in shadow: it answers copies of live requests; clients never see it."""
    from detops.serve import deployments as deps

    _done(deps.start_shadow(open_workspace(workspace), name, candidate, sample=sample), as_json)


@deploy_app.command("canary")
def canary(
    name: str = typer.Argument(...),
    candidate: str = typer.Argument(..., help="vN, N, MODEL@vN or MODEL@ALIAS."),
    steps: str = typer.Option("1,5,25,50,100", "--steps", help="Traffic share per step, %."),
    step_min_requests: int = typer.Option(
        100, "--step-min-requests", help="Candidate requests before a step may advance."
    ),
    step_min_seconds: float = typer.Option(
        60.0, "--step-min-seconds", help="Seconds before a step may advance."
    ),
    gates: Path = typer.Option(None, "--gates", help="gates.yaml (thresholds; default built in)."),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Canary: CANDIDATE gets each step's share of clients; gates decide advance or rollback."""
    from detops.monitor.gates import load_gates
    from detops.serve import deployments as deps

    cfg = load_gates(gates)
    dep = deps.start_canary(
        open_workspace(workspace),
        name,
        candidate,
        steps=steps,
        min_requests=step_min_requests,
        min_seconds=step_min_seconds,
        gates=cfg,
    )
    _done(dep, as_json)


@deploy_app.command("bluegreen")
def bluegreen(
    name: str = typer.Argument(...),
    candidate: str = typer.Argument(..., help="vN, N, MODEL@vN or MODEL@ALIAS."),
    keep_warm: float = typer.Option(
        None, "--keep-warm", help="Seconds the old colour stays loaded (rollout.keep_warm_s)."
    ),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Blue-green: load CANDIDATE beside live; `promote` switches, `rollback` switches back."""
    from detops.serve import deployments as deps

    dep = deps.start_bluegreen(open_workspace(workspace), name, candidate, keep_warm_s=keep_warm)
    _done(dep, as_json)


def _simple(action: str, doc: str) -> None:
    def command(
        name: str = typer.Argument(...),
        workspace: str = WorkspaceOpt,
        as_json: bool = JsonOpt,
    ) -> None:
        from detops.serve import deployments as deps

        _done(getattr(deps, action)(open_workspace(workspace), name), as_json)

    command.__doc__ = doc
    deploy_app.command(action)(command)


_simple("promote", "Make the candidate live now (blue-green: the switch; canary: skip the rest).")
_simple("rollback", "Take all traffic from the candidate, or switch back after a promotion.")
_simple("pause", "Hold a canary at its step until `resume` (a failed gate still rolls back).")
_simple("resume", "Continue a paused canary; the step's clock starts again.")


@deploy_app.command("automation")
def automation(
    name: str = typer.Argument(...),
    level: str = typer.Argument(
        ..., help="human_only | shadow | ai_assistance | partial | full | default"
    ),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Set the deployment's degree of automation (`default`: each server's serve.automation)."""
    from detops.serve import deployments as deps

    dep = deps.set_automation(
        open_workspace(workspace), name, None if level == "default" else level
    )
    _done(dep, as_json)


@deploy_app.command("list")
def list_(workspace: str = WorkspaceOpt, as_json: bool = JsonOpt) -> None:
    """Every deployment and its state."""
    from detops.serve import deployments as deps

    found = deps.list_deployments(open_workspace(workspace))
    if as_json:
        print_json([d.to_dict() for d in found])
        return
    if not found:
        typer.echo("no deployments; create one with `detops deploy create NAME --model M@ALIAS`")
    for d in found:
        typer.echo(_describe(d))


def _event_line(e: dict[str, Any]) -> str:
    at = str(e["at"])[:23].replace("T", " ")
    cand = f" candidate v{e['candidate_version']}" if e.get("candidate_version") else ""
    step = f" step {e['step']}" if e["kind"] in ("advance", "hold", "canary") else ""
    moved = f"{e['from_state'] or '-'} -> {e['to_state']}"
    line = f"{at}  {e['kind']:<10} {moved:<30} live v{e['live_version']}{cand}{step}"
    line += f"  by {e['actor']}"
    if e.get("reason"):
        line += f"\n    {e['reason']}"
    return line


@deploy_app.command("status")
def status(
    name: str = typer.Argument(...),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """State, versions, traffic, the controller's lease and the last decisions."""
    from detops.serve import deployments as deps
    from detops.store.db import utcnow

    ws = open_workspace(workspace)
    dep = deps.get(ws, name)
    events = deps.history(ws, name, limit=5)
    lease = deps.read_lease(ws, f"rollout:{name}")
    controller = None
    if lease is not None:
        controller = {
            "holder": lease.holder,
            "expires_at": lease.expires_at.isoformat(),
            "valid": lease.expires_at > utcnow(),
        }
    if as_json:
        print_json({**dep.to_dict(), "controller": controller, "events": events})
        return
    typer.echo(_describe(dep))
    typer.echo(
        f"  automation {dep.automation or 'from serve.automation'}; created "
        f"{str(dep.created_at)[:19]}, updated {str(dep.updated_at)[:19]}"
    )
    if dep.strategy == "canary" and dep.steps:
        typer.echo(
            f"  steps {', '.join(f'{s:g}%' for s in dep.steps)}; each needs "
            f"{dep.min_requests} requests and {dep.min_seconds:g} s and every gate passing"
        )
    if controller is not None:
        state = "valid" if controller["valid"] else "expired"
        typer.echo(f"  controller {controller['holder']} (lease {state})")
    else:
        typer.echo("  controller: none yet (no server serves this deployment)")
    typer.echo("  last events:")
    for e in events:
        typer.echo("    " + _event_line(e).replace("\n", "\n    "))


@deploy_app.command("history")
def history(
    name: str = typer.Argument(...),
    workspace: str = WorkspaceOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Every event: who or what decided, when, why, on which measured values (--json)."""
    from detops.serve import deployments as deps

    events = deps.history(open_workspace(workspace), name)
    if as_json:
        print_json(events)
        return
    for e in events:
        typer.echo(_event_line(e))
