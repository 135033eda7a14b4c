"""Operations endpoints: liveness, readiness, Prometheus metrics, admin (bearer token)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from detops.serve.api import json_response
from detops.serve.metrics import CONTENT_TYPE
from detops.serve.service import HTTPProblem, Service

router = APIRouter(tags=["operations"])


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Models loaded and warmed")
async def readyz(request: Request) -> Response:
    svc = _service(request)
    lm = svc.host.current if svc.host is not None else None
    if not svc.ready:
        err = svc.host.last_error if svc.host is not None else None
        return json_response({"ready": False, "error": err}, 503)
    return json_response({"ready": True, "model": lm.ref if lm else None})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=True)
async def metrics(request: Request) -> Response:
    svc = _service(request)
    svc.run_deferred()  # the answered requests' records count, however recent (Service.defer)
    return Response(svc.metrics.exposition(), media_type=CONTENT_TYPE)


@router.post("/admin/reload", summary="Check the followed alias now and swap if it moved")
async def reload(request: Request) -> dict[str, Any]:
    svc = _service(request)
    svc.authorize(request.headers.get("authorization"), "admin endpoints")
    if svc.host is None:
        raise HTTPProblem(400, "bad_request", "this server does not follow an alias")
    loop = asyncio.get_running_loop()
    try:
        swapped = await loop.run_in_executor(None, svc.host.check_now)
    except Exception as e:
        raise HTTPProblem(500, "model_error", f"reload of {svc.host.follow} failed: {e}") from e
    lm = svc.host.current
    return {"swapped": swapped, "version": lm.ref if lm else None, "follows": svc.host.follow}
