"""``/v1``: the typed detection API (one image, a batch of images, the models served)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.background import BackgroundTask
from starlette.datastructures import UploadFile

from detops.serve.middleware import BodyTooLarge, error_json
from detops.serve.schemas import BatchResponse, DetectResponse, ErrorBody, ModelStatus
from detops.serve.service import MEDIA_ALIASES, MEDIA_TYPES, HTTPProblem, Service

router = APIRouter(tags=["detection"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "empty, corrupt or truncated image (the message names the problem)",
        401: "a bearer token is required",
        403: "the bearer token is not valid",
        413: "body over serve.body_limit_mb, or image over serve.max_pixels",
        415: "unsupported media type",
        503: "overloaded (Retry-After) or not ready",
        504: "no answer within serve.timeout_ms",
    }.items()
}

ScoreQuery = Query(None, ge=0.0, le=1.0, description="keep detections scoring at least this")
MaxDetQuery = Query(None, ge=1, le=10_000, description="keep at most this many detections")


def json_bytes(body: Any) -> bytes:
    """``body`` as compact JSON. orjson encodes a detection response (57 boxes, 8 KB) in 11 us
    against 160 us for ``json.dumps`` (this 2-vCPU VM; 220 against ~15 us in the server, on
    caches a model run has just flushed), the largest single cost a c=1 request paid on top of
    the model's own pipeline. Floats round-trip exactly (shortest repr, as ``json``); NaN and
    infinities become null (``json`` would write the invalid tokens NaN / Infinity). What orjson
    refuses (an int beyond 64 bits) falls back to ``json``."""
    try:
        return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()


def json_response(
    body: Any, status: int = 200, background: BackgroundTask | None = None
) -> Response:
    return Response(
        json_bytes(body), status_code=status, media_type="application/json", background=background
    )


def _media_type(value: str | None) -> str:
    base = (value or "").split(";", 1)[0].strip().lower()
    return MEDIA_ALIASES.get(base, base)


def _unsupported(media: str) -> HTTPProblem:
    return HTTPProblem(
        415,
        "unsupported_media_type",
        f"unsupported media type {media or '(none)'!r}: send the image as the body with "
        f"Content-Type {', '.join(MEDIA_TYPES)}, or as multipart/form-data field 'image'",
    )


def _check_part(part: UploadFile) -> None:
    media = _media_type(part.content_type)
    if media and media not in MEDIA_TYPES and media != "application/octet-stream":
        raise _unsupported(media)


async def _form(request: Request) -> Any:
    try:
        return await request.form(max_files=256, max_fields=64)
    except (HTTPProblem, BodyTooLarge):
        raise
    except Exception as e:
        raise HTTPProblem(400, "bad_request", f"malformed multipart body: {e}") from e


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


async def _image_bytes(request: Request) -> bytes:
    media = _media_type(request.headers.get("content-type"))
    if media == "multipart/form-data":
        form = await _form(request)
        try:
            part = form.get("image")
            if not isinstance(part, UploadFile):
                raise HTTPProblem(
                    400,
                    "bad_request",
                    "multipart body has no file field 'image' (send -F image=@x.jpg)",
                )
            _check_part(part)
            return await part.read()
        finally:
            await form.close()
    if media not in MEDIA_TYPES:
        raise _unsupported(media)
    return await request.body()


@router.post(
    "/v1/detect",
    response_model=DetectResponse,
    responses=_ERRORS,
    summary="Detect objects in one image",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                **{m: {"schema": {"type": "string", "format": "binary"}} for m in MEDIA_TYPES},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"image": {"type": "string", "format": "binary"}},
                        "required": ["image"],
                    }
                },
            },
        }
    },
)
async def detect(
    request: Request,
    score_threshold: float | None = ScoreQuery,
    max_detections: int | None = MaxDetQuery,
) -> Response:
    """The body is the image (Content-Type image/jpeg, png, webp or bmp) or a multipart field
    ``image``. Boxes are ``[x1, y1, x2, y2]`` in pixels of the image as sent."""
    svc = _service(request)
    state = request.scope["state"]
    try:
        svc.check_detect_token(request.headers.get("authorization"), "/v1/detect")
        data = await _image_bytes(request)
    except HTTPProblem as p:
        svc.metrics.reject(p.code)
        raise
    body, after = await _detect_one(
        svc, data, state, request.headers.get("x-client-key"), score_threshold, max_detections
    )
    return json_response(body, background=BackgroundTask(_defer, svc, after) if after else None)


async def _detect_one(
    svc: Service,
    data: bytes,
    state: dict[str, Any],
    client_key: str | None,
    score_threshold: float | None = None,
    max_detections: int | None = None,
) -> tuple[dict[str, Any], list[Callable[[], None]]]:
    """One image of ``POST /v1/detect`` (the FastAPI route's and the fast path's): the response
    body, and the work to run once it is sent (the prediction-log record, see Service.detect)."""
    after: list[Callable[[], None]] = []
    body = await svc.detect(
        data,
        request_id=state["request_id"],
        started=state["started"],
        score_threshold=score_threshold,
        max_detections=max_detections,
        state=state,
        client_key=client_key,
        after=after,
    )
    return body, after


class DetectFastPath:
    """Pure ASGI: ``POST /v1/detect`` with a raw image body (a ``Content-Type`` of
    ``MEDIA_TYPES``) and no query string is answered here, without FastAPI's routing, request
    object and parameter machinery; everything else (multipart bodies, query parameters, other
    media types, other paths) goes on to the FastAPI route :func:`detect`, which stays the
    reference and the OpenAPI schema. Both call the same ``Service.detect`` and answer alike
    (tests compare them). Why: at c=1 with wrk on this 2-vCPU VM the p50 was 10.03 against
    9.33 ms (best of 4 alternating rounds of 8 s; lower in 3 of them, level in one) with the
    FastAPI path against a prototype of this one, the in-process pipeline 8.8-9.0 ms: routing
    over every route, the dependency solving that re-inspects the query parameters'
    annotations on each request, the request and response objects. It must run inside
    ``ServeMiddleware`` (request id, body limit, metrics)."""

    def __init__(self, app: Any, *, service: Service, route: Any) -> None:
        self.app = app
        self.service = service
        self.route = route  # what the router would put in scope["route"] (the metrics' label)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"] != "/v1/detect"
            or scope["query_string"]
        ):
            await self.app(scope, receive, send)
            return
        headers: dict[bytes, bytes] = {}
        for k, v in scope["headers"]:
            headers.setdefault(k, v)  # the first of repeated headers, as Starlette's get
        media = _media_type(headers.get(b"content-type", b"").decode("latin-1"))
        if media not in MEDIA_TYPES:
            await self.app(scope, receive, send)  # multipart, or a 415 from the route
            return
        scope["route"] = self.route
        svc, state = self.service, scope["state"]
        auth = headers.get(b"authorization")
        try:
            svc.check_detect_token(auth.decode("latin-1") if auth else None, "/v1/detect")
        except HTTPProblem as p:
            svc.metrics.reject(p.code)
            await _send_json(send, p.status, error_json(p.detail, p.code), p.headers)
            return
        chunks = []
        while True:  # BodyTooLarge from ServeMiddleware's receive goes back to it (413)
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # gone before its body arrived: nobody to answer
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        key = headers.get(b"x-client-key")
        try:
            body, after = await _detect_one(
                svc, b"".join(chunks), state, key.decode("latin-1") if key is not None else None
            )
        except HTTPProblem as p:  # counted by Service.detect
            await _send_json(send, p.status, error_json(p.detail, p.code), p.headers)
            return
        await _send_json(send, 200, json_bytes(body))
        svc.defer(after)


async def _send_json(
    send: Any, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    raw = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _defer(svc: Service, calls: list[Callable[[], None]]) -> None:
    """A response's background work, handed to ``Service.defer`` once its last byte is sent: a
    coroutine, so Starlette runs it on the event loop instead of in a worker thread."""
    svc.defer(calls)


@router.post(
    "/v1/detect/batch",
    response_model=BatchResponse,
    responses=_ERRORS,
    summary="Detect objects in several images (multipart), one result each, in order",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "images": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                    }
                }
            },
        }
    },
)
async def detect_batch(
    request: Request,
    score_threshold: float | None = ScoreQuery,
    max_detections: int | None = MaxDetQuery,
) -> Response:
    """Every file field of the multipart body (any field name, e.g. repeated ``images``) is one
    image; a bad image fails only its own entry (its ``status`` and ``error``)."""
    svc = _service(request)
    state = request.scope["state"]
    rid = state["request_id"]
    try:
        svc.check_detect_token(request.headers.get("authorization"), "/v1/detect/batch")
        if _media_type(request.headers.get("content-type")) != "multipart/form-data":
            raise _unsupported(_media_type(request.headers.get("content-type")))
        form = await _form(request)
        try:
            parts = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
            if not parts:
                raise HTTPProblem(400, "empty_body", "no image files in the multipart body")
            datas = [await part.read() for _, part in parts]
        finally:
            await form.close()
    except HTTPProblem as p:
        svc.metrics.reject(p.code)
        raise

    async def one(i: int, part: UploadFile, data: bytes) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i, "filename": part.filename}
        try:
            _check_part(part)
            item["result"] = await svc.detect(
                data,
                request_id=f"{rid[:56]}-{i}",
                started=time.perf_counter(),
                score_threshold=score_threshold,
                max_detections=max_detections,
                state=state,
                client_key=request.headers.get("x-client-key"),
                inline=len(parts) == 1,
            )
            item["status"] = 200
        except HTTPProblem as p:
            item["status"] = p.status
            item["error"] = {"detail": p.detail, "code": p.code}
        return item

    items = await asyncio.gather(
        *(one(i, part, data) for i, ((_, part), data) in enumerate(zip(parts, datas, strict=True)))
    )
    return json_response({"request_id": rid, "results": items})


@router.get("/v1/models", response_model=list[ModelStatus], summary="Models served and how")
async def models(request: Request) -> list[dict[str, Any]]:
    return model_statuses(_service(request))


def model_statuses(svc: Service) -> list[dict[str, Any]]:
    host = svc.host
    lm = host.current if host is not None else None
    if lm is None:
        return []
    return [
        {
            "name": lm.name,
            "version": lm.version,
            "ref": lm.ref,
            "ready": True,
            "batch_policy": lm.policy,
            "batch_gain": None if lm.gain is None else round(lm.gain, 3),
            "max_batch_size": lm.batcher.max_batch_size,
            "lanes": lm.batcher.lanes,
            "lane_gain": None if lm.lane_gain is None else round(lm.lane_gain, 3),
            "follows": host.follow if host else None,
        }
    ]
