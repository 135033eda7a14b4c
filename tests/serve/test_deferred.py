"""A sent response's prediction-log record waits for the event loop's next idle moment
(``Service.defer``): the next request's hand-off to the pool, a metrics scrape, shut-down, or
``DEFER_S`` at the latest. Against a real server, and on bare event loops."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

import detops.serve.service as service_module
from detops.config import ServeSettings
from detops.serve.models import ModelHost
from detops.serve.routing import LiveRouter
from detops.serve.service import Service
from tests.serve.conftest import image_bytes, wait_until
from tests.serve.test_metrics import metric
from tests.serve.test_predlog import rows

JPEG = {"content-type": "image/jpeg"}


def spy_records(monkeypatch: pytest.MonkeyPatch, service: Service) -> list[str]:
    """Request ids of the records handed to the prediction log, in order."""
    seen: list[str] = []
    real = service.log.record

    def record(rec: dict[str, Any], sample: bytes | None = None) -> Any:
        seen.append(rec["request_id"])
        return real(rec, sample)

    monkeypatch.setattr(service.log, "record", record)
    return seen


def post(server: Any, rid: str, query: str = "") -> None:
    r = server.client.post(
        "/v1/detect" + query, content=image_bytes(64, 48, "JPEG"), headers=dict(JPEG, **{
            "x-request-id": rid})
    )  # fmt: skip
    assert r.status_code == 200, r.text


def test_a_record_waits_for_the_next_request_a_scrape_or_shutdown(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(service_module, "DEFER_S", 3600.0)  # only the idle moments count
    monkeypatch.setattr(service_module, "INLINE_RUN_MAX_S", 0.0)  # every run: in the pool
    server = running_server()
    seen = spy_records(monkeypatch, server.service)
    post(server, "a")
    assert seen == []  # answered, its record deferred
    post(server, "b")  # b's hand-off to the pool ran a's record
    assert seen == ["a"]
    server.client.get("/metrics")
    assert seen == ["a", "b"]
    post(server, "c", "?score_threshold=0.5")  # the FastAPI route defers alike
    assert seen == ["a", "b"]
    server.stop()  # shut-down runs it before the log closes: stored, not lost
    assert seen == ["a", "b", "c"]
    assert sorted(r["request_id"] for r in rows(server.ws)) == ["a", "b", "c"]


def test_a_lone_requests_record_is_made_without_another_request(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    server = running_server({"serve.log_flush_ms": 20})
    seen = spy_records(monkeypatch, server.service)
    post(server, "alone")
    wait_until(lambda: seen == ["alone"], timeout=10, what="the deferred record (DEFER_S)")
    wait_until(lambda: len(rows(server.ws)) == 1, what="the stored record")


def test_records_behind_a_quick_model_run_on_the_loop_wait_for_the_timer(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    # a model run on the loop (INLINE_RUN_MAX_S) hands nothing to the pool: no idle moment
    # there, so the records wait for DEFER_S (or a scrape), all of them then in order
    monkeypatch.setattr(service_module, "INLINE_RUN_MAX_S", 60.0)  # every measured run
    monkeypatch.setattr(service_module, "DEFER_S", 3600.0)
    server = running_server()
    seen = spy_records(monkeypatch, server.service)
    batcher = server.service.host.current.batcher
    post(server, "first")  # in the pool: its model's run not yet measured
    assert batcher.direct_run_s is not None
    post(server, "q1")  # on the loop from here: nothing ran "first"'s record
    post(server, "q2")
    assert seen == [], seen
    server.client.get("/metrics")
    assert seen == ["first", "q1", "q2"], seen
    monkeypatch.setattr(service_module, "DEFER_S", 0.05)
    post(server, "q3")
    wait_until(lambda: seen[-1:] == ["q3"], timeout=10, what="q3's record, by the timer")


def test_work_deferred_on_a_loop_that_ended_runs_on_the_next_one(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(service_module, "DEFER_S", 3600.0)
    host = ModelHost("det@production", resolve=lambda: ("det", 1), load=None)
    svc = Service(ServeSettings(), LiveRouter(host), host=host, decode_threads=1)
    ran: list[str] = []

    async def defer(tag: str) -> None:
        svc.defer([lambda: ran.append(tag)])

    try:
        asyncio.run(defer("a"))  # its loop closes with the timer pending
        assert ran == []
        asyncio.run(defer("b"))  # a is not left to the dead loop
        assert ran == ["a"]
        svc.run_deferred()
        svc.run_deferred()  # each call runs once
        assert ran == ["a", "b"]
    finally:
        svc.pool.shutdown()


def test_deferred_work_runs_once_when_its_timer_fires():
    host = ModelHost("det@production", resolve=lambda: ("det", 1), load=None)
    svc = Service(ServeSettings(), LiveRouter(host), host=host, decode_threads=1)
    ran: list[int] = []

    async def main() -> None:
        svc.defer([lambda: ran.append(1), lambda: ran.append(2)])
        timer = svc._deferred_timer
        svc.defer([])  # nothing to do: the same timer
        assert svc._deferred_timer is timer is not None
        await asyncio.sleep(service_module.DEFER_S * 4)

    try:
        asyncio.run(main())
        assert ran == [1, 2]  # by the timer: nothing else ran them
        svc.run_deferred()
        assert ran == [1, 2]  # and once
    finally:
        svc.pool.shutdown()


def test_a_failing_deferred_call_is_logged_and_the_rest_still_run(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.setattr(service_module, "DEFER_S", 3600.0)
    host = ModelHost("det@production", resolve=lambda: ("det", 1), load=None)
    svc = Service(ServeSettings(), LiveRouter(host), host=host, decode_threads=1)
    ran: list[int] = []

    def boom() -> None:
        raise RuntimeError("the store went away")

    async def main() -> None:
        svc.defer([boom, lambda: ran.append(1)])
        svc.run_deferred()  # as the next request would: it must not raise into that request

    try:
        with caplog.at_level(logging.ERROR, logger="detops.serve"):
            asyncio.run(main())
    finally:
        svc.pool.shutdown()
    assert ran == [1]
    assert "deferred work after a response failed" in caplog.text
    assert "the store went away" in caplog.text


def test_the_response_and_its_latency_end_before_the_work_deferred_after_it(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    server = running_server({"serve.log_flush_ms": 20})
    real = server.service.log.record

    def slow_record(rec: dict[str, Any], sample: bytes | None = None) -> Any:
        # the record's building holds the loop after the response; long, so that the bounds
        # below leave a loaded host seconds for the request itself
        time.sleep(3.0)
        return real(rec, sample)

    monkeypatch.setattr(server.service.log, "record", slow_record)
    t0 = time.perf_counter()
    post(server, "slow-record")
    waited = time.perf_counter() - t0
    assert waited < 2.5, f"the response waited {waited:.3f} s, for its record"
    wait_until(lambda: len(rows(server.ws)) == 1, what="the stored record")
    rec = rows(server.ws)[0]
    # the record's latency and the latency histogram end with the response, not the record
    assert rec["request_id"] == "slow-record" and rec["status"] == 200, rec
    assert rec["latency_ms"] < 2500, rec
    assert metric(server, "detops_total_seconds", "detops_total_seconds_sum") < 2.5
