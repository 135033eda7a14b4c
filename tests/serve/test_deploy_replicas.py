"""Two real server processes sharing one SQLite store serve one deployment: they split traffic
identically per client key, exactly one holds the controller lease, and when it is killed the
other takes over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from detops.model.registry import register_model, set_alias
from detops.serve import deployments as deps
from detops.workspace import Workspace, init_workspace
from tests.serve import rollout_graphs as graphs
from tests.serve.conftest import image_bytes, mean_box_onnx, spec, wait_until
from tests.serve.deploy_helpers import AUTH, HEALTHY_GATES, JPEG, TOKEN

ENV = {
    "DETOPS_SERVE_TOKEN": TOKEN,
    "DETOPS_SERVE_BATCH_POLICY": "greedy",
    "DETOPS_SERVE_LOG_FLUSH_MS": "50",
    "DETOPS_ROLLOUT_POLL_S": "0.05",
    "DETOPS_ROLLOUT_TICK_S": "0.1",
    "DETOPS_ROLLOUT_LEASE_TTL_S": "1.0",
}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def replicas(tmp_path):
    root = init_workspace(tmp_path / "ws")
    ws = Workspace(root)
    register_model(ws, "det", mean_box_onnx(), spec())
    set_alias(ws, "det@v1", "production")
    register_model(ws, "det", graphs.healthy(), spec())
    deps.create(ws, "prod", "det@production")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETOPS_")}
    env.update(ENV)
    procs = []
    for _ in range(2):
        port = _free_port()
        cmd = [sys.executable, "-m", "detops", "serve", "-w", str(root), "--deployment", "prod",
               "--port", str(port)]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append((proc, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)))
    try:
        for proc, client in procs:

            def ready(proc=proc, client=client) -> bool:
                assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, 60, "a replica to be ready")
        yield ws, procs
    finally:
        for proc, client in procs:
            client.close()
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.communicate()
        ws.close()


def _replica(client):
    return client.get("/admin/deployments/prod", headers=AUTH).json()["replica"]


def test_replicas_split_alike_and_one_controller_at_a_time(replicas):
    ws, procs = replicas
    (pa, a), (pb, b) = procs
    hold = {"min_requests": 10**6, "min_seconds": 3600}  # the controller judges, never advances
    # nor rolls back (HEALTHY_GATES): a rollback mid-loop would split the replicas' answers
    # while one has seen it and the other not
    deps.start_canary(ws, "prod", "v2", steps="50,100", gates=HEALTHY_GATES, **hold)
    for c in (a, b):
        wait_until(lambda c=c: "det@v2/serve" in _replica(c)["loaded"], 30, "the candidate")
    image = image_bytes(64, 64, seed=3)
    seen = {}
    for i in range(60):
        key = f"camera-{i}"
        answers = [
            c.post("/v1/detect", content=image, headers=dict(JPEG, **{"x-client-key": key}))
            for c in (a, b)
        ]
        assert [r.status_code for r in answers] == [200, 200]
        seen[key] = [r.json()["route"]["reason"] for r in answers]
    assert all(ra == rb for ra, rb in seen.values())  # the same side on both replicas
    assert {ra for ra, _ in seen.values()} == {"live", "canary"}

    def one_controller() -> bool:
        flags = [_replica(c)["controller"] for c in (a, b)]
        return sorted(flags) == [False, True]

    wait_until(one_controller, 10, "exactly one controller")
    holder = deps.read_lease(ws, "rollout:prod").holder
    (dead, _), (alive, survivor) = procs if _replica(a)["controller"] else procs[::-1]
    assert _replica(survivor)["replica"] != holder
    dead.kill()  # no clean shutdown: the lease has to run out
    dead.communicate()
    t = time.monotonic()
    wait_until(lambda: _replica(survivor)["controller"], 10, "the survivor to take over")
    took = time.monotonic() - t
    assert took < 1.0 + 1.5  # the lease's time to live + a few ticks (the default's is 3 s)
    assert deps.read_lease(ws, "rollout:prod").holder == _replica(survivor)["replica"]
    # a rollback written elsewhere (the CLI) reaches the survivor within a poll
    deps.rollback(ws, "prod", actor="human:test")
    back = time.time()
    wait_until(lambda: _replica(survivor)["plan"]["mode"] == "live", 5, "the rollback")
    assert time.time() - back < 2.5  # polled every 50 ms: room for a loaded host
    for i in range(20):
        r = survivor.post(
            "/v1/detect", content=image, headers=dict(JPEG, **{"x-client-key": f"camera-{i}"})
        )
        assert r.json()["route"] == {"version": "det@v1", "reason": "live"}
