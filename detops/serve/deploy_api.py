"""``/admin/deployments``: the ``detops deploy`` actions over HTTP (bearer token required).

=======  ==============================================  ========================================
method   path                                            body / answer
=======  ==============================================  ========================================
GET      ``/admin/deployments``                          every deployment
POST     ``/admin/deployments``                          ``{name, model, automation?}``
GET      ``/admin/deployments/{name}``                   the deployment, its last events and,
                                                         when this server serves it, this
                                                         replica's view (plan, lease, loaded)
GET      ``/admin/deployments/{name}/history``           every event
POST     ``/admin/deployments/{name}/shadow``            ``{candidate, sample?}``
POST     ``/admin/deployments/{name}/canary``            ``{candidate, steps?, step_min_requests?,
                                                         step_min_seconds?, gates?}``
POST     ``/admin/deployments/{name}/bluegreen``         ``{candidate, keep_warm_s?}``
POST     ``/admin/deployments/{name}/promote``           (none)
POST     ``/admin/deployments/{name}/rollback``          (none)
POST     ``/admin/deployments/{name}/pause``             (none)
POST     ``/admin/deployments/{name}/resume``            (none)
POST     ``/admin/deployments/{name}/automation``        ``{level}``
=======  ==============================================  ========================================

A change made through a replica that serves the deployment takes effect there at once; the
other replicas follow within ``rollout.poll_s``. The actor recorded is ``api``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from detops.errors import (
    DeploymentExists,
    GatesConfigError,
    InvalidReference,
    InvalidTransition,
    NotFound,
    StaleDeployment,
)
from detops.serve import deployments as deps
from detops.serve.api import json_response
from detops.serve.service import HTTPProblem, Service

router = APIRouter(prefix="/admin/deployments", tags=["deployments"])

ACTOR = "api"


class _Body(BaseModel):
    # NaN or Infinity (Python's JSON reader accepts both) make no sense for a share, a count or a
    # time, and the store's JSON columns cannot hold them on every database
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CreateBody(_Body):
    name: str
    model: str = Field(description="MODEL@ALIAS (or MODEL@vN) to serve as live")
    automation: str | None = None


class ShadowBody(_Body):
    candidate: str
    sample: float = Field(1.0, gt=0, le=1)


class CanaryBody(_Body):
    candidate: str
    steps: list[float] | str = list(deps.DEFAULT_STEPS)
    step_min_requests: int = Field(deps.DEFAULT_MIN_REQUESTS, ge=1)
    step_min_seconds: float = Field(deps.DEFAULT_MIN_SECONDS, ge=0)
    gates: dict[str, Any] | None = None


class BlueGreenBody(_Body):
    candidate: str
    keep_warm_s: float | None = Field(None, ge=0)


class AutomationBody(_Body):
    level: str | None


def _service(request: Request) -> Service:
    svc: Service = request.app.state.service
    svc.authorize(request.headers.get("authorization"), "admin endpoints")
    if svc.workspace is None:
        raise HTTPProblem(404, "bad_request", "this server has no store to keep deployments in")
    return svc


def _agent(svc: Service, name: str) -> Any:
    agent = getattr(svc.router, "agent", None)
    return agent if agent is not None and agent.name == name else None


async def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except NotFound as e:  # the deployment, or a candidate model version
        raise HTTPProblem(404, "not_found", str(e)) from e
    # StaleDeployment: another actor changed it at the same moment: theirs stands
    except (DeploymentExists, StaleDeployment, InvalidTransition) as e:
        raise HTTPProblem(409, "conflict", str(e)) from e
    except (GatesConfigError, InvalidReference) as e:
        raise HTTPProblem(422, "conflict", str(e)) from e


async def _apply(
    request: Request, action: Any, name: str, *args: Any, decision: str | None = None, **kw: Any
) -> Response:
    """``action(workspace, name, *args, actor="api", **kw)``: this replica applies it at once."""
    svc = _service(request)
    dep: deps.Deployment = await _call(action, svc.workspace, name, *args, actor=ACTOR, **kw)
    agent = _agent(svc, dep.name)
    if agent is not None:
        agent.apply(dep)  # this replica at once; the others within rollout.poll_s
    if decision is not None:
        svc.metrics.rollout_decisions.labels(decision, "manual").inc()
    return json_response(dep.to_dict())


@router.get("", summary="Every deployment")
async def list_all(request: Request) -> Response:
    svc = _service(request)
    found = await _call(deps.list_deployments, svc.workspace)
    return json_response([d.to_dict() for d in found])


@router.post("", summary="Create a deployment", status_code=201)
async def create(body: CreateBody, request: Request) -> Response:
    svc = _service(request)
    dep = await _call(
        deps.create, svc.workspace, body.name, body.model, automation=body.automation, actor=ACTOR
    )
    return json_response(dep.to_dict(), 201)


@router.get("/{name}", summary="A deployment, its last events and this replica's view")
async def status(name: str, request: Request) -> Response:
    svc = _service(request)
    dep = await _call(deps.get, svc.workspace, name)
    events = await _call(deps.history, svc.workspace, name, 10)
    body = dep.to_dict()
    body["events"] = events
    agent = _agent(svc, name)
    body["replica"] = agent.status() if agent is not None else None
    return json_response(body)


@router.get("/{name}/history", summary="Every event of a deployment")
async def history(name: str, request: Request) -> Response:
    svc = _service(request)
    return json_response(await _call(deps.history, svc.workspace, name))


@router.post("/{name}/shadow", summary="Run a candidate in shadow")
async def shadow(name: str, body: ShadowBody, request: Request) -> Response:
    return await _apply(request, deps.start_shadow, name, body.candidate, sample=body.sample)


@router.post("/{name}/canary", summary="Start a canary with gates and automatic rollback")
async def canary(name: str, body: CanaryBody, request: Request) -> Response:
    return await _apply(
        request,
        deps.start_canary,
        name,
        body.candidate,
        steps=body.steps,
        min_requests=body.step_min_requests,
        min_seconds=body.step_min_seconds,
        gates=body.gates,
    )


@router.post("/{name}/bluegreen", summary="Load a candidate beside live, ready to switch")
async def bluegreen(name: str, body: BlueGreenBody, request: Request) -> Response:
    return await _apply(
        request, deps.start_bluegreen, name, body.candidate, keep_warm_s=body.keep_warm_s
    )


@router.post("/{name}/promote", summary="Make the candidate live (blue-green: the switch)")
async def promote(name: str, request: Request) -> Response:
    return await _apply(request, deps.promote, name, decision="promote")


@router.post("/{name}/rollback", summary="Stop the candidate, or switch back")
async def rollback(name: str, request: Request) -> Response:
    return await _apply(request, deps.rollback, name, decision="rollback")


@router.post("/{name}/pause", summary="Hold a canary at its step")
async def pause(name: str, request: Request) -> Response:
    return await _apply(request, deps.pause, name)


@router.post("/{name}/resume", summary="Continue a paused canary")
async def resume(name: str, request: Request) -> Response:
    return await _apply(request, deps.resume, name)


@router.post("/{name}/automation", summary="Set the deployment's degree of automation")
async def automation(name: str, body: AutomationBody, request: Request) -> Response:
    return await _apply(request, deps.set_automation, name, body.level)
