"""Helpers for rollout tests: a served deployment, and client load that records every answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from detops.model.registry import register_model
from detops.serve import deployments as deps
from detops.serve.app import build_service
from tests.serve.conftest import image_bytes, spec, wait_until

JPEG = {"content-type": "image/jpeg"}
TOKEN = "t0ken"
AUTH = {"authorization": f"Bearer {TOKEN}"}

FAST = {
    "serve.deployment": "prod",
    "serve.token": TOKEN,
    "serve.log_flush_ms": 30,
    "serve.max_queue": 256,
    "rollout.poll_s": 0.05,
    "rollout.tick_s": 0.05,
    "rollout.lease_ttl_s": 2.0,
}
# small samples for fast tests; latency judged loosely so a busy CI machine does not fail a
# healthy candidate (the slow one is ~10x slower)
TEST_GATES = {
    "min_samples": 10,
    "latency_p95": {"max_ratio": 3.0, "min_increase_ms": 25.0},
    "agreement": {"min_samples": 10},
}
# for a healthy candidate that must not be rolled back: a p95 over a few dozen requests on a
# loaded 2-core host can read 3x and +25 ms (test_deploy_replicas flaked so); latency is the
# "slower" canary test's and tests/monitor/test_gates.py's to check
HEALTHY_GATES = {**TEST_GATES, "latency_p95": {"enabled": False}}


def serve_deployment(
    make_ws: Any,
    running_server: Any,
    candidates: Sequence[bytes] = (),
    flags: dict[str, Any] | None = None,
    model: str = "det@production",
) -> Any:
    """det@v1 live (the mean-box graph), ``candidates`` as det@v2, v3 ...; deployment
    ``prod`` served by a real uvicorn on loopback."""
    ws = make_ws({**FAST, **(flags or {})})
    for onnx in candidates:
        register_model(ws, "det", onnx, spec())
    deps.create(ws, "prod", model)
    return running_server(service=build_service(ws), ws=ws)


@dataclass
class Answer:
    sent: float  # time.time()
    received: float
    status: int
    reason: str | None  # route reason: live | canary | blue | green
    version: int | None
    key: str | None = None  # the X-Client-Key sent


class Load:
    """``threads`` clients posting images until stopped; every answer recorded."""

    def __init__(
        self,
        url: str,
        threads: int = 4,
        keys: Sequence[str | None] = (None,),
        n_images: int = 16,
        pause_s: float = 0.0,
    ) -> None:
        self.url = url
        self.images = [image_bytes(64, 64, seed=i) for i in range(n_images)]
        self.keys = list(keys)
        self.pause_s = pause_s
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, i: int) -> None:
        n = i
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                key = self.keys[n % len(self.keys)]
                headers = dict(JPEG, **({"x-client-key": key} if key else {}))
                sent = time.time()
                try:
                    r = c.post(
                        "/v1/detect", content=self.images[n % len(self.images)], headers=headers
                    )
                except httpx.HTTPError as e:  # a transport failure is a failed request too
                    with self._lock:
                        self.errors.append(f"{type(e).__name__}: {e}")
                    continue
                body = r.json()
                route = body.get("route") or {}
                ans = Answer(
                    sent,
                    time.time(),
                    r.status_code,
                    route.get("reason"),
                    (body.get("model") or {}).get("version"),
                    key,
                )
                with self._lock:
                    self.answers.append(ans)
                n += 1
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def count(self) -> int:
        with self._lock:
            return len(self.answers)

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.sent >= t]

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        start = self.count()
        wait_until(lambda: self.count() >= start + n, timeout, f"{n} more answers")


def wait_state(ws: Any, states: Sequence[str], timeout: float = 30.0) -> deps.Deployment:
    box: list[deps.Deployment] = []

    def reached() -> bool:
        box[:] = [deps.get(ws, "prod")]
        return box[0].state in states

    wait_until(reached, timeout, f"deployment state in {states}")
    return box[0]
