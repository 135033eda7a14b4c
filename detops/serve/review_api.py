"""``/v1/review``: the human review queue over HTTP (bearer token), and the review page.

``GET /v1/review?state=pending`` lists items, ``GET /v1/review/stats`` counts them with the
override rate, ``GET /v1/review/{id}`` is one item with its suggestions, ``GET
/v1/review/{id}/image`` its image, and ``POST /v1/review/{id}`` stores the corrected boxes.
``GET /review`` is the page a person reviews with (plain HTML and JavaScript served from
``detops/serve/static``; no build step, nothing fetched from elsewhere).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from detops.errors import InvalidFeedback, ReviewClosed, ReviewItemNotFound
from detops.serve.api import json_response
from detops.serve.review import ReviewQueue
from detops.serve.service import HTTPProblem, Service

router = APIRouter(tags=["review"])

STATIC = Path(__file__).resolve().parent / "static"
_ASSETS = {
    "review.js": "text/javascript; charset=utf-8",
    "review.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}


class CorrectedBox(BaseModel):
    model_config = ConfigDict(extra="forbid")
    box: list[float] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels of the image"
    )
    label: str = Field(min_length=1, max_length=200, description="class name")


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boxes: list[CorrectedBox] = Field(max_length=10_000, description="every object, as it is")
    reviewer: str = Field(min_length=1, max_length=200, description="who reviewed (annotator)")


def _queue(request: Request, what: str) -> ReviewQueue:
    svc: Service = request.app.state.service
    svc.authorize(request.headers.get("authorization"), what)
    if svc.review is None:
        raise HTTPProblem(404, "bad_request", "this server keeps no review queue (no store)")
    return svc.review


async def _call(fn: Any, *args: Any, closed: int = 409) -> Any:
    """Run a store call in a worker thread; review errors become HTTP refusals."""
    try:
        return await run_in_threadpool(fn, *args)
    except ReviewItemNotFound as e:
        raise HTTPProblem(404, "bad_request", str(e)) from None
    except ReviewClosed as e:
        raise HTTPProblem(closed, "bad_request", str(e)) from None


@router.get("/v1/review", summary="Review items, oldest first")
async def list_items(
    request: Request,
    state: Literal["pending", "done", "expired", "all"] = Query("pending"),
    limit: int = Query(50, ge=1, le=1000),
) -> Response:
    q = _queue(request, "/v1/review")
    items = await _call(q.items, None if state == "all" else state, limit)
    return json_response({"state": state, "items": items})


@router.get("/v1/review/stats", summary="Items per state, reviews and the override rate")
async def stats(request: Request) -> Response:
    q = _queue(request, "/v1/review")
    return json_response(await _call(q.stats))


@router.get("/v1/review/{review_id}", summary="One item: image size, classes, suggestions")
async def get_item(request: Request, review_id: str) -> Response:
    q = _queue(request, "/v1/review")
    return json_response(await _call(q.get, review_id))


@router.get("/v1/review/{review_id}/image", summary="The item's image, as it was sent")
async def get_image(request: Request, review_id: str) -> Response:
    q = _queue(request, "/v1/review")
    data, media = await _call(q.image, review_id, closed=410)  # purged by the retention
    return Response(data, media_type=media, headers={"Cache-Control": "private, no-store"})


@router.post(
    "/v1/review/{review_id}",
    summary="Submit the corrected boxes of a pending item",
    responses={
        404: {"description": "no such item"},
        409: {"description": "already reviewed or expired"},
        422: {"description": "a box outside the image, an unknown class, corners out of order"},
    },
)
async def submit(request: Request, review_id: str, feedback: Feedback) -> Response:
    q = _queue(request, "/v1/review")
    boxes = [b.model_dump() for b in feedback.boxes]
    try:
        out = await _call(q.submit, review_id, boxes, feedback.reviewer)
    except InvalidFeedback as e:
        request.app.state.service.metrics.reject("bad_request")
        body = {"detail": str(e), "code": "bad_request", "errors": e.errors}
        return json_response(body, 422)
    return json_response(out)


# -- the page --------------------------------------------------------------------------------
@cache
def _asset(name: str) -> bytes:
    return (STATIC / name).read_bytes()


@router.get("/review", summary="The review page (HTML)", include_in_schema=False)
async def page() -> Response:
    return Response(
        _asset("review.html"),
        media_type="text/html; charset=utf-8",
        headers={
            # everything the page needs comes from this server
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; "
            "style-src 'self'; script-src 'self'; connect-src 'self'",
            "Referrer-Policy": "no-referrer",
        },
    )


@router.get("/review/{name}", include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in _ASSETS:
        raise HTTPProblem(404, "bad_request", f"no review asset {name!r}")
    return Response(_asset(name), media_type=_ASSETS[name])
