"""Shadow mode, blue-green switches and manual promote / rollback against a real server under
concurrent load: no client request fails, and every answer says which version answered and why."""

from __future__ import annotations

import time

from sqlalchemy import select

from detops.serve import deployments as deps
from detops.store.schema import predictions, shadow_comparisons
from tests.serve import rollout_graphs as graphs
from tests.serve.conftest import wait_until
from tests.serve.deploy_helpers import (
    AUTH,
    HEALTHY_GATES,
    Load,
    serve_deployment,
    wait_state,
)


def _comparisons(ws, version):
    with ws.db.read() as conn:
        q = select(shadow_comparisons).where(shadow_comparisons.c.candidate_version == version)
        return [r._asdict() for r in conn.execute(q)]


def _loaded(server, key):
    return key in server.service.router.agent.status()["loaded"]


def test_shadow_copies_never_reach_clients_and_are_compared(make_ws, running_server):
    server = serve_deployment(make_ws, running_server, [graphs.healthy(), graphs.empty()])
    ws = server.ws
    deps.start_shadow(ws, "prod", "v2")
    wait_until(lambda: _loaded(server, "det@v2/shadow"), 20, "the shadow copy")
    with Load(server.url, threads=1) as load:  # one client: nothing is shed
        wait_until(lambda: len(_comparisons(ws, 2)) >= 15, 20, "shadow comparisons of v2")
        # switch the shadow to a candidate that detects nothing
        deps.start_shadow(ws, "prod", "v3", sample=1.0)
        wait_until(lambda: len(_comparisons(ws, 3)) >= 15, 20, "shadow comparisons of v3")
    assert {(a.status, a.reason, a.version) for a in load.answers} == {(200, "live", 1)}
    good, bad = _comparisons(ws, 2), _comparisons(ws, 3)
    # healthy: the same single box, 2.5% larger -> matched at IoU 0.5
    assert {(c["f1"], c["n_live"], c["n_candidate"], c["n_matched"]) for c in good} == {
        (1.0, 1, 1, 1)
    }
    assert all(c["class_tvd"] == 0 and c["candidate_latency_ms"] > 0 for c in good)
    assert all(c["live_mean_score"] == c["candidate_mean_score"] for c in good)
    assert {(c["f1"], c["n_candidate"], c["class_tvd"]) for c in bad} == {(0.0, 0, None)}
    assert all(c["deployment"] == "prod" and c["live_version"] == 1 for c in good + bad)
    with ws.db.read() as conn:
        rows = conn.execute(
            select(predictions.c.model_version, predictions.c.n_boxes).where(
                predictions.c.route == "shadow"
            )
        ).all()
    assert {tuple(r) for r in rows} == {(2, 1), (3, 0)}
    metrics = server.client.get("/metrics").text
    assert 'detops_shadow_requests_total{outcome="compared"}' in metrics

    # the agreement gate uses the shadow data: a canary of v3 is rolled back on it
    gates = {**HEALTHY_GATES, "no_detection_rate": {"enabled": False},
             "boxes_per_image": {"enabled": False}}  # fmt: skip
    with Load(server.url, threads=4):
        deps.start_canary(ws, "prod", "v3", steps="50,100", min_requests=1000, gates=gates)
        dep = wait_state(ws, ("rolled_back", "promoted"))
    assert dep.state == "rolled_back"
    event = deps.history(ws, "prod")[-1]
    assert event["reason"].startswith("agreement: mean F1@0.5 with live 0.000")


def test_shadow_work_is_shed_first_under_load(make_ws, running_server):
    flags = {"rollout.shadow_queue": 1, "rollout.shadow_concurrency": 1}
    server = serve_deployment(make_ws, running_server, [graphs.slow()], flags=flags)
    deps.start_shadow(server.ws, "prod", "v2")
    wait_until(lambda: _loaded(server, "det@v2/shadow"), 20, "the shadow copy")
    with Load(server.url, threads=4) as load:
        load.wait_for(150)
    counts = server.service.router.shadow.counts
    assert counts.get("shed_full", 0) + counts.get("shed_busy", 0) > 0
    # the (niced) shadow worker may have been starved under load; idle, it finishes its queue
    wait_until(lambda: counts.get("compared", 0) > 0, 20, "a shadow comparison")
    assert {(a.status, a.reason) for a in load.answers} == {(200, "live")}


def test_blue_green_switches_and_back_without_failing_a_request(make_ws, running_server):
    server = serve_deployment(
        make_ws, running_server, [graphs.healthy()], flags={"rollout.keep_warm_s": 60}
    )
    ws = server.ws
    with Load(server.url, threads=4) as load:
        load.wait_for(20)
        r = server.client.post("/admin/deployments/prod/bluegreen", json={"candidate": "v2"},
                               headers=AUTH)  # fmt: skip
        assert r.status_code == 200, r.text
        wait_until(lambda: _loaded(server, "det@v2/serve"), 20, "green warm")
        load.wait_for(20)
        assert {a.reason for a in load.answers} <= {"live", "blue"}  # green has no traffic
        # the switch, through this replica: in effect at once
        t_switch = time.time()
        r = server.client.post("/admin/deployments/prod/promote", headers=AUTH)
        assert r.status_code == 200 and r.json()["live_version"] == 2
        wait_until(lambda: _after(load, t_switch, "green"), 10, "green answers")
        assert _loaded(server, "det@v1/serve")  # blue stays warm for the rollback
        # the rollback, written to the store by someone else (the CLI): followed within a poll
        dep = deps.rollback(ws, "prod", actor="human:test")
        back = _iso(deps.history(ws, "prod")[-1]["at"])
        assert dep.live_version == 1
        wait_until(lambda: len(load.since(back + 1.0)) >= 20, 10, "answers after the rollback")
    assert not load.errors and {a.status for a in load.answers} == {200}
    green = [a for a in load.answers if a.reason == "green"]
    assert green and all(a.version == 2 for a in green)
    assert all(a.version == 1 for a in load.answers if a.reason == "blue")
    # effect within a second of each decision
    assert min(a.sent for a in green) - t_switch < 1.0
    assert all(a.sent < back + 1.0 for a in green)
    assert {a.reason for a in load.since(back + 1.0)} == {"blue"}
    kinds = [(e["kind"], e["actor"]) for e in deps.history(ws, "prod")]
    assert kinds[-3:] == [("bluegreen", "api"), ("promote", "api"), ("rollback", "human:test")]


def _after(load, t, reason):
    return any(a.reason == reason for a in load.since(t))


def _iso(text):
    import datetime as dt

    return dt.datetime.fromisoformat(text).timestamp()


def test_manual_promote_and_rollback_of_a_canary_under_load(make_ws, running_server):
    server = serve_deployment(make_ws, running_server, [graphs.healthy(), graphs.healthy(21.0)])
    ws = server.ws
    hold = {"min_requests": 10**6, "min_seconds": 3600}  # the controller never advances
    keys = [f"camera-{i}" for i in range(40)]
    with Load(server.url, threads=4, keys=keys) as load:
        deps.start_canary(ws, "prod", "v2", steps="50,100", gates=HEALTHY_GATES, **hold)
        wait_until(lambda: _after(load, 0, "canary"), 20, "canary answers")
        load.wait_for(300)  # several answers per client key
        t = time.time()
        r = server.client.post("/admin/deployments/prod/promote", headers=AUTH)
        assert r.status_code == 200 and r.json()["state"] == "promoted"
        t_promoted = time.time()  # applied on this replica before the answer
        load.wait_for(40)
        t_v3 = time.time()
        deps.start_canary(ws, "prod", "v3", steps="50,100", gates=HEALTHY_GATES, **hold)
        wait_until(lambda: _after(load, t_v3, "canary"), 20, "canary of v3")
        r = server.client.post("/admin/deployments/prod/rollback", headers=AUTH)
        assert r.status_code == 200 and r.json()["state"] == "rolled_back"
        t_back = time.time()
        load.wait_for(40)
    assert not load.errors and {a.status for a in load.answers} == {200}
    # sticky: during the canary each client key got one version, whichever replica asked
    # (from the first canary answer's arrival: every request sent after it met the canary's plan)
    first = min(a.received for a in load.answers if a.reason == "canary")
    sides: dict[str, set[int]] = {}
    for a in load.answers:
        if first < a.sent and a.received < t:
            sides.setdefault(a.key, set()).add(a.version)
    mixed = {k: [(round(a.sent - first, 3), a.version, a.reason) for a in load.answers
                 if a.key == k and first < a.sent and a.received < t]
             for k, v in sides.items() if len(v) > 1}  # fmt: skip
    events = [(e["kind"], e["at"]) for e in deps.history(ws, "prod")]
    assert not mixed, (mixed, events, first)
    assert len(sides) == len(keys)
    assert {v for vs in sides.values() for v in vs} == {1, 2}
    promoted = [a for a in load.since(t_promoted) if a.sent < t_v3]
    assert promoted and all(a.version == 2 for a in promoted)  # promoted: v2 for everyone ...
    assert all(a.reason == "live" and a.version == 2 for a in load.since(t_back))  # ... again
    assert deps.get(ws, "prod").live_version == 2


def test_admin_endpoints_need_the_token_and_say_what_is_wrong(make_ws, running_server):
    server = serve_deployment(make_ws, running_server, [graphs.healthy()])
    c = server.client
    assert c.post("/admin/deployments/prod/promote").status_code == 401
    bad = c.post("/admin/deployments/prod/promote", headers={"authorization": "Bearer nope"})
    assert bad.status_code == 403
    r = c.post("/admin/deployments/prod/promote", headers=AUTH)
    assert r.status_code == 409 and "no candidate (state idle)" in r.json()["detail"]
    r = c.post("/admin/deployments/nope/rollback", headers=AUTH)
    assert r.status_code == 404 and "no deployment 'nope'" in r.json()["detail"]
    r = c.post("/admin/deployments/prod/canary", json={"candidate": "v2", "gates": {"x": 1}},
               headers=AUTH)  # fmt: skip
    assert r.status_code == 422 and "unknown key 'x'" in r.json()["detail"]
    r = c.post("/admin/deployments/prod/canary", json={"candidate": "v2", "stesp": "1,100"},
               headers=AUTH)  # fmt: skip
    assert r.status_code == 422  # unknown field in the body
    # numbers no column can hold, NaN and Infinity: refused with a reason, never a 500
    r = c.post("/admin/deployments", json={"name": "c", "model": "det@v99999999999999999999"},
               headers=AUTH)  # fmt: skip
    assert r.status_code == 422 and "version too large" in r.json()["detail"]
    r = c.post("/admin/deployments/prod/canary", json={"candidate": "99999999999999999999"},
               headers=AUTH)  # fmt: skip
    assert r.status_code == 409 and "version too large" in r.json()["detail"]
    json_headers = {**AUTH, "content-type": "application/json"}
    for path, body in (
        ("bluegreen", b'{"candidate": "v2", "keep_warm_s": Infinity}'),
        ("bluegreen", b'{"candidate": "v2", "keep_warm_s": NaN}'),
        ("shadow", b'{"candidate": "v2", "sample": NaN}'),
        ("canary", b'{"candidate": "v2", "step_min_seconds": Infinity}'),
    ):
        r = c.post(f"/admin/deployments/prod/{path}", content=body, headers=json_headers)
        assert r.status_code == 422, (path, body, r.text)
    r = c.post("/admin/deployments", json={"name": "b", "model": "det@v1"}, headers=AUTH)
    assert r.status_code == 201 and r.json()["live"] == "det@v1"
    status = c.get("/admin/deployments/prod", headers=AUTH).json()
    assert status["state"] == "idle" and status["replica"]["plan"]["live"] == 1
    assert status["events"][0]["kind"] == "create"
    wait_until(
        lambda: c.get("/admin/deployments/prod", headers=AUTH).json()["replica"]["controller"]
    )
    assert [d["name"] for d in c.get("/admin/deployments", headers=AUTH).json()] == ["b", "prod"]
    r = c.post("/admin/deployments/prod/automation", json={"level": "partial"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["automation"] == "partial"
    assert server.service.automation.level == "partial"  # applied to this server at once


def test_the_old_colour_is_unloaded_after_keep_warm_and_can_come_back(make_ws, running_server):
    server = serve_deployment(make_ws, running_server, [graphs.healthy()])
    ws = server.ws
    deps.start_bluegreen(ws, "prod", "v2", keep_warm_s=0.5)
    wait_until(lambda: _loaded(server, "det@v2/serve"), 20, "green warm")
    with Load(server.url, threads=2) as load:
        deps.promote(ws, "prod")
        wait_until(lambda: _after(load, 0, "green"), 10, "green answers")
        wait_until(lambda: not _loaded(server, "det@v1/serve"), 10, "blue to be unloaded")
        # a rollback after the warm period loads blue again; green answers meanwhile
        deps.rollback(ws, "prod")
        t = time.time()
        wait_until(lambda: _after(load, t, "blue"), 20, "blue answers again")
        load.wait_for(20)
    assert not load.errors and {a.status for a in load.answers} == {200}
    assert {a.reason for a in load.answers} <= {"blue", "green"}
    assert server.service.router.agent.status()["loaded"] == ["det@v1/serve"]
