"""Degrees of automation through a real server: response fields and review-queue entries."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from detops.config import AutomationLevel
from detops.errors import ConfigError
from detops.serve.automation import AUTOMATION_LEVELS, Automation
from detops.serve.schemas import BatchResponse, DetectResponse
from detops.store.schema import review_items
from tests.serve.conftest import SIZE, const_onnx, image_bytes, wait_until

JPEG = {"content-type": "image/jpeg"}
TOKEN = {"authorization": "Bearer s3cret"}

# the graph's answer for every image: a confident car and a dog in the default band 0.3-0.6
KNOWN = (((4.0, 8.0, 20.0, 30.0), 0.875, 1), ((30.0, 10.0, 60.0, 50.0), 0.4375, 2))


def serve(running_server, make_ws, level: str, known=KNOWN, **flags):
    ws = make_ws({"serve.automation": level, "serve.token": "s3cret", **flags},
                 onnx=const_onnx(known))  # fmt: skip
    return running_server(ws=ws)


def db_items(ws):
    with ws.db.read() as conn:
        return [r._asdict() for r in conn.execute(select(review_items).order_by(review_items.c.at))]


# level -> (response detections, what they are, queued, reason of the queue entry)
LEVELS = {
    "human_only": (0, "withheld", True, "human_only"),  # the model's boxes are held back
    "shadow": (2, "final", False, None),
    "ai_assistance": (2, "suggestions", True, "ai_assistance"),
    "partial": (2, "provisional", True, "low_confidence"),  # 0.4375 is in [0.3, 0.6)
    "full": (2, "final", False, None),
}


def test_the_levels_are_the_configured_ones():
    from typing import get_args

    assert AUTOMATION_LEVELS == get_args(AutomationLevel) == tuple(LEVELS)


@pytest.mark.parametrize("level", list(LEVELS))
def test_each_level_answers_and_queues_as_it_says(running_server, make_ws, level):
    n_dets, what, queued, reason = LEVELS[level]
    server = serve(running_server, make_ws, level, **{"serve.log_flush_ms": 20})
    data = image_bytes(SIZE, SIZE, seed=1)  # network size: boxes come back as the graph says
    r = server.client.post("/v1/detect", content=data, headers={**JPEG, "x-request-id": "r-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    DetectResponse.model_validate(body)
    assert len(body["detections"]) == n_dets
    assert body["automation"] == {"level": level, "detections": what}
    assert body["needs_review"] is queued
    assert (body["review_id"] is not None) is queued
    if not queued:
        server.client.post("/v1/detect", content=data, headers=JPEG)
        server.service.log.close()  # the prediction log has flushed: any review item has too
        server.service.review.close()
        assert db_items(server.ws) == []
        assert server.client.get("/v1/review", headers=TOKEN).json()["items"] == []
        return
    wait_until(lambda: len(db_items(server.ws)) == 1, what="the review item")
    [row] = db_items(server.ws)
    assert (row["id"], row["request_id"], row["reason"], row["level"], row["state"]) == (
        body["review_id"], "r-1", reason, level, "pending"
    )  # fmt: skip
    assert (row["model_name"], row["model_version"], row["width"], row["height"]) == (
        "det", 1, SIZE, SIZE
    )  # fmt: skip
    assert row["classes"] == ["person", "car", "dog"]
    # the item keeps the model's boxes even when the response withheld them
    assert [(d["box"], d["label"]) for d in row["detections"]] == [
        ([4.0, 8.0, 20.0, 30.0], "car"),
        ([30.0, 10.0, 60.0, 50.0], "dog"),
    ]
    assert [d["score"] for d in row["detections"]] == [0.875, 0.4375]
    item = server.client.get(f"/v1/review/{body['review_id']}", headers=TOKEN).json()
    # human_only reviews are blind: the reviewer does not see the model's boxes
    assert item["suggestions"] == ([] if level == "human_only" else row["detections"])
    assert server.client.get(f"/v1/review/{row['id']}/image", headers=TOKEN).content == data


# band (low, high) -> queued, for one detection scoring exactly 0.5 (exact in float32)
BAND_EDGES = [
    ((0.5, 0.75), True),  # low end is inside the band
    ((0.25, 0.5), False),  # high end is outside: confident
    ((0.25, 0.75), True),
    ((0.5, 0.5), False),  # an empty band queues nothing
    ((0.0, 0.25), False),
    ((0.75, 1.0), False),  # below the band: not asked about
]


@pytest.mark.parametrize("band, queued", BAND_EDGES)
def test_partial_band_edges(running_server, make_ws, band, queued):
    low, high = band
    server = serve(
        running_server,
        make_ws,
        "partial",
        known=(((4.0, 8.0, 20.0, 30.0), 0.5, 0),),
        **{"serve.review_band.low": low, "serve.review_band.high": high},
    )
    assert server.service.automation.band == band
    body = server.client.post("/v1/detect", content=image_bytes(), headers=JPEG).json()
    assert body["detections"][0]["score"] == 0.5
    assert body["needs_review"] is queued
    assert body["automation"]["detections"] == ("provisional" if queued else "final")


def test_partial_review_does_not_depend_on_the_threshold_the_client_asks_for(
    running_server, make_ws
):
    # the dog (0.4375, in the band 0.3-0.6) is below the client's threshold 0.5: the response
    # leaves it out, but the model was unsure about this image all the same
    server = serve(running_server, make_ws, "partial", **{"serve.log_flush_ms": 20})
    r = server.client.post("/v1/detect?score_threshold=0.5", content=image_bytes(SIZE, SIZE),
                           headers=JPEG)  # fmt: skip
    body = r.json()
    assert [d["label"] for d in body["detections"]] == ["car"]
    assert body["needs_review"] is True and body["automation"]["detections"] == "provisional"
    wait_until(lambda: len(db_items(server.ws)) == 1, what="the review item")
    # the reviewer sees the uncertain box that asked for review
    [row] = db_items(server.ws)
    seen = [(d["label"], d["score"]) for d in row["detections"]]
    assert seen == [("car", 0.875), ("dog", 0.4375)]
    # above the band, nothing the model found is uncertain: final, whatever the threshold
    sure = serve(running_server, make_ws, "partial", known=(((4.0, 8.0, 20.0, 30.0), 0.875, 1),))
    body = sure.client.post("/v1/detect?score_threshold=0.1", content=image_bytes(),
                            headers=JPEG).json()  # fmt: skip
    assert body["needs_review"] is False and body["automation"]["detections"] == "final"


def test_a_bad_band_or_level_is_refused_with_its_name():
    from detops.config import resolve

    with pytest.raises(ConfigError, match="review band low=0.7 is above high=0.6"):
        resolve(None, env={"DETOPS_SERVE_REVIEW_BAND_LOW": "0.7"})
    with pytest.raises(ConfigError, match="serve.automation"):
        resolve(None, env={"DETOPS_SERVE_AUTOMATION": "mostly"})
    with pytest.raises(ConfigError, match="'mostly' is not one of human_only, shadow"):
        Automation().level = "mostly"


def test_the_level_can_change_while_serving(running_server, make_ws):
    """What a deployment does: set ``service.automation.level``; the next request follows."""
    server = serve(running_server, make_ws, "full")
    post = lambda: server.client.post("/v1/detect", content=image_bytes(), headers=JPEG).json()  # noqa: E731
    assert post()["needs_review"] is False

    def gauge(level):
        line = f'detops_automation_level{{level="{level}"}}'
        text = server.client.get("/metrics").text
        return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(line))

    assert gauge("full") == 1
    server.service.automation.level = "ai_assistance"
    body = post()
    assert body["needs_review"] is True and body["automation"]["level"] == "ai_assistance"
    assert (gauge("full"), gauge("ai_assistance")) == (0, 1)
    with pytest.raises(ConfigError):
        server.service.automation.level = "sometimes"
    assert server.service.automation.level == "ai_assistance"


def test_batch_results_carry_the_automation_fields(running_server, make_ws):
    server = serve(running_server, make_ws, "ai_assistance")
    files = [("images", (f"{i}.jpg", image_bytes(seed=i), "image/jpeg")) for i in range(3)]
    body = server.client.post("/v1/detect/batch", files=files).json()
    BatchResponse.model_validate(body)
    ids = [item["result"]["review_id"] for item in body["results"]]
    assert all(item["result"]["needs_review"] for item in body["results"])
    assert len(set(ids)) == 3 and None not in ids
    wait_until(lambda: len(db_items(server.ws)) == 3, what="three review items")


def test_a_full_review_queue_never_blocks_and_drops_are_counted(running_server, make_ws):
    from detops.serve.app import build_service

    ws = make_ws({"serve.automation": "ai_assistance", "serve.review_queue": 1})
    service = build_service(ws, "det@production")
    gate = threading.Event()
    service.review._sink._writer = lambda batch: gate.wait(10)  # the store hangs
    server = running_server(service=service)
    bodies = []
    for i in range(6):
        r = server.client.post("/v1/detect", content=image_bytes(seed=i), headers=JPEG)
        assert r.status_code == 200
        bodies.append(r.json())
    text = server.client.get("/metrics").text
    gate.set()
    dropped = [b for b in bodies if b["review_id"] is None]
    assert all(b["needs_review"] for b in bodies)  # still true: the answer needed a review
    assert len(dropped) >= 4  # one in the writer, one queued, the rest dropped
    line = next(
        x for x in text.splitlines()
        if x.startswith('detops_review_items_total{outcome="dropped_full"}')
    )  # fmt: skip
    assert float(line.split()[-1]) == len(dropped)


def test_the_byte_budget_bounds_the_queue_too(running_server, make_ws):
    from detops.serve.app import build_service

    ws = make_ws({"serve.automation": "ai_assistance", "serve.review_queue_mb": 0.001})
    service = build_service(ws, "det@production")
    server = running_server(service=service)
    small = image_bytes(8, 8, seed=0)  # well under 1 kB
    big = image_bytes(400, 300, "PNG", seed=0)  # random noise PNG: far over 1 kB
    assert len(small) < 1000 < len(big)
    assert server.client.post("/v1/detect", content=small, headers=JPEG).json()["review_id"]
    png = {"content-type": "image/png"}
    assert server.client.post("/v1/detect", content=big, headers=png).json()["review_id"] is None
    assert service.review.dropped == 1


@pytest.mark.parametrize("level", AUTOMATION_LEVELS)
def test_raw_inference_is_refused_where_people_review(running_server, make_ws, level):
    # /v2 returns the model's raw outputs: fine when boxes are final, a leak under human_only
    # and a bypass of the review queue under ai_assistance / partial
    import numpy as np

    server = serve(running_server, make_ws, level)
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)
    body = {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}  # fmt: skip
    r = server.client.post("/v2/models/det/infer", json=body)
    if level in ("full", "shadow"):
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 409, r.text
        assert level in r.text and "/v1/detect" in r.text
    assert server.client.get("/healthz").status_code == 200


def test_offering_never_waits_for_the_store():
    from detops.serve.review import ReviewQueue

    gate = threading.Event()
    returned: list[int] = []
    q = ReviewQueue(None, max_items=5, flush_ms=5)  # no workspace: the writer is replaced
    # the store hangs (for 10 s, or until let go)
    q._sink._writer = lambda batch: (gate.wait(10), returned.append(len(batch)))
    q._sink._housekeeping = q._sink._after_write = None
    q.start()
    accepted = [q.offer({"i": i}, b"x" * 100) for i in range(50)]
    stuck = returned == []  # all 50 offered while the store still hung: none waited on it
    gate.set()
    q.close()
    assert stuck
    assert 5 <= sum(accepted) <= 5 + 5 and q.dropped == 50 - sum(accepted)
    assert q.written == sum(accepted)
