"""A rollout you can watch: shadow, then canary, against a loopback server with generated traffic.

:func:`demo_rollout` is what ``detops quickstart`` runs after it trained a second model: it
serves the deployment on ``127.0.0.1`` (an ephemeral port, in this process), runs the candidate
in shadow and reports how it agreed with live, then starts a canary and sends traffic from
several simulated clients until the controller promotes the candidate or rolls it back, printing
each decision with its reason as it happens.
"""

from __future__ import annotations

import datetime as dt
import itertools
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["demo_rollout"]

DEMO_FLAGS = {
    "serve.batch_policy": "greedy",
    "serve.log_flush_ms": 100,
    "serve.alias_poll_s": 3600,
    "rollout.poll_s": 0.1,
    "rollout.tick_s": 0.2,
}


def _demo_images(n: int = 24, seed: int = 1) -> list[bytes]:
    from detops.data.synth import synthesize

    with tempfile.TemporaryDirectory(prefix="detops-demo-") as tmp:
        synthesize(tmp, n, seed, workers=1)
        return [p.read_bytes() for p in sorted((Path(tmp) / "images").iterdir())]


def _media(data: bytes) -> str:
    from detops.serve.service import sniff_format

    return f"image/{sniff_format(data) or 'jpeg'}"


class _Traffic:
    """Client threads posting images with rotating client keys until stopped."""

    def __init__(self, url: str, images: Sequence[bytes], clients: int) -> None:
        self.url = url
        self.images = list(images)
        self.sent = 0
        self.failed = 0
        self.by_reason: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i, clients), daemon=True)
            for i in range(clients)
        ]

    def __enter__(self) -> _Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def _run(self, i: int, stride: int) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=30) as c:
            for n in itertools.count(i, stride):
                if self._stop.is_set():
                    return
                data = self.images[n % len(self.images)]
                headers = {"content-type": _media(data), "x-client-key": f"client-{n % 97}"}
                try:
                    r = c.post("/v1/detect", content=data, headers=headers)
                    reason = r.json().get("route", {}).get("reason") if r.is_success else None
                except Exception:
                    r, reason = None, None
                with self._lock:
                    self.sent += 1
                    if r is None or not r.is_success:
                        self.failed += 1
                    else:
                        self.by_reason[str(reason)] = self.by_reason.get(str(reason), 0) + 1


def _shadow_summary(
    ws: Any, model: str, candidate: int, live: int, since: dt.datetime
) -> dict[str, Any]:
    """The shadow comparisons of ``candidate`` against ``live`` made from ``since`` on (an
    earlier demo of the same pair left its own)."""
    from sqlalchemy import func, select

    from detops.store.schema import shadow_comparisons as s

    q = select(
        func.count(),
        func.avg(s.c.f1),
        func.avg(s.c.candidate_latency_ms),
        func.avg(s.c.live_latency_ms),
        func.count(s.c.error),
    ).where(
        s.c.model_name == model,
        s.c.candidate_version == candidate,
        s.c.live_version == live,
        s.c.at >= since,
    )
    with ws.db.read() as conn:
        n, f1, cand_ms, live_ms, errors = conn.execute(q).one()
    return {
        "compared": int(n or 0),
        "mean_f1": None if f1 is None else round(float(f1), 3),
        "candidate_ms": None if cand_ms is None else round(float(cand_ms), 2),
        "live_request_ms": None if live_ms is None else round(float(live_ms), 2),
        "errors": int(errors or 0),
    }


def demo_rollout(
    ws: Any,
    deployment: str,
    candidate: str | int,
    *,
    model: str | None = None,
    echo: Callable[[str], Any] = print,
    images: Sequence[bytes] | None = None,
    shadow_requests: int = 60,
    sample: float = 1.0,
    steps: str | Sequence[float] = "10,25,50,100",
    step_min_requests: int = 30,
    step_min_seconds: float = 2.0,
    gates: Mapping[str, Any] | None = None,
    clients: int = 4,
    timeout_s: float = 180.0,
) -> dict[str, Any]:
    """Shadow ``candidate`` in ``deployment``, then canary it until promoted or rolled back.

    ``model`` (``NAME@ALIAS``) creates the deployment when it does not exist yet. ``images``
    are the request bodies (default: 24 generated scenes). The shadow phase sends requests
    until the candidate has answered ``shadow_requests`` copies (copies it was too far behind
    for are shed, and counted). Returns ``{"outcome": "promoted" | "rolled_back" | "timeout" |
    "already_live", "reason", "live", "live_before", "candidate", "shadow": {compared, mean_f1,
    candidate_ms, live_request_ms, errors, shed}, "events", "requests", "failed_requests",
    "answered_by"}``; every step is also printed through ``echo``. A rollout left unfinished by
    an earlier run is rolled back first.
    """
    from detops.model.registry import get_model
    from detops.serve import deployments as deps
    from detops.serve.app import build_service, create_app
    from detops.workspace import Workspace

    try:
        dep = deps.get(ws, deployment)
    except deps.DeploymentNotFound:
        if model is None:
            raise
        dep = deps.create(ws, deployment, model, actor="human:demo")
        echo(f"created deployment {deployment} serving {dep.live_ref}")
    if dep.state in deps.ACTIVE_STATES:  # an earlier run stopped half-way: start clean
        dep = deps.rollback(ws, deployment, actor="human:demo", reason="demo starts over")
        echo(f"rolled back the unfinished {dep.strategy} in {deployment}")
    text = str(candidate)
    ref = text if "@" in text else f"{dep.model_name}@{'v' + text if text.isdigit() else text}"
    if get_model(ws, ref).version == dep.live_version:
        echo(f"{dep.live_ref} is already live in {deployment}; nothing to roll out")
        return {"outcome": "already_live", "reason": None, "live": dep.live_ref,
                "live_before": dep.live_ref, "candidate": dep.live_ref, "shadow": None,
                "events": deps.history(ws, deployment), "requests": 0, "failed_requests": 0,
                "answered_by": {}}  # fmt: skip
    live_before = dep.live_version
    images = list(images) if images is not None else _demo_images()
    served = Workspace(ws.root, flags={**DEMO_FLAGS, "serve.deployment": deployment})
    service = build_service(served)
    server = _Loopback(create_app(service))
    result: dict[str, Any] = {}
    try:
        echo(f"serving deployment {deployment} on {server.url} (live {dep.live_ref})")
        agent = service.router.agent  # type: ignore[attr-defined]
        dep = deps.start_shadow(ws, deployment, candidate, sample=sample, actor="human:demo")
        cand_version = dep.candidate_version
        assert cand_version is not None
        cand_ref = dep.candidate_ref
        key = f"{dep.model_name}@v{cand_version}/shadow"
        _wait(lambda: key in agent.status()["loaded"], 120, f"{cand_ref} to load")
        echo(f"shadow: {cand_ref} answers a copy of {sample:.0%} of requests; clients see live")
        # traffic until the candidate has answered shadow_requests copies: the runner sheds
        # copies while it is behind (a slow candidate, a busy machine), so sent is not compared
        runner = service.router.shadow  # type: ignore[attr-defined]
        since = dt.datetime.now(dt.UTC)
        with _Traffic(server.url, images, 1):
            _wait(lambda: runner.recorded >= shadow_requests, 120,
                  f"{shadow_requests} requests compared in shadow")  # fmt: skip
        _wait(lambda: runner.idle, 60, "the shadow copies still queued")
        # the prediction log writes the comparisons in batches; one that drops records (a slow
        # store: counted in its metrics) leaves the summary short rather than the demo stuck
        flushed = time.monotonic() + 10
        while True:
            shadow = _shadow_summary(ws, dep.model_name, cand_version, dep.live_version, since)
            if shadow["compared"] >= runner.recorded or time.monotonic() > flushed:
                break
            time.sleep(0.05)
        shadow["shed"] = sum(runner.counts.get(k, 0) for k in ("shed_busy", "shed_full"))
        echo(
            f"shadow: {shadow['compared']} requests compared; agreement with live (F1@0.5) "
            f"{shadow['mean_f1']}, candidate {shadow['candidate_ms']} ms per image, "
            f"{shadow['errors']} errors"
            + (f", {shadow['shed']} copies shed while it was behind" if shadow["shed"] else "")
        )
        dep = deps.start_canary(
            ws,
            deployment,
            cand_version,
            steps=steps,
            min_requests=step_min_requests,
            min_seconds=step_min_seconds,
            gates=gates,
            actor="human:demo",
        )
        echo(
            f"canary: {cand_ref} on {', '.join(f'{s:g}%' for s in dep.steps)} of clients; each "
            f"step needs {step_min_requests} requests, {step_min_seconds:g} s and every gate "
            "passing"
        )
        seen = len(deps.history(ws, deployment))
        deadline = time.monotonic() + timeout_s
        outcome = "timeout"
        with _Traffic(server.url, images, clients) as traffic:
            while time.monotonic() < deadline:
                time.sleep(0.2)
                events = deps.history(ws, deployment)
                for e in events[seen:]:
                    echo(_event_text(e))
                seen = len(events)
                dep = deps.get(ws, deployment)
                if dep.state in ("promoted", "rolled_back"):
                    outcome = dep.state
                    break
        events = deps.history(ws, deployment)
        for e in events[seen:]:
            echo(_event_text(e))
        last = events[-1]
        result = {
            "outcome": outcome,
            "reason": last["reason"] if outcome != "timeout" else f"no decision in {timeout_s} s",
            "live": dep.live_ref,
            "live_before": f"{dep.model_name}@v{live_before}",
            "candidate": cand_ref,
            "shadow": shadow,
            "events": deps.history(ws, deployment),
            "requests": traffic.sent,
            "failed_requests": traffic.failed,
            "answered_by": dict(traffic.by_reason),
        }
        echo(
            {
                "promoted": f"promoted: {cand_ref} is live",
                "rolled_back": f"rolled back: {dep.live_ref} stays live; {result['reason']}",
                "timeout": f"no decision within {timeout_s:g} s: {dep.state}",
            }[outcome]
        )
        return result
    finally:
        server.stop()
        served.close()


def _event_text(e: Mapping[str, Any]) -> str:
    at = dt.datetime.fromisoformat(e["at"]).strftime("%H:%M:%S")
    step = f" step {e['step']}" if e["kind"] in ("advance", "hold") else ""
    return f"  {at} {e['kind']}{step} -> {e['to_state']} by {e['actor']}: {e['reason'] or ''}"


def _wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            from detops.errors import ServeError

            raise ServeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class _Loopback:
    """uvicorn on 127.0.0.1 (ephemeral port) in a thread; ``stop()`` shuts it down."""

    def __init__(self, app: Any) -> None:
        import httpx
        import uvicorn

        from detops.serve.server import tcp_socket

        self._sock = tcp_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="error", access_log=False, lifespan="on")
        self._uv = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._uv.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()
        with httpx.Client(base_url=self.url, timeout=5) as c:

            def ready() -> bool:
                try:
                    return bool(self._uv.started) and c.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            try:
                _wait(ready, 120, "the server to be ready")
            except Exception:
                self.stop()
                raise

    def stop(self) -> None:
        self._uv.should_exit = True
        self._thread.join(30)
        self._sock.close()
