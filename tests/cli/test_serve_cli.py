"""``detops serve`` as a user runs it: a real process on a loopback port."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys

import httpx

from detops.model.registry import register_model, set_alias
from detops.workspace import Workspace, init_workspace
from tests.serve.conftest import image_bytes, mean_box_onnx, spec, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_help_does_not_import_the_server_stack(detops):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "detops", "serve", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "--max-queue-delay-ms" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    assert not imported & {"fastapi", "uvicorn", "onnxruntime", "torch"}


def test_serve_without_a_model_says_how_to_pick_one(detops, tmp_path):
    init_workspace(tmp_path)
    proc = detops("serve", "-w", str(tmp_path), check=False)
    assert proc.returncode == 2 and "--model NAME@ALIAS" in proc.stderr


def test_serve_answers_detect_and_stops_cleanly(tmp_path):
    root = init_workspace(tmp_path / "ws")
    ws = Workspace(root)
    register_model(ws, "det", mean_box_onnx(), spec())
    set_alias(ws, "det@v1", "production")
    ws.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETOPS_")}
    env["DETOPS_SERVE_MAX_BATCH_SIZE"] = "4"  # env beneath flags
    proc = subprocess.Popen(
        [sys.executable, "-m", "detops", "serve", "-w", str(root), "--model", "det@production",
         "--port", str(port), "--max-queue", "16"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:

            def ready() -> bool:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    return c.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=60, what="detops serve to be ready")
            r = c.post("/v1/detect", content=image_bytes(), headers={"content-type": "image/jpeg"})
            assert r.status_code == 200 and r.json()["model"] == {"name": "det", "version": 1}
            [m] = c.get("/v1/models").json()
            assert m["max_batch_size"] <= 4
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "det@production on http://127.0.0.1" in err
    # what batch_policy auto chose, in the server's own log line as at /v1/models
    [loaded] = [line for line in err.splitlines() if "loaded det@v1" in line]
    assert loaded.startswith("INFO") and f"batching {m['batch_policy']} (auto: " in loaded
    assert f"{m['batch_gain']:.3f}x" in loaded and f"{m['lanes']} lane(s)" in loaded


def test_the_servers_own_lines_follow_log_level_but_show_at_the_default():
    from detops.serve.server import configure_logging

    logger = logging.getLogger("detops")
    level, handlers = logger.level, list(logger.handlers)
    try:
        expected_levels = {
            "warning": logging.INFO,  # the default: loads, swaps and decisions still show
            "info": logging.INFO,
            "debug": logging.DEBUG,
            "trace": logging.DEBUG,
            "error": logging.ERROR,
            "critical": logging.CRITICAL,
        }
        for given, expected in expected_levels.items():
            configure_logging(given)
            assert logger.level == expected, given
    finally:
        logger.setLevel(level)
        logger.handlers[:] = handlers
