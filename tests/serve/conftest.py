"""Fixtures for the server tests: workspaces with tiny registered models, real running servers.

``running_server(...)`` starts uvicorn on a free loopback port in a thread, polls ``/readyz``
until the model is loaded and warmed (with a deadline), and stops every server it started.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
from PIL import Image

from detops.model.registry import register_model, set_alias
from detops.serve.app import build_service, create_app
from detops.serve.server import tcp_socket
from detops.serve.service import Service
from detops.workspace import Workspace, init_workspace
from tests.model.conftest import make_const_model, make_mean_box_model, rows

NAMES = ["person", "car", "dog"]
SIZE = 64  # network input: small graphs keep the suite fast


def spec(**kw: Any) -> dict[str, Any]:
    return {"class_names": NAMES, "input_width": SIZE, "input_height": SIZE, **kw}


def mean_box_onnx(gain: float = 20.0, score: float = 0.9) -> bytes:
    """One detection whose size depends on the image (see make_mean_box_model)."""
    return make_mean_box_model(width=SIZE, height=SIZE, gain=gain, score=score)


def const_onnx(known=(((4.0, 8.0, 20.0, 30.0), 0.8, 1),)) -> bytes:
    return make_const_model({"detections": rows(known, 1)}, width=SIZE, height=SIZE)


def image_bytes(
    w: int = 80, h: int = 60, fmt: str = "JPEG", value: int | None = None, seed: int = 0
) -> bytes:
    rng = np.random.default_rng(seed)
    arr = (
        np.full((h, w, 3), value, np.uint8)
        if value is not None
        else rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        pause.wait(0.02)


@pytest.fixture()
def make_ws(tmp_path: Path) -> Iterator[Callable[..., Workspace]]:
    """Factory: a workspace with ``det@v1`` (mean-box graph) aliased ``production``."""
    opened: list[Workspace] = []

    def make(flags: dict[str, Any] | None = None, onnx: bytes | None = None) -> Workspace:
        root = tmp_path / f"ws{len(opened)}"
        if not (root / "detops.yaml").exists():
            init_workspace(root)
            w = Workspace(root)
            register_model(w, "det", onnx or mean_box_onnx(), spec())
            set_alias(w, "det@v1", "production")
            w.close()
        # fixed choices (auto measures the machine): tests that need others say so
        ws = Workspace(root, flags={"serve.batch_policy": "greedy", "serve.lanes": 1,
                                    **(flags or {})})
        opened.append(ws)
        return ws

    yield make
    for ws in opened:
        ws.close()


@dataclass
class Server:
    url: str
    service: Service
    client: httpx.Client
    _uv: uvicorn.Server
    _thread: threading.Thread
    _sock: socket.socket
    ws: Workspace | None = None

    def stop(self) -> None:
        self.client.close()
        self._uv.should_exit = True
        self._thread.join(30)
        self._sock.close()
        assert not self._thread.is_alive(), "server thread did not stop"


def start_server(service: Service, ready: bool = True) -> Server:
    app = create_app(service)
    sock = tcp_socket("127.0.0.1", 0)  # proto IPPROTO_TCP: asyncio sets TCP_NODELAY
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="error", access_log=False, lifespan="on")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=30)
    server = Server(url, service, client, uv, thread, sock)
    try:
        wait_until(lambda: uv.started, what="uvicorn start-up")
        if ready:

            def is_ready() -> bool:
                return client.get("/readyz").status_code == 200

            wait_until(is_ready, what="/readyz")
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture()
def running_server(make_ws) -> Iterator[Callable[..., Server]]:
    """Factory: ``running_server(flags={...}, service=None, ready=True)`` -> a live Server."""
    started: list[Server] = []

    def run(
        flags: dict[str, Any] | None = None,
        *,
        ws: Workspace | None = None,
        service: Service | None = None,
        follow: str = "det@production",
        ready: bool = True,
    ) -> Server:
        if service is None:
            ws = ws or make_ws(flags)
            service = build_service(ws, follow)
        server = start_server(service, ready)
        server.ws = ws
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()
