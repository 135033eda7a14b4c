"""The server as a plain ASGI app assembled from parts: routes, a middleware list, a router.

:func:`create_app` takes a ready :class:`~detops.serve.service.Service` (settings, router,
model host, prediction log, metrics); :func:`build_service` assembles one for a workspace and
the alias it follows. The app starts the service's background threads on start-up and stops
them on shutdown.

>>> from detops.config import ServeSettings
>>> from detops.serve.models import ModelHost
>>> from detops.serve.routing import LiveRouter
>>> from detops.serve.service import Service
>>> host = ModelHost("det@production", resolve=lambda: ("det", 1), load=None)
>>> app = create_app(Service(ServeSettings(), LiveRouter(host), host=host))
>>> paths = sorted(p for p in app.openapi()["paths"] if p.startswith("/v1"))
>>> paths  # doctest: +NORMALIZE_WHITESPACE
['/v1/detect', '/v1/detect/batch', '/v1/models', '/v1/review', '/v1/review/stats',
 '/v1/review/{review_id}', '/v1/review/{review_id}/image']
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware import Middleware
from fastapi.responses import Response

from detops.config import ServeSettings
from detops.serve import api, deploy_api, oip, ops, review_api
from detops.serve.middleware import ServeMiddleware, error_json
from detops.serve.service import HTTPProblem, Service


def _detect_route() -> Any:
    """The FastAPI route of ``POST /v1/detect`` (its ``path`` labels the metrics)."""
    return next(
        r for r in api.router.routes
        if getattr(r, "path", None) == "/v1/detect" and "POST" in getattr(r, "methods", ())
    )  # fmt: skip


def _problem_response(p: HTTPProblem) -> Response:
    return Response(
        error_json(p.detail, p.code),
        status_code=p.status,
        media_type="application/json",
        headers=p.headers,
    )


def create_app(service: Service, *, middleware: list[Middleware] | None = None) -> FastAPI:
    """A FastAPI app serving ``service``; extra ``middleware`` run inside the built-in one."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    settings = service.settings
    stack = [
        Middleware(
            ServeMiddleware,
            limit_bytes=int(settings.body_limit_mb * 1024 * 1024),
            metrics=service.metrics,
        ),
        *(middleware or []),
        # innermost, so that extra middleware sees /v1/detect as any other request
        Middleware(api.DetectFastPath, service=service, route=_detect_route()),
    ]
    from detops import __version__

    app = FastAPI(
        title="detops prediction server",
        version=__version__,
        description="Typed object detection (/v1), Open Inference Protocol v2 (/v2), "
        "health, readiness and Prometheus metrics.",
        middleware=stack,
        lifespan=lifespan,
    )
    app.state.service = service
    for r in (api.router, oip.router, ops.router, review_api.router, deploy_api.router):
        app.include_router(r)

    @app.exception_handler(HTTPProblem)
    async def _problem(request: Request, exc: HTTPProblem) -> Response:
        return _problem_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        service.metrics.reject("bad_request")
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        where = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors)
        body = {"detail": f"invalid request: {where}", "code": "bad_request", "errors": errors}
        return api.json_response(body, 422)

    return app


def build_service(
    ws: Any, follow: str | None = None, settings: ServeSettings | None = None
) -> Service:
    """The service of a workspace: follows ``follow`` (default: the deployment
    ``serve.deployment`` if set, else ``serve.model``)."""
    from detops.serve.metrics import ServeMetrics
    from detops.serve.models import ModelHost
    from detops.serve.predlog import PredictionLog, sample_purger, store_writer
    from detops.serve.review import ReviewQueue
    from detops.serve.routing import LiveRouter

    settings = settings or ws.settings.serve
    deployment = settings.deployment if follow is None else None
    follow = follow or settings.model
    if not follow and not deployment:
        from detops.errors import ConfigError

        raise ConfigError(
            "no model to serve: pass --model NAME@ALIAS or set serve.model in detops.yaml"
        )
    metrics = ServeMetrics(settings.max_batch_size)
    ws.db  # open (and migrate) the store before threads use it  # noqa: B018
    router: Any
    if deployment:
        from detops.serve.rollout import deployment_router

        router = deployment_router(ws, deployment, settings, metrics)
        host = router.host
    else:
        assert follow is not None
        host = ModelHost.for_workspace(ws, follow, settings, metrics)
        router = LiveRouter(host)
    log = PredictionLog(
        store_writer(ws, settings.sample_retention_days, metrics),
        max_queue=settings.log_queue,
        batch=settings.log_batch,
        flush_ms=settings.log_flush_ms,
        sample_rate=settings.sample_rate,
        purge=sample_purger(ws),  # also when sampling is off now: older samples still expire
        metrics=metrics,
    )
    review = ReviewQueue.from_settings(ws, settings, metrics)
    service = Service(settings, router, host=host, log=log, metrics=metrics, review=review)
    service.workspace = ws
    if deployment:
        router.bind(service)  # its rollout agent and shadow runner start and stop with it
    return service
