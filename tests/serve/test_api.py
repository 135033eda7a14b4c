"""``/v1`` against a real running server: typed responses, formats, batch, OpenAPI."""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from detops.model.registry import load_runtime
from detops.serve.schemas import BatchResponse, DetectResponse
from tests.serve.conftest import image_bytes

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture()
def server(running_server):
    return running_server()


@pytest.mark.parametrize(
    "fmt, media",
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("JPEG", "image/jpg"),  # common misspelling, accepted as image/jpeg
        ("PNG", "multipart"),  # multipart field `image`
    ],
)
def test_detect_matches_the_in_process_runtime(server, fmt, media):
    data = image_bytes(97, 53, fmt, seed=3)
    if media == "multipart":
        r = server.client.post("/v1/detect", files={"image": ("x.png", data, "image/png")})
    else:
        r = server.client.post("/v1/detect", content=data, headers={"content-type": media})
    assert r.status_code == 200, r.text
    body = DetectResponse.model_validate(r.json())  # the typed schema is the oracle of shape
    expected = load_runtime(server.ws, "det@v1").predict_bytes([data])[0]
    assert (body.image.width, body.image.height) == (97, 53)
    assert (body.model.name, body.model.version) == ("det", 1)
    assert (body.route.version, body.route.reason) == ("det@v1", "live")
    got = np.array([d.box for d in body.detections], np.float32).reshape(-1, 4)
    assert len(expected) == 1
    np.testing.assert_allclose(got, expected.boxes, rtol=1e-5, atol=1e-4)
    assert [(d.label, d.class_id) for d in body.detections] == [("person", 0)]
    t = body.timings_ms
    assert 0 <= t.decode <= t.total and 0 <= t.queue <= t.total and 0 <= t.inference <= t.total


@pytest.mark.parametrize(
    "query, n",
    [
        ("", 1),  # spec threshold 0.25 < score 0.9
        ("?score_threshold=0.95", 0),  # above the one detection's score
        ("?score_threshold=0.5&max_detections=1", 1),
    ],
)
def test_query_parameters_filter_detections(server, query, n):
    r = server.client.post(f"/v1/detect{query}", content=image_bytes(), headers=JPEG)
    assert r.status_code == 200 and len(r.json()["detections"]) == n


@pytest.mark.parametrize(
    "sent, echoed",
    [
        ("client-id-42", "client-id-42"),  # honoured
        ("bad id with spaces", None),  # not a safe id: replaced by a fresh one
        (None, None),
    ],
)
def test_request_id_is_honoured_and_echoed(server, sent, echoed):
    headers = dict(JPEG, **({"x-request-id": sent} if sent else {}))
    r = server.client.post("/v1/detect", content=image_bytes(), headers=headers)
    rid = r.headers["x-request-id"]
    assert r.json()["request_id"] == rid
    assert rid == echoed if echoed else (len(rid) == 32 and rid != sent)


def test_batch_keeps_order_and_fails_only_the_bad_entry(server):
    good = [image_bytes(40 + 10 * i, 30, "PNG", value=30 * i) for i in range(4)]
    files = [("images", (f"{i}.png", d, "image/png")) for i, d in enumerate(good)]
    files.insert(2, ("images", ("bad.jpg", b"\xff\xd8\xff\xe0 not really", "image/jpeg")))
    r = server.client.post("/v1/detect/batch", files=files)
    assert r.status_code == 200, r.text
    body = BatchResponse.model_validate(r.json())
    assert [i.status for i in body.results] == [200, 200, 400, 200, 200]
    assert [i.filename for i in body.results] == ["0.png", "1.png", "bad.jpg", "2.png", "3.png"]
    assert body.results[2].error is not None and body.results[2].error.code == "bad_image"
    # each image's own answer, in order (mean-box graph: the box grows with brightness)
    rt = load_runtime(server.ws, "det@v1")
    oks = [i.result for i in body.results if i.result is not None]
    for res, data in zip(oks, good, strict=True):
        exp = rt.predict_bytes([data])[0]
        np.testing.assert_allclose([res.detections[0].box], exp.boxes, rtol=1e-5, atol=1e-4)
    assert len({r.detections[0].box[2] for r in oks}) == 4


def test_openapi_and_docs(server):
    spec = server.client.get("/openapi.json").json()
    for path in ["/v1/detect", "/v1/detect/batch", "/v2/models/{name}/infer", "/metrics"]:
        assert path in spec["paths"]
    schema = spec["components"]["schemas"]["DetectResponse"]
    assert set(schema["properties"]) == {
        "request_id", "model", "route", "image", "detections", "timings_ms",
        "automation", "needs_review", "review_id",
    }  # fmt: skip
    docs = server.client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_health_ready_and_models(server):
    assert server.client.get("/healthz").json() == {"status": "ok"}
    assert server.client.get("/readyz").json() == {"ready": True, "model": "det@v1"}
    [m] = server.client.get("/v1/models").json()
    assert (m["ref"], m["follows"], m["batch_policy"]) == ("det@v1", "det@production", "greedy")
    assert (m["lanes"], m["lane_gain"]) == (1, None)  # fixed by the test's settings


@pytest.mark.parametrize(("policy", "spinning"), [("off", False), ("greedy", False),
                                                  ("off", "alone")])
def test_two_lanes_answer_concurrent_requests_each_with_its_own_result(
    running_server, policy, spinning
):
    from concurrent.futures import ThreadPoolExecutor

    server = running_server({"serve.lanes": 2, "serve.batch_policy": policy,
                             "serve.allow_spinning": spinning})
    [m] = server.client.get("/v1/models").json()
    assert m["lanes"] == 2
    images = [image_bytes(64, 48, "PNG", value=v) for v in range(20, 240, 11)]
    headers = {"content-type": "image/png"}

    def box(data: bytes) -> list[float]:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/v1/detect", content=data, headers=headers)
            assert r.status_code == 200, r.text
            return r.json()["detections"][0]["box"]

    alone = [box(d) for d in images]
    assert len({tuple(b) for b in alone}) == len(images)  # every image its own box
    with ThreadPoolExecutor(6) as pool:
        for _ in range(3):
            assert list(pool.map(box, images)) == alone


def test_readyz_is_503_until_a_model_is_loaded(running_server, make_ws):
    # the alias does not exist: the server is alive but never ready, and says why
    server = running_server(follow="det@nowhere", ready=False)
    assert server.client.get("/healthz").status_code == 200
    r = server.client.get("/readyz")
    assert r.status_code == 503
    d = server.client.post("/v1/detect", content=image_bytes(), headers=JPEG)
    assert d.status_code == 503 and d.json()["code"] == "not_ready"
