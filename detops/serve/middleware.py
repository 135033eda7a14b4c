"""Pure ASGI middleware: request id, body limit, in-flight gauge, request metrics.

The body limit is enforced twice: a ``Content-Length`` above it is refused before one byte of
the body is read, and the bytes actually received are counted (chunked uploads or a lying
header), the moment they pass the limit :class:`BodyTooLarge` is raised inside the handler's
read and turned into a 413. Before answering 413 the rest of a moderately oversized body is read
and discarded (up to ``DRAIN_FACTOR`` times the limit, as nginx's lingering close does): closing a
socket with unread data makes the kernel send a reset, and the client would see "connection
reset" instead of the 413. Clients that send ``Expect: 100-continue`` never send the body.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from detops.errors import ServeError

Scope = dict[str, Any]

DRAIN_FACTOR = 4

_ID_OK = re.compile(r"^[A-Za-z0-9._:\-]{1,64}$")


class BodyTooLarge(ServeError):
    pass


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    for k, v in headers:
        if k == b"x-request-id":
            rid = v.decode("latin-1")
            if _ID_OK.match(rid):
                return rid
            break
    return uuid.uuid4().hex


def error_json(detail: str, code: str) -> bytes:
    return json.dumps({"detail": detail, "code": code}).encode()


class ServeMiddleware:
    """Wraps the app: see the module docstring. ``limit_bytes`` is the body limit."""

    def __init__(self, app: Any, *, limit_bytes: int, metrics: Any) -> None:
        self.app = app
        self.limit = limit_bytes
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = scope["headers"]
        rid = request_id_from(headers)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["started"] = started
        rid_header = (b"x-request-id", rid.encode())
        status_box = [500]
        response_started = False
        sent_at: float | None = None  # the response's last byte was handed to the server

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal response_started, sent_at
            if message["type"] == "http.response.start":
                response_started = True
                status_box[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent_at = time.perf_counter()

        metrics = self.metrics
        metrics.active += 1
        try:
            length = _content_length(headers)
            if length is not None and length > self.limit:
                metrics.reject("body_too_large")
                if length <= self.limit * DRAIN_FACTOR and not _expects_continue(headers):
                    await _drain(receive, self.limit * DRAIN_FACTOR)
                await self._send_413(send_wrapper, length)
                return
            received = 0
            body_done = False
            limit = self.limit

            async def receive_counted() -> dict[str, Any]:
                nonlocal received, body_done
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    body_done = not message.get("more_body", False)
                    if received > limit:
                        raise BodyTooLarge(f"request body passed the limit of {limit} bytes")
                return message

            try:
                await self.app(scope, receive_counted, send_wrapper)
            except BodyTooLarge:
                if response_started:
                    raise
                metrics.reject("body_too_large")
                if not body_done:
                    await _drain(receive, self.limit * DRAIN_FACTOR - received)
                await self._send_413(send_wrapper, received, streamed=True)
        finally:
            metrics.active -= 1
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            version = state.get("model_version", "")
            metrics.requests.labels(template, str(status_box[0]), version).inc()
            if template.startswith(("/v1/detect", "/v2/models")):
                # up to the response's last byte: a background task after it (the prediction
                # log's record) is not the client's wait
                metrics.latency["total"].observe((sent_at or time.perf_counter()) - started)

    async def _send_413(self, send: Any, size: int, streamed: bool = False) -> None:
        what = (
            f"request body passed the limit of {self.limit} bytes while streaming "
            f"({size} bytes received)"
            if streamed
            else f"request body is {size} bytes (Content-Length), above the limit of "
            f"{self.limit} bytes"
        )
        body = error_json(
            f"{what} (serve.body_limit_mb); send a smaller or more compressed image",
            "body_too_large",
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for k, v in headers:
        if k == b"content-length":
            try:
                return int(v)
            except ValueError:
                return None
    return None


def _expects_continue(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(k == b"expect" and v.lower() == b"100-continue" for k, v in headers)


async def _drain(receive: Any, budget: int) -> None:
    """Read and discard the rest of the request body, at most ``budget`` bytes."""
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return
