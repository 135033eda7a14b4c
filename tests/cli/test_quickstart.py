"""``detops quickstart`` end to end: data, a short training run, registry, then serving."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_quickstart_runs_the_life_cycle_and_serves(tmp_path, detops):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETOPS_")}
    log = tmp_path / "quickstart.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "detops", "quickstart", "--dir", str(tmp_path / "qs"),
             "--n", "40", "--train-minutes", "0.2", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )
    try:
        deadline = time.monotonic() + 600
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready:
                break
            time.sleep(0.5)
        text = log.read_text()
        assert ready, text
        for expected in ("registered shapes@v1", "0 errors", "det@v1 is det@production",
                         "mAP@0.5", "registered shapes-dusk@v1", "registered det@v2",
                         "shadow", "canary", "outcome: ", "curl -s -X POST"):
            assert expected in text, text
        outcome = re.search(r"outcome: (\w+).*det@production is now det@v(\d+)", text)
        assert outcome is not None, text
        assert outcome.group(1) in ("promoted", "rolled_back"), text
        production = int(outcome.group(2))
        assert production == (2 if outcome.group(1) == "promoted" else 1), text
        assert ", 0 failed)" in text, text
        image = Path(re.search(r"--data-binary @(\S+)", text).group(1))
        r = httpx.post(f"http://127.0.0.1:{port}/v1/detect", content=image.read_bytes(),
                       headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == {"name": "det", "version": production}
        assert body["route"]["reason"] == "live", body
        assert body["image"] == {"width": 320, "height": 320}
    finally:
        proc.terminate()
        proc.wait(timeout=60)

    again = detops("quickstart", "--dir", str(tmp_path / "qs"), "--n", "40", "--no-serve")
    assert "already registered as shapes@v1" in again.stdout
    assert "already registered as shapes-dusk@v1" in again.stdout
    assert "reusing det@v2" in again.stdout
    assert "outcome: " in again.stdout
    assert "reusing det@v1" in again.stdout
