"""Which thread decodes: a request alone on the server on the event loop's thread, others (and
large or costly images, and the batch endpoint's images) in the decode pool; the model runs in
the pool, its features (and earlier responses' records) taken on the loop just before, unless
its runs are quick: a lone request then runs it on the loop too, the features left to its
record. Against a real server."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import detops.serve.service as service_module
from detops.model.registry import load_runtime
from detops.model.runtime import Transform
from detops.monitor.features import image_features
from tests.serve.conftest import image_bytes, wait_until
from tests.serve.test_metrics import metric
from tests.serve.test_predlog import rows

JPEG = {"content-type": "image/jpeg"}


@pytest.fixture()
def threads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(thread name, inline) of every ``_prepare`` call, in order."""
    seen: list[tuple[str, bool]] = []
    real = service_module._prepare

    def spy(runtime: Any, batcher: Any, data: bytes, inline: bool = False, *rest: Any) -> Any:
        seen.append((threading.current_thread().name, inline))
        return real(runtime, batcher, data, inline, *rest)

    monkeypatch.setattr(service_module, "_prepare", spy)
    return seen


def _in_pool(name: str) -> bool:
    return name.startswith("decode")


def test_a_lone_request_is_decoded_on_the_event_loop_thread(
    running_server, threads, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(service_module, "INLINE_RUN_MAX_S", 0.0)  # no model is quick enough
    server = running_server()
    batcher = server.service.host.current.batcher
    runs: list[str] = []
    real_try = batcher.try_direct

    def try_direct(tensor: Any) -> Any:
        runs.append(threading.current_thread().name)
        return real_try(tensor)

    monkeypatch.setattr(batcher, "try_direct", try_direct)
    data = image_bytes(97, 53, "JPEG", seed=1)
    want = load_runtime(server.ws, "det@v1").predict_bytes([data])[0].to_list(["a", "b", "c"])
    for _ in range(3):
        r = server.client.post("/v1/detect", content=data, headers=JPEG)
        assert r.status_code == 200, r.text
        assert len(r.json()["detections"]) == len(want)
    assert threads == [(threads[0][0], True)] * 3 and not _in_pool(threads[0][0]), threads
    assert len(runs) == 3 and all(_in_pool(n) for n in runs), runs  # the model: never the loop


def test_a_lone_request_runs_a_quick_model_on_the_loop_and_a_slow_one_in_the_pool(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    # quick: the batcher's running mean of its runs at most INLINE_RUN_MAX_S (here 50 ms, so
    # that the tiny test model is quick on any machine; a run made 0.3 s long is not)
    monkeypatch.setattr(service_module, "INLINE_RUN_MAX_S", 0.05)
    server = running_server({"serve.log_flush_ms": 20})
    batcher = server.service.host.current.batcher
    runs: list[str] = []
    stall = [0.0]
    real_lane = batcher._infer_lane

    def lane(batch: Any, queued: bool = False) -> Any:
        runs.append(threading.current_thread().name)
        time.sleep(stall[0])
        return real_lane(batch, queued)

    monkeypatch.setattr(batcher, "_infer_lane", lane)
    images = [image_bytes(97, 53, "JPEG", seed=s) for s in range(6)]
    rt = load_runtime(server.ws, "det@v1")
    ids = []
    for i, data in enumerate(images):
        if i == 3:
            stall[0] = 0.3  # the model turns slow: this run still on the loop, then the pool
        r = server.client.post("/v1/detect", content=data, headers=JPEG)
        assert r.status_code == 200, r.text
        want = rt.predict_bytes([data])[0].to_list(["a", "b", "c"])
        assert [d["class_id"] for d in r.json()["detections"]] == [d["class_id"] for d in want]
        np.testing.assert_allclose(
            np.reshape([d["box"] for d in r.json()["detections"]], (-1, 4)),
            np.reshape([d["box"] for d in want], (-1, 4)),
            atol=1e-3,
        )
        ids.append(r.json()["request_id"])
    # the first in the pool (nothing measured yet), then the loop while quick, the pool once
    # the slow run has moved the mean above the bound
    assert [_in_pool(n) for n in runs] == [True, False, False, False, True, True], runs
    assert batcher.direct_run_s is not None and batcher.direct_run_s > 0.05
    # every record has the features of its own image, however its model ran
    wait_until(lambda: len(rows(server.ws)) == 6, what="the six records")
    by_id = {rec["request_id"]: rec for rec in rows(server.ws)}
    for rid, data in zip(ids, images, strict=True):
        want_f = image_features(rt.decode_image(data))
        rec = by_id[rid]
        assert (rec["brightness"], rec["contrast"], rec["sharpness"]) == pytest.approx(
            (want_f.brightness, want_f.contrast, want_f.sharpness)
        ), rec


def test_a_quick_models_run_on_the_loop_past_the_deadline_is_a_504(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    # a run on the loop cannot be interrupted by the timeout: its answer is refused after it
    monkeypatch.setattr(service_module, "INLINE_RUN_MAX_S", 60.0)
    server = running_server({"serve.timeout_ms": 1000})  # room for the quick runs on a loaded host
    batcher = server.service.host.current.batcher
    data = image_bytes(97, 53, "JPEG", seed=6)
    assert server.client.post("/v1/detect", content=data, headers=JPEG).status_code == 200
    real_lane, runs = batcher._infer_lane, []

    def slow(batch: Any, queued: bool = False) -> Any:
        runs.append(threading.current_thread().name)
        time.sleep(2.0)
        return real_lane(batch, queued)

    monkeypatch.setattr(batcher, "_infer_lane", slow)
    r = server.client.post("/v1/detect", content=data, headers=JPEG)
    assert r.status_code == 504 and "serve.timeout_ms=1000" in r.json()["detail"], r.text
    assert len(runs) == 1 and not _in_pool(runs[0]), runs  # it ran on the loop
    monkeypatch.setattr(batcher, "_infer_lane", real_lane)
    ok = server.client.post("/v1/detect", content=data, headers=JPEG)  # and it goes on
    assert ok.status_code == 200, ok.text


def test_a_lone_requests_features_and_earlier_records_come_on_the_loop_before_its_model_runs(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    # the pixels are still in the caches then, and the model's two threads have the cores to
    # themselves while it runs (see Service.detect)
    monkeypatch.setattr(service_module, "DEFER_S", 3600.0)  # the first record: at a hand-off
    monkeypatch.setattr(service_module, "INLINE_RUN_MAX_S", 0.0)  # every run: in the pool
    server = running_server({"serve.log_flush_ms": 20})
    batcher = server.service.host.current.batcher
    real_try, real_features = batcher.try_direct, service_module.image_features
    real_record = server.service.log.record
    events: list[tuple[str, str]] = []  # (what, thread) in order

    def try_direct(tensor: Any) -> Any:
        events.append(("model", threading.current_thread().name))
        return real_try(tensor)

    # each pauses first with the GIL released: a model handed over before them would log its
    # start in the meantime (without the pause the loop's thread, holding the GIL, could finish
    # them before the pool thread even began)
    def features(image: Any) -> Any:
        time.sleep(0.2)
        events.append(("features", threading.current_thread().name))
        return real_features(image)

    def record(rec: dict[str, Any], sample: bytes | None = None) -> Any:
        time.sleep(0.2)
        events.append((f"record {rec['request_id']}", threading.current_thread().name))
        return real_record(rec, sample)

    monkeypatch.setattr(batcher, "try_direct", try_direct)
    monkeypatch.setattr(service_module, "image_features", features)
    monkeypatch.setattr(server.service.log, "record", record)
    first = server.client.post(
        "/v1/detect",
        content=image_bytes(64, 48, "JPEG", seed=5),
        headers={**JPEG, "x-request-id": "a"},
    )
    assert first.status_code == 200, first.text
    data = image_bytes(97, 53, "JPEG", seed=4)
    r = server.client.post("/v1/detect", content=data, headers={**JPEG, "x-request-id": "b"})
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 97, "height": 53}
    server.client.get("/metrics")  # an idle moment: b's record
    wait_until(lambda: len(rows(server.ws)) == 2, what="both records")
    assert [e[0] for e in events] == [
        "features", "model",  # a
        "record a", "features", "model",  # b: a's record and b's features before b's run
        "record b",
    ], events  # fmt: skip
    loop_thread = events[0][1]
    assert not _in_pool(loop_thread), events
    assert all(t == loop_thread for what, t in events if what != "model"), events
    assert all(_in_pool(t) for what, t in events if what == "model"), events
    data_row = next(x for x in rows(server.ws) if x["request_id"] == "b")
    want = image_features(load_runtime(server.ws, "det@v1").decode_image(data))
    assert (data_row["width"], data_row["height"]) == (97, 53)
    assert (data_row["brightness"], data_row["contrast"], data_row["sharpness"]) == pytest.approx(
        (want.brightness, want.contrast, want.sharpness)
    )
    assert data_row["status"] == 200, data_row


def test_a_record_that_cannot_be_made_after_the_response_is_counted_and_serving_goes_on(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    server = running_server({"serve.log_flush_ms": 20})
    real_features = service_module.image_features
    calls = []

    def features(image: Any) -> Any:
        calls.append(1)
        if len(calls) <= 2:  # on the loop while the model runs, then again for the record
            raise MemoryError("no room for the Laplacian")
        return real_features(image)

    monkeypatch.setattr(service_module, "image_features", features)
    data = image_bytes(97, 53, "JPEG", seed=4)
    first = server.client.post("/v1/detect", content=data, headers=JPEG)
    assert first.status_code == 200, first.text  # the client had its answer before the failure
    wait_until(
        lambda: metric(server, "detops_prediction_log_records",
                       "detops_prediction_log_records_total", outcome="dropped_error") == 1,
        what="the dropped record counted",
    )  # fmt: skip
    second = server.client.post("/v1/detect", content=data, headers=JPEG)
    assert second.status_code == 200, second.text
    wait_until(lambda: len(rows(server.ws)) == 1, what="the second request's record")
    assert rows(server.ws)[0]["request_id"] == second.json()["request_id"]


def test_features_asked_for_by_two_threads_at_once_are_computed_once(
    monkeypatch: pytest.MonkeyPatch,
):
    # a deferred prediction-log record and a shadow run may take a request's features at once
    img = np.asarray(Image.open(io.BytesIO(image_bytes(97, 53, "PNG", seed=3))).convert("RGB"))
    real = service_module.image_features
    want = image_features(img)
    inside, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(image: Any) -> Any:
        calls.append(threading.current_thread().name)
        inside.set()
        assert release.wait(10)
        return real(image)

    monkeypatch.setattr(service_module, "image_features", slow)
    transform = Transform(1.0, 1.0, 0, 0, 97, 53)
    prep = service_module.Prepared(np.zeros(1), transform, None, 0.0, image=img)
    got: dict[str, Any] = {}
    first = threading.Thread(target=lambda: got.update(first=prep.take_features()), name="first")
    second = threading.Thread(target=lambda: got.update(second=prep.take_features()))
    first.start()
    assert inside.wait(10)  # the first is computing them
    second.start()
    time.sleep(0.2)  # the second asks meanwhile
    release.set()
    first.join(10)
    second.join(10)
    assert calls == ["first"], calls  # computed once, by the first; the second waited
    assert got == {"first": want, "second": want} and prep.image is None


def test_a_large_image_goes_to_the_pool_and_is_still_answered(
    running_server, threads, monkeypatch: pytest.MonkeyPatch
):
    server = running_server()
    monkeypatch.setattr(service_module, "INLINE_MAX_PIXELS", 1000)
    small, large = image_bytes(20, 20, "PNG"), image_bytes(97, 53, "PNG", seed=2)
    rt = load_runtime(server.ws, "det@v1")
    for data in (small, large):
        r = server.client.post("/v1/detect", content=data, headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        assert r.json()["image"] == dict(
            zip(("width", "height"), rt.decode_image(data).shape[1::-1], strict=True)
        )
    # the small one inline; the large one tried inline (refused by the header check before
    # decoding), then decoded in the pool under the runtime's own limit
    assert [(not _in_pool(n), inline) for n, inline in threads] == [
        (True, True),
        (True, True),
        (False, False),
    ]


def test_a_progressive_jpeg_is_decoded_in_the_pool(running_server, threads):
    # its decode time is not bounded by its size (as many scans as the file asks for)
    server = running_server()
    buf = io.BytesIO()
    Image.open(io.BytesIO(image_bytes(64, 48, "PNG", seed=4))).save(buf, "JPEG", progressive=True)
    r = server.client.post("/v1/detect", content=buf.getvalue(), headers=JPEG)
    assert r.status_code == 200, r.text
    assert r.json()["image"] == {"width": 64, "height": 48}
    assert [(_in_pool(n), inline) for n, inline in threads] == [(False, True), (True, False)]


def test_the_real_pixel_limit_still_answers_413_after_the_inline_attempt(running_server, threads):
    from tests.serve.test_hardening import png_header_only

    server = running_server({"serve.max_pixels": 1_000_000})
    r = server.client.post(
        "/v1/detect", content=png_header_only(2_000, 2_000), headers={"content-type": "image/png"}
    )
    assert r.status_code == 413 and "above the limit of 1000000" in r.text, r.text
    assert [(_in_pool(n), inline) for n, inline in threads] == [(False, True), (True, False)]
    assert server.client.get("/healthz").status_code == 200


def test_a_request_beside_another_in_flight_is_decoded_in_the_pool(running_server, threads):
    server = running_server()
    data = image_bytes(64, 48, "JPEG", seed=3)
    release = threading.Event()
    first: list[httpx.Response] = []

    def slow_body() -> Iterator[bytes]:
        yield data[:10]
        release.wait(20)  # the server holds this request in flight until released
        yield data[10:]

    def send_slow() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            first.append(c.post("/v1/detect", content=slow_body(), headers=JPEG))

    t = threading.Thread(target=send_slow)
    t.start()
    try:
        deadline = time.monotonic() + 20
        while server.service.metrics.active < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.service.metrics.active == 1  # the slow request is in flight
        # the gauge reports the same count: the slow request plus this scrape
        scrape = server.client.get("/metrics").text
        assert "\ndetops_in_flight_requests 2.0\n" in scrape, scrape[:2000]
        r = server.client.post("/v1/detect", content=data, headers=JPEG)
        assert r.status_code == 200, r.text
    finally:
        release.set()
        t.join(30)
    assert first and first[0].status_code == 200, first
    assert first[0].json()["detections"] == r.json()["detections"]
    # the second request (finished first) went to the pool; the slow one, alone by the time
    # its body was complete, decoded on the loop
    assert [_in_pool(n) for n, _ in threads] == [True, False], threads


def test_the_batch_endpoint_decodes_its_images_in_the_pool(running_server, threads):
    server = running_server()
    files = [
        ("images", (f"{i}.png", image_bytes(40, 30, "PNG", seed=i), "image/png")) for i in range(3)
    ]
    r = server.client.post("/v1/detect/batch", files=files)
    assert r.status_code == 200, r.text
    assert [item["status"] for item in r.json()["results"]] == [200, 200, 200]
    assert len(threads) == 3 and all(_in_pool(n) for n, _ in threads), threads
    one = server.client.post("/v1/detect/batch", files=files[:1])
    assert one.status_code == 200
    assert not _in_pool(threads[-1][0])  # a batch of one is a lone request


def test_requests_are_decoded_while_every_lane_runs_the_model(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    # two cores, two lanes: two requests hold both lanes (a request that finds a lane idle runs
    # the model on its own pool thread); the next two must still be decoded meanwhile, which a
    # pool of one thread a core (both threads inside model runs) could not do
    monkeypatch.setattr(service_module.os, "cpu_count", lambda: 2)
    server = running_server({"serve.lanes": 2, "serve.batch_policy": "off"})
    assert server.service.pool._max_workers == service_module.pool_threads(2) == 4
    batcher = server.service.host.current.batcher
    assert batcher.lanes == 2
    t0 = time.monotonic()
    decoded: list[float] = []
    model_ends: list[float] = []
    real_prepare, real_lane = service_module._prepare, batcher._infer_lane

    all_decoded = threading.Event()
    held_until_all_decoded: list[bool] = []

    def prepare(runtime: Any, batcher: Any, data: bytes, inline: bool = False, *rest: Any) -> Any:
        decoded.append(time.monotonic() - t0)
        if len(decoded) == 4:
            all_decoded.set()
        return real_prepare(runtime, batcher, data, inline, *rest)

    def slow_lane(batch: Any, queued: bool = False) -> Any:
        # holding the lane until all four requests are decoded (a wait, not a fixed sleep: a
        # loaded host may take long to send them); never, if decoding waited for the lanes
        held_until_all_decoded.append(all_decoded.wait(20))
        out = real_lane(batch, queued)
        model_ends.append(time.monotonic() - t0)
        return out

    monkeypatch.setattr(service_module, "_prepare", prepare)
    monkeypatch.setattr(batcher, "_infer_lane", slow_lane)
    data = image_bytes(97, 53, "JPEG", seed=5)
    codes: list[int] = []

    def post() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            codes.append(client.post("/v1/detect", content=data, headers=JPEG).status_code)

    posters = [threading.Thread(target=post) for _ in range(4)]
    for th in posters:
        th.start()
    for th in posters:
        th.join(30)
    assert codes == [200] * 4
    assert len(decoded) == 4 and len(model_ends) == 4, (decoded, model_ends)
    assert held_until_all_decoded == [True] * 4, held_until_all_decoded
    # every request was decoded before the first model run ended
    assert max(decoded) < min(model_ends), (decoded, model_ends)


def test_a_client_that_hangs_up_before_its_answer_still_leaves_a_record(
    running_server, monkeypatch: pytest.MonkeyPatch
):
    # the record is made after the response is sent: a response nobody reads must not lose it
    server = running_server({"serve.log_flush_ms": 20})
    batcher = server.service.host.current.batcher
    real_try = batcher.try_direct

    def slow(tensor: Any) -> Any:
        time.sleep(0.6)
        return real_try(tensor)

    monkeypatch.setattr(batcher, "try_direct", slow)
    data = image_bytes(97, 53, "JPEG", seed=4)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/detect", content=data, headers=dict(JPEG, **{
            "x-request-id": "gone-1"}), timeout=httpx.Timeout(5.0, read=0.2))  # fmt: skip
    wait_until(lambda: len(rows(server.ws)) == 1, what="the record of the abandoned request")
    rec = rows(server.ws)[0]
    assert rec["request_id"] == "gone-1" and rec["status"] == 200 and rec["width"] == 97, rec
    ok = server.client.post("/v1/detect", content=data, headers=JPEG)
    assert ok.status_code == 200, ok.text
