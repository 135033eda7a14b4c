"""``POST /v1/detect``'s fast path (a raw image body, no query string) answers as the FastAPI
route does: the same bodies, statuses, headers, refusals and metrics. Against a real server,
each request sent through both paths (the FastAPI one by switching the fast path off)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.routing import APIRoute

from detops.serve import api
from tests.serve.conftest import image_bytes
from tests.serve.test_hardening import png_header_only
from tests.serve.test_metrics import metric

JPEG = {"content-type": "image/jpeg"}
TOKEN = "fast-token"
GOOD = image_bytes(97, 53, "JPEG", seed=7)


def _fastapi_only(monkeypatch: pytest.MonkeyPatch) -> None:
    async def passthrough(self: Any, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    monkeypatch.setattr(api.DetectFastPath, "__call__", passthrough)


def _chunks(data: bytes, size: int = 4096) -> Any:
    for i in range(0, len(data), size):
        yield data[i : i + size]


CASES = [  # (name, request kwargs) of /v1/detect that the fast path takes
    ("jpeg", dict(content=GOOD, headers=JPEG)),
    ("png, media type with a parameter", dict(content=image_bytes(40, 30, "PNG", seed=2),
                                              headers={"content-type": "Image/PNG; q=1"})),
    ("jpg alias, request id, client key", dict(content=GOOD, headers={
        "content-type": "image/jpg", "x-request-id": "abc-1", "x-client-key": "k9"})),
    ("empty", dict(content=b"", headers=JPEG)),
    ("corrupt", dict(content=b"\xff\xd8\xff" + b"x" * 100, headers=JPEG)),
    ("truncated", dict(content=GOOD[: len(GOOD) // 2], headers=JPEG)),
    ("too many pixels", dict(content=png_header_only(3_000, 2_000),
                             headers={"content-type": "image/png"})),  # fmt: skip
    ("over the body limit, declared", dict(content=b"\xff\xd8\xff" + b"0" * 120_000,
                                           headers=JPEG)),  # fmt: skip
    ("over the body limit, chunked", dict(content=_chunks, headers=JPEG)),
    ("no token", dict(content=GOOD, headers=JPEG, token=None)),
    ("wrong token", dict(content=GOOD, headers=JPEG, token="nope")),
]  # fmt: skip


def _send(server: Any, kwargs: dict[str, Any]) -> Any:
    kw = dict(kwargs)
    headers = dict(kw.pop("headers"))
    token = kw.pop("token", TOKEN)
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if kw["content"] is _chunks:
        kw["content"] = _chunks(b"\xff\xd8\xff" + b"0" * 120_000)
    return server.client.post("/v1/detect", headers=headers, **kw)


def _comparable(r: Any) -> tuple[Any, ...]:
    body = r.json()
    if "request_id" in body and not r.request.headers.get("x-request-id"):
        body["request_id"] = "(generated)"
    body.pop("timings_ms", None)
    if "detail" in body:  # how much of a streamed body had arrived when it passed the limit
        body["detail"] = re.sub(r"\(\d+ bytes received\)", "(N bytes received)", body["detail"])
    keep = ("content-type", "retry-after", "www-authenticate")
    return r.status_code, body, {k: r.headers.get(k) for k in keep}


def test_both_paths_answer_every_case_alike(running_server, monkeypatch: pytest.MonkeyPatch):
    flags = {"serve.token": TOKEN, "serve.require_token_for_detect": True,
             "serve.body_limit_mb": 0.1, "serve.max_pixels": 1_000_000}  # fmt: skip
    server = running_server(flags)
    seen = {}
    for name, kwargs in CASES:
        r = _send(server, kwargs)
        assert r.headers["x-request-id"] and int(r.headers["content-length"]) == len(r.content)
        seen[name] = _comparable(r)
    rejected = metric(server, "detops_rejections", "detops_rejections_total")
    served = metric(server, "detops_requests", "detops_requests_total", route="/v1/detect")
    # a declared body over the limit is refused before any route: labelled "other"
    assert rejected == 8 and served == len(CASES) - 1, (rejected, served)
    assert seen["jpeg"][0] == 200 and seen["jpeg"][1]["image"] == {"width": 97, "height": 53}
    assert seen["jpg alias, request id, client key"][1]["request_id"] == "abc-1"
    assert [seen[n][0] for n, _ in CASES[3:]] == [400, 400, 400, 413, 413, 413, 401, 403]

    _fastapi_only(monkeypatch)
    for name, kwargs in CASES:
        assert _comparable(_send(server, kwargs)) == seen[name], name
    # the refusals and the served requests are counted the same way on both paths
    assert metric(server, "detops_rejections", "detops_rejections_total") == 2 * rejected
    assert metric(
        server, "detops_requests", "detops_requests_total", route="/v1/detect"
    ) == 2 * served


def test_the_fast_path_takes_only_a_raw_image_without_query(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    server = running_server()
    handled: list[str] = []
    real = APIRoute.handle

    async def spy(self: Any, scope: Any, receive: Any, send: Any) -> None:
        handled.append(self.path)
        await real(self, scope, receive, send)

    monkeypatch.setattr(APIRoute, "handle", spy)
    assert server.client.post("/v1/detect", content=GOOD, headers=JPEG).status_code == 200
    assert handled == []
    r = server.client.post("/v1/detect", content=GOOD, headers=JPEG, params={"max_detections": 1})
    assert r.status_code == 200 and len(r.json()["detections"]) <= 1
    r = server.client.post("/v1/detect", files={"image": ("a.jpg", GOOD, "image/jpeg")})
    assert r.status_code == 200
    r = server.client.post("/v1/detect", content=GOOD, headers={"content-type": "text/plain"})
    assert r.status_code == 415
    assert server.client.get("/v1/detect").status_code == 405
    assert handled == ["/v1/detect"] * 4, handled  # query, multipart, 415, and the GET's 405
