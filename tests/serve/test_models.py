"""Hot model swap against a real running server under concurrent load."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from detops.model.registry import register_model, set_alias
from detops.serve.models import ModelHost, NotReady
from tests.serve.conftest import const_onnx, image_bytes, spec, wait_until

JPEG = {"content-type": "image/jpeg"}
V2_BOX = [4.0, 8.0, 20.0, 30.0]  # const graph of v2, on a 64x64 image (1:1 letterbox)


@pytest.mark.parametrize("lanes", [1, 2])
def test_alias_move_swaps_without_failing_a_request(running_server, lanes):
    server = running_server(
        {"serve.alias_poll_s": 0.1, "serve.max_batch_size": 4, "serve.lanes": lanes}
    )
    ws = server.ws
    register_model(ws, "det", const_onnx(), spec())
    data = image_bytes(64, 64, value=128)
    v1_box = server.client.post("/v1/detect", content=data, headers=JPEG).json()["detections"][0]
    stop = threading.Event()
    # status, version, box, and when the request was sent and its answer received
    answers: list[tuple[int, int, list[float], float, float]] = []
    lock = threading.Lock()

    def hammer() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                sent = time.perf_counter()
                r = c.post("/v1/detect", content=data, headers=JPEG)
                received = time.perf_counter()
                body = r.json()
                box = body["detections"][0]["box"] if r.status_code == 200 else []
                version = body.get("model", {}).get("version", -1)
                with lock:
                    answers.append((r.status_code, version, box, sent, received))

    with ThreadPoolExecutor(4) as pool:
        futs = [pool.submit(hammer) for _ in range(4)]
        wait_until(lambda: len(answers) >= 20, what="load on v1")
        set_alias(ws, "det@v2", "production")
        wait_until(lambda: any(a[1] == 2 for a in answers), what="the swap to v2")
        n = len(answers)
        wait_until(lambda: len(answers) >= n + 20, what="load on v2")
        stop.set()
        for f in futs:
            f.result()

    assert {a[0] for a in answers} == {200}  # no request failed during the swap
    assert {a[1] for a in answers} == {1, 2}
    # every answer came whole from the version it names (no half-loaded model)
    for _, v, box, _, _ in answers:
        expected = v1_box["box"] if v == 1 else V2_BOX
        assert box == pytest.approx(expected, abs=1e-4)
    # once v2 had answered, the switch was made: no request sent after that got v1 (requests in
    # flight at the swap may; the order of the list is the threads', not the server's)
    first_v2 = min(received for _, v, _, _, received in answers if v == 2)
    late_v1 = [sent - first_v2 for _, v, _, sent, _ in answers if v == 1 and sent > first_v2]
    assert not late_v1, late_v1
    status = server.client.get("/v1/models").json()[0]
    assert status["ref"] == "det@v2"
    metrics = server.client.get("/metrics").text
    assert "detops_model_swaps_total 1.0" in metrics


def test_admin_reload_swaps_now(running_server):
    server = running_server({"serve.alias_poll_s": 3600, "serve.token": "t"})
    register_model(server.ws, "det", const_onnx(), spec())
    set_alias(server.ws, "det@v2", "production")
    r = server.client.post("/admin/reload", headers={"authorization": "Bearer t"})
    assert r.json() == {"swapped": True, "version": "det@v2", "follows": "det@production"}
    d = server.client.post("/v1/detect", content=image_bytes(64, 64), headers=JPEG).json()
    assert d["model"]["version"] == 2 and d["route"]["version"] == "det@v2"


class FakeBatcher:
    def __init__(self) -> None:
        self.closed = 0

    def close(self, timeout=None) -> None:
        self.closed += 1


def _fake(version: int):
    from detops.serve.models import LoadedModel

    return LoadedModel("det", version, runtime=None, batcher=FakeBatcher(), policy="off", gain=None)


def test_the_old_version_closes_only_when_its_last_user_leaves():
    target = {"v": 1}
    host = ModelHost(
        "det@production", resolve=lambda: ("det", target["v"]), load=lambda n, v: _fake(v)
    )
    with pytest.raises(NotReady, match="not loaded yet"):
        host.acquire()
    assert host.check_now() is True and host.check_now() is False  # unchanged alias: no reload
    v1 = host.acquire()
    target["v"] = 2
    assert host.check_now() is True
    assert host.current.version == 2 and v1.batcher.closed == 0  # still in use
    host.release(v1)
    assert v1.batcher.closed == 1
    host.stop()
    assert host.current is None


def test_a_failed_load_keeps_the_live_version_and_reports():
    target = {"v": 1}

    def load(name, v):
        if v == 2:
            raise RuntimeError("ONNX bytes hash to 0123, expected abcd")
        return _fake(v)

    host = ModelHost("det@production", resolve=lambda: ("det", target["v"]), load=load)
    host.check_now()
    target["v"] = 2
    with pytest.raises(RuntimeError):
        host.check_now()
    assert host.current.version == 1 and "hash" in host.last_error


@pytest.mark.parametrize(("measured", "lanes"), [(0.9, 1), (1.5, 2)])
def test_measured_lanes_keep_the_one_thread_session_only_when_used(monkeypatch, measured, lanes):
    import detops.serve.models as models_module
    from detops.config import ServeSettings
    from detops.model.runtime import Runtime
    from detops.model.spec import ModelSpec
    from tests.serve.conftest import mean_box_onnx

    monkeypatch.setattr(models_module.os, "cpu_count", lambda: 2)
    seen: list[object] = []

    def measure(wide, narrow, sample, n):
        narrow(sample[:1])  # as the real measure does: this makes the one-thread session
        seen.append(rt._narrow)
        return measured

    monkeypatch.setattr(models_module, "measure_lane_gain", measure)
    rt = Runtime(mean_box_onnx(), ModelSpec(**spec()), intra_op_threads=2)
    lm = models_module.start_model("det", 1, rt, ServeSettings(lanes=0, batch_policy="off"))
    try:
        assert seen[0] is not None
        assert (lm.batcher.lanes, lm.lane_gain) == (lanes, measured)
        assert (rt._narrow is not None) == (lanes > 1)  # one lane: its memory handed back
    finally:
        lm.batcher.close()


@pytest.mark.parametrize("mode", ["alone", True, False])
def test_spinning_alone_gives_the_batcher_a_quiet_twin_measured_and_warmed(monkeypatch, mode):
    import detops.serve.models as models_module
    from detops.config import ServeSettings
    from detops.model.runtime import Runtime
    from detops.model.spec import ModelSpec
    from tests.serve.conftest import mean_box_onnx

    monkeypatch.setattr(models_module.os, "cpu_count", lambda: 2)
    measured: list[object] = []
    monkeypatch.setattr(
        models_module,
        "measure_lane_gain",
        lambda wide, narrow, sample, n: measured.append(wide) or 1.0,
    )
    rt = Runtime(
        mean_box_onnx(), ModelSpec(**spec()), intra_op_threads=2, allow_spinning=bool(mode)
    )
    settings = ServeSettings(lanes=0, batch_policy="off", allow_spinning=mode)
    lm = models_module.start_model("det", 1, rt, settings)
    try:
        if mode == "alone":
            assert lm.batcher._infer_busy == rt.infer_quiet and measured == [rt.infer_quiet]
            assert rt._quiet is not None  # made and warmed before the first request
        else:  # spinning everywhere or nowhere: one full session
            assert lm.batcher._infer_busy is None and measured == [rt.infer]
            assert rt._quiet is None
    finally:
        lm.batcher.close()


@pytest.mark.parametrize(("lanes", "policy"), [(1, "wait"), (2, "off")])
def test_auto_batching_is_measured_on_the_session_a_batch_runs_on_under_load(
    monkeypatch, lanes, policy
):
    from detops.config import ServeSettings
    from detops.model.runtime import Runtime
    from detops.model.spec import ModelSpec
    from detops.serve.models import start_model
    from tests.serve.conftest import mean_box_onnx

    rt = Runtime(mean_box_onnx(), ModelSpec(**spec()), intra_op_threads=2)
    real_wide, real_narrow = rt.infer, rt.infer_narrow
    pause = threading.Event()  # never set: wait() sleeps with the GIL released

    def wide(batch):  # the full session: a cost per call, whatever the batch (a batch splits
        pause.wait(0.003)  # across the cores where one image does not, or an accelerator)
        return real_wide(batch)

    def narrow(batch):  # one thread: a batch of 8 costs 8 images
        pause.wait(0.002 * len(batch))
        return real_narrow(batch)

    monkeypatch.setattr(rt, "infer", wide)
    monkeypatch.setattr(rt, "infer_narrow", narrow)
    settings = ServeSettings(lanes=lanes, batch_policy="auto", max_batch_size=8)
    lm = start_model("det", 1, rt, settings)
    try:
        # one lane: batches run on the full session, where they gain ~8x; two lanes: under
        # load on one-thread sessions side by side, where batching gains nothing
        assert (lm.batcher.lanes, lm.policy) == (lanes, policy)
        assert lm.gain > 3 if lanes == 1 else lm.gain < 1.2
    finally:
        lm.batcher.close()
