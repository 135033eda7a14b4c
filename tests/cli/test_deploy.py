"""``detops deploy …`` as a user types it: real processes, a real store."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from detops.model.registry import register_model, set_alias
from detops.workspace import Workspace, init_workspace
from tests.serve import rollout_graphs as graphs
from tests.serve.conftest import mean_box_onnx, spec


@pytest.fixture()
def root(tmp_path):
    root = init_workspace(tmp_path / "ws")
    ws = Workspace(root)
    register_model(ws, "det", mean_box_onnx(), spec())
    set_alias(ws, "det@v1", "production")
    register_model(ws, "det", graphs.healthy(), spec())
    register_model(ws, "det", graphs.empty(), spec())
    ws.close()
    return root


def test_help_does_not_import_the_server_stack():
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "detops", "deploy", "canary", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "--step-min-requests" in proc.stdout
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}
    assert not imported & {"fastapi", "uvicorn", "onnxruntime", "torch", "scipy"}


def test_a_deployment_from_create_to_rollback(detops, root):
    w = ("-w", str(root))
    out = detops("deploy", "create", "prod", "--model", "det@production", "--automation",
                 "partial", *w).stdout  # fmt: skip
    assert out.strip() == "deployment prod: idle, live det@v1 [revision 1]"
    gates = root / "gates.yaml"
    gates.write_text("min_samples: 20\nlatency_p95:\n  max_ratio: 2.0\n")
    out = detops("deploy", "canary", "prod", "v2", "--steps", "10,50,100", "--step-min-requests",
                 "50", "--step-min-seconds", "30", "--gates", str(gates), *w).stdout  # fmt: skip
    assert "canary, live det@v1, det@v2 on 10% of clients (step 1/3)" in out
    status = json.loads(detops("deploy", "status", "prod", "--json", *w).stdout)
    assert (status["state"], status["share"], status["automation"]) == ("canary", 0.1, "partial")
    assert status["gates"]["min_samples"] == 20 and status["gates"]["latency_p95"]["max_ratio"] == 2
    assert status["controller"] is None  # no server serves it yet
    text = detops("deploy", "status", "prod", *w).stdout
    assert "each needs 50 requests and 30 s and every gate passing" in text
    out = detops("deploy", "pause", "prod", *w).stdout
    assert out.startswith("deployment prod: paused")
    detops("deploy", "resume", "prod", *w)
    out = detops("deploy", "promote", "prod", *w).stdout
    assert "promoted, live det@v2 (previous v1" in out
    detops("deploy", "rollback", "prod", *w)
    history = json.loads(detops("deploy", "history", "prod", "--json", *w).stdout)
    assert [e["kind"] for e in history] == [
        "create", "canary", "pause", "resume", "promote", "rollback",
    ]  # fmt: skip
    assert all(e["actor"].startswith("human:") for e in history)
    assert history[-1]["live_version"] == 1 and history[-2]["candidate_version"] == 2
    text = detops("deploy", "history", "prod", *w).stdout
    assert "promote" in text and "canary -> promoted" in text
    out = detops("deploy", "bluegreen", "prod", "det@v3", *w).stdout
    assert "live det@v1 (blue), det@v3 (green) warm, no traffic" in out
    listed = json.loads(detops("deploy", "list", "--json", *w).stdout)
    assert [(d["name"], d["state"]) for d in listed] == [("prod", "bluegreen")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("promote", "prod"), "cannot promote in deployment 'prod': no candidate (state idle)"),
        (("canary", "prod", "v7"), "model det@v7 not found"),
        (("canary", "prod", "v2", "--steps", "50,10"), "must increase"),
        (("canary", "prod", "v2", "--gates", "GATES"), "unknown key 'latency_p95.max_ratoi'"),
        (("status", "nope"), "no deployment 'nope' (deployments: prod)"),
        (("create", "prod", "--model", "det@production"), "'prod' already exists"),
        (("create", "x", "--model", "det@staging"), "no alias 'staging'"),
        (("shadow", "prod", "v2", "--sample", "1.5"), "expected a share in (0, 1]"),
        (("canary", "prod", "v2", "--step-min-seconds", "nan"), "expected 0 or more"),
        (("canary", "prod", "99999999999999999999"), "version too large"),
    ],
)
def test_mistakes_are_named(detops, root, args, message):
    gates = root / "bad-gates.yaml"
    gates.write_text("latency_p95:\n  max_ratoi: 2\n")
    from detops.serve.deployments import create

    ws = Workspace(root)  # created in-process: one subprocess per case
    create(ws, "prod", "det@production")
    ws.close()
    args = tuple(str(gates) if a == "GATES" else a for a in args)
    proc = detops("deploy", *args, "-w", str(root), check=False)
    assert proc.returncode == 2, proc.stdout
    assert message in proc.stderr
