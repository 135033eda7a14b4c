"""Hostile and broken requests against a real running server; after each one it still answers."""

from __future__ import annotations

import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.serve.conftest import image_bytes, wait_until

JPEG = {"content-type": "image/jpeg"}


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that declares ``width x height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def still_answers(server) -> None:
    r = server.client.post("/v1/detect", content=image_bytes(), headers=JPEG)
    assert r.status_code == 200, r.text


LIMIT_MB = 0.05  # 52,428 bytes: small bodies are enough to cross it
GOOD = image_bytes(64, 48)

CASES = [
    # (id, method kwargs, expected status, code, words the message must contain)
    (
        "content-length over the limit",
        dict(content=b"\xff" * 60_000, headers=JPEG),
        413, "body_too_large", "limit of 52428 bytes",
    ),
    (
        "streamed (chunked) body over the limit",
        dict(content=iter([b"\xff" * 20_000] * 4), headers=JPEG),
        413, "body_too_large", "while streaming",
    ),
    (
        "bomb: PIL refuses the header",
        dict(content=png_header_only(30_000, 30_000), headers={"content-type": "image/png"}),
        413, "too_many_pixels", "refused before decoding",
    ),
    (
        "over serve.max_pixels, from the header",
        dict(content=png_header_only(5_000, 4_000), headers={"content-type": "image/png"}),
        413, "too_many_pixels", "20000000 pixels, above the limit of 1000000",
    ),
    (
        "truncated JPEG",
        dict(content=GOOD[: len(GOOD) // 2], headers=JPEG),
        400, "bad_image", "truncated",
    ),
    (
        "not an image",
        dict(content=b"GIF89a?? definitely not a picture", headers=JPEG),
        400, "bad_image", "not a recognised image format",
    ),
    ("empty body", dict(content=b"", headers=JPEG), 400, "empty_body", "empty"),
    (
        "unsupported media type",
        dict(content=GOOD, headers={"content-type": "application/json"}),
        415, "unsupported_media_type", "application/json",
    ),
    ("no content type", dict(content=GOOD), 415, "unsupported_media_type", "(none)"),
    (
        "multipart part of the wrong type",
        dict(files={"image": ("x.txt", b"hello", "text/plain")}),
        415, "unsupported_media_type", "text/plain",
    ),
    (
        "multipart without the image field",
        dict(files={"picture": ("x.jpg", GOOD, "image/jpeg")}),
        400, "bad_request", "'image'",
    ),
    (
        "score_threshold not a number",
        dict(content=GOOD, headers=JPEG, params={"score_threshold": "high"}),
        422, "bad_request", "score_threshold",
    ),
    (
        "score_threshold out of range",
        dict(content=GOOD, headers=JPEG, params={"score_threshold": "1.5"}),
        422, "bad_request", "less than or equal to 1",
    ),
    (
        "max_detections zero",
        dict(content=GOOD, headers=JPEG, params={"max_detections": "0"}),
        422, "bad_request", "max_detections",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def hardened(tmp_path_factory):
    """One server for the whole table (limits lowered so small bodies cross them)."""
    from detops.model.registry import register_model, set_alias
    from detops.serve.app import build_service
    from detops.workspace import Workspace, init_workspace
    from tests.serve.conftest import mean_box_onnx, spec, start_server

    root = init_workspace(tmp_path_factory.mktemp("hard") / "ws")
    w = Workspace(root)
    register_model(w, "det", mean_box_onnx(), spec())
    set_alias(w, "det@v1", "production")
    w.close()
    ws = Workspace(
        root,
        flags={
            "serve.body_limit_mb": LIMIT_MB,
            "serve.max_pixels": 1_000_000,
            "serve.batch_policy": "greedy",
        },
    )
    server = start_server(build_service(ws, "det@production"))
    yield server
    server.stop()
    ws.close()


@pytest.mark.parametrize(
    "kwargs, status, code, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_refused_with_a_clear_message_and_the_server_keeps_answering(
    hardened, kwargs, status, code, words
):
    r = hardened.client.post("/v1/detect", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["code"] == code
    assert words in body["detail"]
    still_answers(hardened)


def test_rejections_are_counted_by_reason(hardened):
    before = _rejections(hardened)
    hardened.client.post("/v1/detect", content=b"", headers=JPEG)
    hardened.client.post("/v1/detect", content=GOOD, headers={"content-type": "text/csv"})
    after = _rejections(hardened)
    assert after["empty_body"] - before["empty_body"] == 1
    assert after["unsupported_media_type"] - before["unsupported_media_type"] == 1


def _rejections(server) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = server.client.get("/metrics").text
    fam = next(f for f in text_string_to_metric_families(text) if f.name == "detops_rejections")
    return {s.labels["reason"]: s.value for s in fam.samples if s.name.endswith("_total")}


def _block(server) -> tuple[threading.Event, threading.Event]:
    """Hold the model's inference thread: (gate to release it, event set once it is held)."""
    lm = server.service.host.current
    gate, held_now = threading.Event(), threading.Event()
    infer = lm.batcher._infer

    def held(batch):
        held_now.set()
        gate.wait(30)
        return infer(batch)

    lm.batcher._infer = held
    return gate, held_now


def test_overload_is_503_with_retry_after(running_server):
    server = running_server({"serve.max_queue": 1, "serve.max_batch_size": 1})
    gate, held = _block(server)
    lm = server.service.host.current
    with ThreadPoolExecutor(2) as pool:
        # one request runs (held), one waits in the queue of 1
        first = pool.submit(server.client.post, "/v1/detect", content=GOOD, headers=JPEG)
        wait_until(held.is_set, what="the first request inside the model")
        second = pool.submit(server.client.post, "/v1/detect", content=GOOD, headers=JPEG)
        wait_until(lambda: lm.batcher.depth == 1, what="a queued request")
        r = server.client.post("/v1/detect", content=GOOD, headers=JPEG)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["code"] == "overloaded" and "max_queue" in r.json()["detail"]
        gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
    still_answers(server)


def test_timeout_is_504_and_names_the_setting(running_server):
    # the blocked request times out whatever the limit; the others must not on a loaded host
    server = running_server({"serve.timeout_ms": 1000})
    gate, _ = _block(server)
    r = server.client.post("/v1/detect", content=GOOD, headers=JPEG)
    gate.set()
    assert r.status_code == 504 and r.json()["code"] == "timeout"
    assert "serve.timeout_ms=1000" in r.json()["detail"]
    still_answers(server)


# -- bearer token ---------------------------------------------------------------------------

TOKEN = "s3cret-token"


@pytest.mark.parametrize(
    "configured, header, status, words",
    [
        (None, None, 403, "DETOPS_SERVE_TOKEN"),  # no token configured: disabled, says how
        (None, f"Bearer {TOKEN}", 403, "no token is configured"),
        (TOKEN, None, 401, "Authorization: Bearer"),
        (TOKEN, "Basic abc", 401, "Authorization: Bearer"),
        (TOKEN, "Bearer wrong", 403, "not valid"),
        (TOKEN, f"Bearer {TOKEN}", 200, None),
    ],
)
def test_admin_endpoints_need_the_bearer_token(running_server, configured, header, status, words):
    server = running_server({"serve.token": configured})
    headers = {"authorization": header} if header else {}
    r = server.client.post("/admin/reload", headers=headers)
    assert r.status_code == status, r.text
    if words:
        assert words in r.json()["detail"]
    else:
        assert r.json() == {"swapped": False, "version": "det@v1", "follows": "det@production"}
    still_answers(server) if status == 200 else None


@pytest.mark.parametrize(
    "header, status", [(None, 401), ("Bearer nope", 403), (f"Bearer {TOKEN}", 200)]
)
def test_detect_can_require_the_token(running_server, header, status):
    server = running_server({"serve.token": TOKEN, "serve.require_token_for_detect": True})
    headers = dict(JPEG, **({"authorization": header} if header else {}))
    r = server.client.post("/v1/detect", content=GOOD, headers=headers)
    assert r.status_code == status
    assert server.client.get("/healthz").status_code == 200  # health stays open
