"""``detops runs list|show|compare`` on runs recorded in a real store."""

from __future__ import annotations

import json

from detops.model.tracking import RunRecorder
from detops.workspace import Workspace, init_workspace


def _record(ws: Workspace, lr: float, ap: float, status: str = "finished") -> str:
    rec = RunRecorder(ws, dataset="d@v1", dataset_digest="ab" * 32, params={"lr": lr, "seed": 0})
    rec.log_epoch({"epoch": 0, "loss": 2.0})
    rec.log_epoch({"epoch": 1, "loss": 1.0})
    rec.finish({"coco": {"AP": ap, "AP50": ap + 0.2}} if status == "finished" else None,
               status=status, error=None if status == "finished" else "boom")
    return rec.id


def test_runs_list_show_compare(detops, tmp_path):
    ws = Workspace(init_workspace(tmp_path / "ws"))
    a, b = _record(ws, 0.01, 0.5), _record(ws, 0.02, 0.6)
    failed = _record(ws, 0.03, 0.0, status="failed")
    ws.close()
    cwd = tmp_path / "ws"
    rows = json.loads(detops("runs", "list", "--json", cwd=cwd).stdout)
    assert [r["id"] for r in rows] == [a, b, failed]
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    shown = json.loads(detops("runs", "show", a[:6], "--json", cwd=cwd).stdout)  # unique prefix
    assert shown["id"] == a and [m["loss"] for m in shown["metrics"]] == [2.0, 1.0]
    assert "boom" in detops("runs", "show", failed, cwd=cwd).stdout
    cmp = json.loads(detops("runs", "compare", a, b, "--json", cwd=cwd).stdout)
    assert cmp["params"] == {"lr": {a: 0.01, b: 0.02}}  # only what differs
    by_metric = {r["metric"]: r for r in cmp["metrics"]}
    assert by_metric["AP"][a] == 0.5 and by_metric["AP"][b] == 0.6
    assert abs(by_metric["AP"]["delta"] - 0.1) < 1e-12
    missing = detops("runs", "show", "zzzz", cwd=cwd, check=False)
    assert missing.returncode == 2 and "run 'zzzz' not found" in missing.stderr
