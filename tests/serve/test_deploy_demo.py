"""``demo_rollout`` (what ``detops quickstart`` runs): shadow, then canary, to a decision."""

from __future__ import annotations

from detops.model.registry import get_model, register_model
from detops.serve.rollout import demo_rollout
from tests.serve import rollout_graphs as graphs
from tests.serve.conftest import image_bytes, spec

FAST = dict(shadow_requests=20, steps="25,50,100", step_min_requests=10, step_min_seconds=0.2)


def test_demo_promotes_a_healthy_candidate_and_rolls_back_a_blind_one(make_ws):
    ws = make_ws()
    register_model(ws, "det", graphs.healthy(), spec())
    register_model(ws, "det", graphs.empty(), spec())
    images = [image_bytes(64, 64, seed=i) for i in range(8)]
    lines: list[str] = []
    gates = {"min_samples": 10, "latency_p95": {"enabled": False}}  # a p95 needs more requests
    good = demo_rollout(ws, "prod", "v2", model="det@production", echo=lines.append,
                        images=images, gates=gates, **FAST)  # fmt: skip
    assert good["outcome"] == "promoted", good["reason"]
    assert (good["live_before"], good["live"], good["candidate"]) == ("det@v1", "det@v2", "det@v2")
    assert good["shadow"]["compared"] >= 20 and good["shadow"]["mean_f1"] == 1.0
    assert good["failed_requests"] == 0 and good["answered_by"]["canary"] > 0
    assert [e["kind"] for e in good["events"]][-1] == "promote"
    assert lines[0] == "created deployment prod serving det@v1"
    assert any("requests compared; agreement with live (F1@0.5) 1.0" in line for line in lines)
    assert lines[-1] == "promoted: det@v2 is live"
    assert get_model(ws, "det@production").version == 2

    lines.clear()
    bad = demo_rollout(ws, "prod", 3, echo=lines.append, images=images, gates=gates, **FAST)
    assert bad["outcome"] == "rolled_back" and bad["live"] == "det@v2"
    assert bad["shadow"]["mean_f1"] == 0.0
    assert bad["reason"].startswith("agreement: mean F1@0.5 with live 0.000")
    assert lines[-1].startswith("rolled back: det@v2 stays live; agreement")
    again = demo_rollout(ws, "prod", "det@v2", echo=lines.append, images=images)
    assert again["outcome"] == "already_live" and lines[-1].startswith("det@v2 is already live")
