"""The README's server examples (curl and the Python client), run as written against a real
server: only the address is changed to the test server's."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.serve.conftest import NAMES, image_bytes

README = Path(__file__).resolve().parents[2] / "README.md"
ADDRESS = "http://127.0.0.1:8000"


def _blocks(section: str, lang: str) -> list[str]:
    """The ``lang`` code blocks of the README section whose heading is ``section``."""
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else len(text)]
    return re.findall(rf"```{lang}\n(.*?)```", body, flags=re.S)


def _server_blocks(lang: str) -> list[str]:
    found = [b for b in _blocks("Deploy: the prediction server", lang) if ADDRESS in b]
    assert found, f"no {lang} example against {ADDRESS} in the README's server section"
    return found


def _files(tmp_path: Path) -> None:
    # the files the examples name
    (tmp_path / "image.jpg").write_bytes(image_bytes(96, 72, seed=1))
    (tmp_path / "a.jpg").write_bytes(image_bytes(80, 60, seed=2))
    (tmp_path / "b.png").write_bytes(image_bytes(64, 48, fmt="PNG", seed=3))


def test_the_readme_curl_lines_work_as_written(running_server, tmp_path):
    server = running_server()
    _files(tmp_path)
    commands = [
        c.strip()
        for block in _server_blocks("bash")
        for c in block.replace("\\\n", " ").splitlines()
        if c.strip().startswith("curl ")
    ]
    assert len(commands) >= 2
    outputs = []
    for command in commands:
        argv = shlex.split(command.replace(ADDRESS, server.url))
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        outputs.append(json.loads(done.stdout))
    single = next(o for o in outputs if "detections" in o)
    assert single["image"] == {"width": 96, "height": 72}
    assert single["detections"] and all(d["score"] >= 0.4 for d in single["detections"])
    batch = next(o for o in outputs if "results" in o)
    got = [(r["filename"], r["status"], r["result"]["image"]) for r in batch["results"]]
    assert got == [
        ("a.jpg", 200, {"width": 80, "height": 60}),
        ("b.png", 200, {"width": 64, "height": 48}),
    ]


def test_the_readme_python_client_works_as_written(running_server, tmp_path):
    server = running_server()
    _files(tmp_path)
    (code,) = [b for b in _server_blocks("python") if "httpx" in b]
    done = subprocess.run(
        [sys.executable, "-c", code.replace(ADDRESS, server.url)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines  # one line per detection: label, score, box
    for line in lines:
        label, score, box = line.split(" ", 2)
        assert label in NAMES and 0 <= float(score) <= 1
        assert len(json.loads(box)) == 4
