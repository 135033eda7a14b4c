"""The review queue over HTTP against a real server: auth, list / fetch / submit, validation,
the override rate, and retention."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select, update

from detops.serve.predlog import sample_purger
from detops.serve.review import unwrap
from detops.store.schema import image_samples, review_feedback, review_items
from tests.serve.conftest import SIZE, const_onnx, image_bytes, wait_until

JPEG = {"content-type": "image/jpeg"}
AUTH = {"authorization": "Bearer s3cret"}
KNOWN = (((4.0, 8.0, 20.0, 30.0), 0.875, 1), ((30.0, 10.0, 60.0, 50.0), 0.4375, 2))


@pytest.fixture()
def server(running_server, make_ws):
    ws = make_ws(
        {"serve.automation": "ai_assistance", "serve.token": "s3cret", "serve.log_flush_ms": 20},
        onnx=const_onnx(KNOWN),
    )
    return running_server(ws=ws)


def enqueue(server, n=1, seed=0, **headers):
    """Send ``n`` images; wait until their review items are stored; their ids and bytes."""
    sent = []
    for i in range(n):
        data = image_bytes(SIZE, SIZE, seed=seed + i)
        body = server.client.post("/v1/detect", content=data, headers={**JPEG, **headers}).json()
        sent.append((body["review_id"], data))
    wait_until(
        lambda: len(rows(server.ws)) >= len(sent) and server.service.review.written >= len(sent),
        what="the review items",
    )
    return sent


def rows(ws, table=review_items):
    with ws.db.read() as conn:
        return [r._asdict() for r in conn.execute(select(table))]


def metric(server, name):
    text = server.client.get("/metrics").text
    return next(float(x.split()[-1]) for x in text.splitlines() if x.startswith(name + " "))


ENDPOINTS = [
    ("GET", "/v1/review", None),
    ("GET", "/v1/review/stats", None),
    ("GET", "/v1/review/ID", None),
    ("GET", "/v1/review/ID/image", None),
    ("POST", "/v1/review/ID", {"boxes": [], "reviewer": "ann"}),
]


@pytest.mark.parametrize("method, path, body", ENDPOINTS)
def test_review_endpoints_need_the_token(server, method, path, body):
    [(rid, _)] = enqueue(server)
    url = path.replace("ID", rid)
    r = server.client.request(method, url, json=body)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["detail"]
    bad = server.client.request(method, url, json=body, headers={"authorization": "Bearer no"})
    assert bad.status_code == 403
    assert rows(server.ws)[0]["state"] == "pending"  # nothing changed
    assert rows(server.ws, review_feedback) == []


def test_without_a_configured_token_the_queue_is_closed(running_server, make_ws):
    server = running_server(ws=make_ws({"serve.automation": "ai_assistance"}))
    r = server.client.get("/v1/review", headers=AUTH)
    assert r.status_code == 403 and "serve.token" in r.json()["detail"]


def test_list_fetch_and_submit(server):
    sent = enqueue(server, 3)
    c = server.client
    listed = c.get("/v1/review?state=pending", headers=AUTH).json()["items"]
    assert [i["id"] for i in listed] == [rid for rid, _ in sent]  # oldest first
    assert c.get("/v1/review?limit=1", headers=AUTH).json()["items"][0]["id"] == sent[0][0]
    rid, data = sent[0]
    item = c.get(f"/v1/review/{rid}", headers=AUTH).json()
    assert item["state"] == "pending" and item["reason"] == "ai_assistance"
    assert item["image"] == {"width": SIZE, "height": SIZE, "format": "jpeg"}
    assert item["classes"] == ["person", "car", "dog"] and item["model"] == "det@v1"
    assert [(s["box"], s["label"]) for s in item["suggestions"]] == [
        ([4.0, 8.0, 20.0, 30.0], "car"),
        ([30.0, 10.0, 60.0, 50.0], "dog"),
    ]
    img = c.get(f"/v1/review/{rid}/image", headers=AUTH)
    assert img.content == data and img.headers["content-type"] == "image/jpeg"

    # accepted as suggested (a sub-pixel nudge is not a change) / corrected / corrected
    dog = {"box": [30, 10, 60, 50], "label": "dog"}
    answers = [
        [{"box": [4.0, 8.0, 20.0, 30.2], "label": "car"}, dog],
        [{"box": [4.0, 8.0, 20.0, 30.0], "label": "person"}, dog],
        [],
    ]
    changed = []
    for (rid, _), boxes in zip(sent, answers, strict=True):
        r = c.post(f"/v1/review/{rid}", json={"boxes": boxes, "reviewer": "ann"}, headers=AUTH)
        assert r.status_code == 200, r.text
        changed.append(r.json()["changed"])
    assert changed == [False, True, True]
    stats = c.get("/v1/review/stats", headers=AUTH).json()
    assert stats == {"pending": 0, "done": 3, "expired": 0, "reviewed": 3, "changed": 2,
                     "override_rate": pytest.approx(2 / 3), "reviewed_offline": 0}  # fmt: skip
    assert metric(server, "detops_review_override_rate") == pytest.approx(2 / 3)
    assert metric(server, 'detops_review_feedback_total{changed="true"}') == 2
    assert metric(server, 'detops_review_feedback_total{changed="false"}') == 1
    assert metric(server, "detops_review_pending") == 0

    # the feedback is joined to the request id; the item is done and takes no more answers
    fb = {f["review_id"]: f for f in rows(server.ws, review_feedback)}
    items = {i["id"]: i for i in rows(server.ws)}
    for rid, _ in sent:
        assert fb[rid]["request_id"] == items[rid]["request_id"]
        assert fb[rid]["reviewer"] == "ann" and items[rid]["state"] == "done"
    assert fb[sent[1][0]]["boxes"][0] == {"box": [4.0, 8.0, 20.0, 30.0], "label": "person"}
    again = c.post(f"/v1/review/{sent[0][0]}", json={"boxes": [], "reviewer": "bo"}, headers=AUTH)
    assert again.status_code == 409 and "done" in again.json()["detail"]
    assert c.get(f"/v1/review/{sent[0][0]}", headers=AUTH).json()["feedback"]["reviewer"] == "ann"
    assert c.get("/v1/review?state=done", headers=AUTH).json()["items"][0]["state"] == "done"


def test_unknown_items_are_404(server):
    for method, path, body in ENDPOINTS[2:]:
        r = server.client.request(method, path.replace("ID", "nope"), json=body, headers=AUTH)
        assert r.status_code == 404 and "no review item 'nope'" in r.json()["detail"]


# body -> (field named in the error, words in the message)
BAD = [
    ({"boxes": [{"box": [10, 10, 70, 20], "label": "car"}], "reviewer": "a"},
     "body.boxes.0.box", "outside the image (64x64): x2=70 > 64"),
    ({"boxes": [{"box": [-1, 10, 20, 20], "label": "car"}], "reviewer": "a"},
     "body.boxes.0.box", "x1=-1 < 0"),
    ({"boxes": [{"box": [1, 1, 2, 2], "label": "car"},
                {"box": [40, 10, 20, 20], "label": "car"}], "reviewer": "a"},
     "body.boxes.1.box", "x1 < x2 and y1 < y2"),
    ({"boxes": [{"box": [10, 10, 20, 20], "label": "cat"}], "reviewer": "a"},
     "body.boxes.0.label", "'cat' is not a class of this model (person, car, dog)"),
    ({"boxes": [{"box": [10, 10, 20], "label": "car"}], "reviewer": "a"},
     "body.boxes.0.box", "at least 4"),
    ({"boxes": [{"box": [10, 10, 20, 20], "label": "car"}]}, "body.reviewer", "Field required"),
    ({"boxes": [{"box": [10, 10, 20, 20], "label": "car"}], "reviewer": ""},
     "body.reviewer", "at least 1"),
    ({"boxes": [{"box": [10, 10, 20, 20], "label": "car", "score": 1}], "reviewer": "a"},
     "body.boxes.0.score", "Extra inputs"),
]  # fmt: skip


@pytest.mark.parametrize("body, field, words", BAD)
def test_bad_submissions_are_422_naming_the_field(server, body, field, words):
    [(rid, _)] = enqueue(server)
    r = server.client.post(f"/v1/review/{rid}", json=body, headers=AUTH)
    assert r.status_code == 422, r.text
    out = r.json()
    assert out["code"] == "bad_request"
    assert field in [".".join(str(p) for p in e["loc"]) for e in out["errors"]]
    assert words in out["detail"] and field.removeprefix("body.") in out["detail"]
    assert rows(server.ws)[0]["state"] == "pending" and rows(server.ws, review_feedback) == []


def test_a_non_finite_coordinate_is_422(server):
    [(rid, _)] = enqueue(server)
    raw = '{"boxes": [{"box": [1, 1, NaN, 5], "label": "car"}], "reviewer": "a"}'
    r = server.client.post(
        f"/v1/review/{rid}", content=raw, headers={**AUTH, "content-type": "application/json"}
    )
    assert r.status_code == 422 and "not a finite number" in r.json()["detail"]
    json.loads(raw)  # Python's own parser accepts NaN, as the server's does


def test_retention_deletes_images_and_expires_pending_items(running_server, make_ws):
    ws = make_ws(
        {
            "serve.automation": "ai_assistance",
            "serve.token": "s3cret",
            "serve.review_retention_days": 2,
            "serve.sample_rate": 1.0,  # the prediction log samples the same images
            "serve.log_flush_ms": 20,
        },
        onnx=const_onnx(KNOWN),
    )
    server = running_server(ws=ws)
    same = image_bytes(SIZE, SIZE, seed=7)
    c = server.client
    ids = []
    for data in (same, same, image_bytes(SIZE, SIZE, seed=8), image_bytes(SIZE, SIZE, seed=9)):
        ids.append(c.post("/v1/detect", content=data, headers=JPEG).json()["review_id"])
    wait_until(lambda: server.service.review.written == 4, what="four review items")
    items = {i["id"]: i for i in rows(ws)}
    for i in items.values():
        assert i["expires_at"] - i["at"] == dt.timedelta(days=2)
    shared, other, done = items[ids[0]]["artifact"], items[ids[2]]["artifact"], ids[3]
    assert items[ids[1]]["artifact"] == shared  # identical images share one blob
    r = c.post(f"/v1/review/{done}", json={"boxes": [], "reviewer": "ann"}, headers=AUTH)
    assert r.status_code == 200

    # the prediction log purges its sample of the same bytes: review images are their own blobs
    wait_until(lambda: len(rows(ws, image_samples)) == 4, what="the samples")
    past = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    with ws.db.write() as conn:
        conn.execute(update(image_samples).values(expires_at=past))
    assert sample_purger(ws)() == 4
    assert c.get(f"/v1/review/{ids[0]}/image", headers=AUTH).content == same

    # expire one of the two items sharing a blob, the lone one, and the reviewed one
    with ws.db.write() as conn:
        conn.execute(
            update(review_items)
            .where(review_items.c.id.in_([ids[0], ids[2], done]))
            .values(expires_at=past)
        )
    assert server.service.review.purge() == 3
    assert server.service.review.purge() == 0  # nothing left to do
    after = {i["id"]: i for i in rows(ws)}
    assert [after[i]["state"] for i in ids] == ["expired", "pending", "expired", "done"]
    assert [after[i]["artifact"] is None for i in ids] == [True, False, True, True]
    assert ws.artifacts.exists(shared) and unwrap(ws.artifacts.get_bytes(shared)) == same
    assert not ws.artifacts.exists(other)
    gone = c.get(f"/v1/review/{ids[2]}/image", headers=AUTH)
    assert gone.status_code == 410 and "serve.review_retention_days" in gone.json()["detail"]
    late = c.post(f"/v1/review/{ids[0]}", json={"boxes": [], "reviewer": "ann"}, headers=AUTH)
    assert late.status_code == 409 and "expired" in late.json()["detail"]
    assert c.get(f"/v1/review/{ids[1]}/image", headers=AUTH).content == same
    # the feedback of the reviewed item stays, without its image
    assert [f["review_id"] for f in rows(ws, review_feedback)] == [done]
    stats = c.get("/v1/review/stats", headers=AUTH).json()
    assert (stats["pending"], stats["done"], stats["expired"]) == (1, 1, 2)


def test_the_review_page_is_served_without_a_token(server):
    page = server.client.get("/review")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    for asset in ("review.js", "review.css"):
        r = server.client.get(f"/review/{asset}")
        assert r.status_code == 200 and r.content and asset in page.text
    assert server.client.get("/review/secrets.txt").status_code == 404
    # nothing is fetched from another host
    assert "http://" not in page.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page.text


def test_human_only_reviews_are_blind_but_scored_against_the_model(running_server, make_ws):
    ws = make_ws({"serve.automation": "human_only", "serve.token": "s3cret"},
                 onnx=const_onnx(KNOWN))  # fmt: skip
    server = running_server(ws=ws)
    [(same, _), (other, _)] = enqueue(server, 2)
    assert server.client.get(f"/v1/review/{same}", headers=AUTH).json()["suggestions"] == []
    # the person happens to draw what the model saw: no override; the other: an override
    model = [{"box": [4.0, 8.0, 20.0, 30.0], "label": "car"},
             {"box": [30.0, 10.0, 60.0, 50.0], "label": "dog"}]  # fmt: skip
    for rid, boxes in ((same, model), (other, model[:1])):
        r = server.client.post(f"/v1/review/{rid}", json={"boxes": boxes, "reviewer": "ann"},
                               headers=AUTH)  # fmt: skip
        assert r.status_code == 200
    assert [f["changed"] for f in sorted(rows(ws, review_feedback), key=lambda f: f["id"])] == [
        False,
        True,
    ]
    assert server.client.get("/v1/review/stats", headers=AUTH).json()["override_rate"] == 0.5
