"""The prediction log: records in the store, never blocking requests, drops counted, sampling."""

from __future__ import annotations

import datetime as dt
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from detops.monitor.features import image_features
from detops.serve.predlog import PredictionLog, Spool, sample_purger
from detops.store.schema import image_samples, predictions
from tests.serve.conftest import image_bytes, wait_until

JPEG = {"content-type": "image/jpeg"}


def rows(ws, table=predictions):
    with ws.db.read() as conn:
        return [
            r._asdict()
            for r in conn.execute(select(table).order_by(table.c[list(table.c.keys())[0]]))
        ]


def test_every_request_leaves_a_record(running_server):
    server = running_server({"serve.log_flush_ms": 20})
    ok = image_bytes(80, 60, value=200)
    server.client.post("/v1/detect", content=ok, headers=dict(JPEG, **{"x-request-id": "good-1"}))
    server.client.post(
        "/v1/detect", content=b"junk", headers=dict(JPEG, **{"x-request-id": "bad-1"})
    )
    wait_until(lambda: len(rows(server.ws)) == 2, what="two records")
    good, bad = sorted(rows(server.ws), key=lambda r: r["request_id"], reverse=True)
    assert good["request_id"] == "good-1" and good["status"] == 200
    assert (good["model_name"], good["model_version"], good["route"]) == ("det", 1, "live")
    assert (good["width"], good["height"], good["bytes"], good["format"]) == (
        80,
        60,
        len(ok),
        "jpeg",
    )
    assert good["brightness"] == pytest.approx(200, abs=2) and good["contrast"] < 2
    assert good["n_boxes"] == 1 and good["max_score"] == pytest.approx(0.9)
    assert good["class_counts"] == {"person": 1}
    assert set(good["timings"]) == {"decode", "queue", "inference", "total"}
    assert bad["status"] == 400 and bad["error"].startswith("bad_image:")
    assert bad["n_boxes"] is None and bad["width"] is None


def test_a_stuck_store_never_slows_requests_and_drops_are_counted():
    gate = threading.Event()
    writes: list[int] = []

    def stuck(records):
        gate.wait(10)  # the store hangs
        writes.append(len(records))

    log = PredictionLog(stuck, max_queue=5, batch=2, flush_ms=5).start()
    accepted = [log.record({"i": i}) for i in range(50)]
    # all 50 offered while the store still hangs (it returns after 10 s, or when let go): no
    # offer waited on it, on a machine however loaded
    assert writes == [] and not gate.is_set()
    assert sum(accepted) <= 5 + 2 and log.dropped == 50 - sum(accepted)
    gate.set()
    log.close()
    assert sum(writes) == sum(accepted) and log.written == sum(accepted)


def test_the_spool_hands_over_whole_batches_and_wakes_the_writer_only_for_them():
    spool: Spool[int] = Spool(maxsize=10, batch=4)
    stop = threading.Event()
    taken: list[list[int]] = []
    writer = threading.Thread(target=lambda: taken.append(spool.take(30.0, stop)))
    writer.start()
    for i in range(3):
        assert spool.put(i)
    writer.join(0.3)
    assert writer.is_alive() and taken == []  # three records: the writer sleeps on
    t = time.perf_counter()
    assert spool.put(3)
    writer.join(5)
    assert taken == [[0, 1, 2, 3]] and time.perf_counter() - t < 1.0  # the 4th wakes it
    # two whole batches waiting: taken back to back, no wait between them
    for i in range(9):
        assert spool.put(i)
    t = time.perf_counter()
    assert spool.take(30.0, stop) == [0, 1, 2, 3] and spool.take(30.0, stop) == [4, 5, 6, 7]
    assert time.perf_counter() - t < 1.0
    # a partial batch waits out the flush period, then comes as it is
    t = time.perf_counter()
    assert spool.take(0.2, stop) == [8] and time.perf_counter() - t >= 0.19
    # the bound: maxsize waiting, the next put is refused and nothing is queued
    assert all(spool.put(i) for i in range(10)) and not spool.put(99) and len(spool) == 10
    stop.set()  # closing: what is there, without waiting
    t = time.perf_counter()
    assert spool.take(30.0, stop) == [0, 1, 2, 3] and time.perf_counter() - t < 1.0
    with pytest.raises(ValueError, match="batch >= 1"):
        Spool(maxsize=10, batch=0)
    # a batch above the bound is cut to it, so a full spool is a whole batch (taken at once)
    small: Spool[int] = Spool(maxsize=3, batch=100)
    assert small.batch == 3 and all(small.put(i) for i in range(3))
    t = time.perf_counter()
    assert small.take(30.0, threading.Event()) == [0, 1, 2] and time.perf_counter() - t < 1.0


def test_closing_writes_what_is_queued_without_waiting_out_the_flush_period():
    written: list[int] = []
    log = PredictionLog(lambda records: written.extend(r["i"] for r in records),
                        batch=100, flush_ms=60_000).start()
    time.sleep(0.05)  # the writer is asleep in its (minute-long) flush wait
    for i in range(3):
        log.record({"i": i})
    t = time.perf_counter()
    log.close()
    assert written == [0, 1, 2] and log.written == 3 and time.perf_counter() - t < 2.0


def test_a_failing_store_drops_the_batch_counts_it_and_carries_on():
    calls = []

    def down_then_up(records):
        calls.append(len(records))
        if len(calls) == 1:
            raise ConnectionError("database is down")

    log = PredictionLog(down_then_up, batch=10, flush_ms=5).start()
    log.record({"i": 0})
    wait_until(lambda: log.dropped == 1, what="the failed write")
    log.record({"i": 1})
    log.close()
    assert (log.dropped, log.written) == (1, 1)


def test_drops_show_in_metrics(running_server, make_ws):
    from detops.serve.app import build_service

    service = build_service(make_ws({"serve.log_queue": 1, "serve.log_batch": 1}), "det@production")
    gate = threading.Event()
    service.log._writer = lambda records: gate.wait(10)  # the store hangs
    server = running_server(service=service)
    for _ in range(5):
        r = server.client.post("/v1/detect", content=image_bytes(), headers=JPEG)
        assert r.status_code == 200
    text = server.client.get("/metrics").text
    gate.set()
    line = next(
        x for x in text.splitlines()
        if x.startswith('detops_prediction_log_records_total{outcome="dropped_full"}')
    )  # fmt: skip
    assert float(line.split()[-1]) >= 3  # one in the writer, one queued, the rest dropped


@pytest.mark.parametrize("rate, kept", [(0.0, 0), (1.0, 3)])
def test_image_sampling_rate_and_retention(running_server, rate, kept):
    server = running_server({"serve.sample_rate": rate, "serve.log_flush_ms": 20})
    images = [image_bytes(seed=i) for i in range(3)]
    for i, data in enumerate(images):
        server.client.post(
            "/v1/detect", content=data, headers=dict(JPEG, **{"x-request-id": f"s{i}"})
        )
    wait_until(lambda: len(rows(server.ws)) == 3, what="three records")
    samples = rows(server.ws, image_samples)
    assert len(samples) == kept
    ws = server.ws
    for s in samples:
        assert ws.artifacts.get_bytes(s["artifact"]) == images[int(s["request_id"][1:])]
        assert s["expires_at"] - s["at"] == dt.timedelta(days=7)
    if kept:
        # expire one sample: the purge removes its row and its bytes, nothing else
        with ws.db.write() as conn:
            conn.execute(
                update(image_samples)
                .where(image_samples.c.request_id == "s0")
                .values(expires_at=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
            )
        assert sample_purger(ws)() == 1
        left = rows(ws, image_samples)
        assert sorted(s["request_id"] for s in left) == ["s1", "s2"]
        gone = next(s for s in samples if s["request_id"] == "s0")["artifact"]
        assert not ws.artifacts.exists(gone)


def test_logged_features_are_the_features_of_the_image(running_server):
    server = running_server({"serve.log_flush_ms": 20})
    pixels = np.random.default_rng(3).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")  # lossless: the server decodes these pixels
    png = {"content-type": "image/png"}
    r = server.client.post("/v1/detect", content=buf.getvalue(), headers=png)
    assert r.status_code == 200 and r.json()["image"] == {"width": 130, "height": 90}
    wait_until(lambda: len(rows(server.ws)) == 1, what="the record")
    (rec,) = rows(server.ws)
    f = image_features(pixels)
    assert (rec["width"], rec["height"]) == (130, 90)
    assert (rec["brightness"], rec["contrast"], rec["sharpness"]) == pytest.approx(
        (f.brightness, f.contrast, f.sharpness), rel=1e-6
    )
