"""Canary rollouts against a real server: a healthy candidate is promoted through every step;
slower, erroring and worse-detecting candidates are rolled back automatically, with the reason
and the values that decided recorded, and stop getting traffic within a second."""

from __future__ import annotations

import pytest

from detops.model.registry import get_model
from detops.serve import deployments as deps
from tests.serve import rollout_graphs as graphs
from tests.serve.conftest import wait_until
from tests.serve.deploy_helpers import HEALTHY_GATES, TEST_GATES, Load, serve_deployment, wait_state


def test_a_healthy_candidate_is_promoted_through_every_step(make_ws, running_server):
    server = serve_deployment(make_ws, running_server, [graphs.healthy()])
    ws = server.ws
    with Load(server.url, threads=4) as load:
        load.wait_for(20)
        # few samples per step keep the 1% step short; a p95 needs 20 samples, so latency is
        # left to the slower-candidate test and tests/monitor/test_gates.py
        gates = {**HEALTHY_GATES, "min_samples": 4}
        deps.start_canary(
            ws, "prod", "v2", steps="1,5,25,50,100", min_requests=4, min_seconds=0.1, gates=gates
        )
        dep = wait_state(ws, ("promoted", "rolled_back"), timeout=60)
        promoted_at = _ts(deps.history(ws, "prod")[-1]["at"])
        wait_until(lambda: len(load.since(promoted_at + 0.5)) >= 20, 30, "answers after")
    assert dep.state == "promoted", deps.history(ws, "prod")[-1]["reason"]
    assert (dep.live_version, dep.previous_version, dep.candidate_version) == (2, 1, None)
    assert get_model(ws, "det@production").version == 2
    decisions = [e for e in deps.history(ws, "prod") if e["decision"] in ("advance", "promote")]
    # one decision per judged step (1, 5, 25, 50%); passing 50% is the promotion to 100%
    assert [(e["decision"], e["step"]) for e in decisions] == [
        ("advance", 1), ("advance", 2), ("advance", 3), ("promote", 4),
    ]  # fmt: skip
    for e in decisions:
        assert e["actor"].startswith("controller:") and e["reason"] == "all gates passed"
        assert e["measured"]["candidate"]["requests"] >= 4
        assert e["thresholds"]["step"] == {"min_requests": 4, "min_seconds": 0.1}
    assert not load.errors and {a.status for a in load.answers} == {200}
    assert {(a.reason, a.version) for a in load.answers} <= {
        ("live", 1),
        ("canary", 2),
        ("live", 2),
    }
    assert any(a.reason == "canary" for a in load.answers)
    after = load.since(promoted_at + 0.5)
    assert after and all((a.reason, a.version) == ("live", 2) for a in after)
    metrics = server.client.get("/metrics").text
    assert 'detops_rollout_decisions_total{decision="promote",reason="gates_passed"} 1.0' in metrics
    assert 'detops_rollout_state{deployment="prod",state="promoted"} 1.0' in metrics


def _ts(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()


BAD = [
    # (candidate graph, the gates that may fail it: at least one does, no other)
    pytest.param(graphs.slow, {"latency_p95"}, id="slower"),
    pytest.param(graphs.erroring, {"error_rate"}, id="errors"),
    pytest.param(graphs.empty, {"no_detection_rate", "boxes_per_image"}, id="nothing"),
    pytest.param(
        graphs.random_boxes, {"boxes_per_image", "class_mix", "mean_confidence"}, id="random-boxes"
    ),
]


@pytest.mark.parametrize(("graph", "may_fail"), BAD)
def test_a_bad_candidate_is_rolled_back_with_its_reason(make_ws, running_server, graph, may_fail):
    server = serve_deployment(make_ws, running_server, [graph()])
    ws = server.ws
    with Load(server.url, threads=4) as load:
        load.wait_for(20)
        deps.start_canary(
            ws, "prod", "v2", steps="50,100", min_requests=1000, min_seconds=60, gates=TEST_GATES
        )
        dep = wait_state(ws, ("rolled_back", "promoted"), timeout=60)
        decided = _ts(deps.history(ws, "prod")[-1]["at"])
        wait_until(lambda: len(load.since(decided + 1.0)) >= 20, 30, "answers after")
    assert dep.state == "rolled_back" and dep.live_version == 1 and dep.candidate_version is None
    event = deps.history(ws, "prod")[-1]
    assert (event["kind"], event["decision"], event["candidate_version"]) == (
        "rollback",
        "rollback",
        2,
    )
    failed = {g for g, r in event["measured"]["gates"].items() if r["status"] == "fail"}
    assert failed and failed <= may_fail
    for gate in failed:  # the reason names it, with the values and thresholds that decided
        assert gate in event["reason"]
        assert event["thresholds"][gate]
    assert get_model(ws, "det@production").version == 1
    # within a second of the decision, no request is sent to the candidate any more
    late = [a for a in load.answers if a.reason == "canary" and a.sent > decided + 1.0]
    assert late == []
    after = [a for a in load.answers if a.sent > decided + 1.0]
    assert after and all((a.status, a.reason, a.version) == (200, "live", 1) for a in after)
    # only the erroring candidate failed client requests, and only while it had traffic
    failures = [a for a in load.answers if a.status != 200]
    if graph is not graphs.erroring:
        assert failures == []
    assert all(a.status == 500 and a.sent <= decided + 1.0 for a in failures)
    assert not load.errors


def test_too_little_data_holds_the_step_and_never_passes(make_ws, running_server):
    server = serve_deployment(make_ws, running_server, [graphs.healthy()])
    ws = server.ws
    deps.start_canary(ws, "prod", "v2", steps="10,100", min_requests=50, min_seconds=0.2,
                      gates=HEALTHY_GATES)  # fmt: skip
    dep = wait_state(ws, ("insufficient_data",), timeout=20)
    assert dep.share == 0.1 and dep.step == 0  # the step holds its share
    hold = deps.history(ws, "prod")[-1]
    assert hold["decision"] == "hold" and "candidate 0/50 requests" in hold["reason"]
    # with no traffic it stays there: no further decision, no promotion
    with Load(server.url, threads=1, pause_s=0.5):
        wait_until(lambda: server.service.router.agent.last_report is not None, 10, "a report")
        report = server.service.router.agent.last_report
    assert report["verdict"] == "insufficient_data"
    assert deps.get(ws, "prod").state == "insufficient_data"
    assert [e["decision"] for e in deps.history(ws, "prod")].count("hold") == 1
    # traffic arrives: the step passes and the canary moves on
    with Load(server.url, threads=4):
        dep = wait_state(ws, ("promoted", "rolled_back"), timeout=60)
    assert dep.state == "promoted"
