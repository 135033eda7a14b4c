"""Deployments in the store: every transition, its event, bad transitions, leases."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
from sqlalchemy import select, update

from detops.errors import (
    DeploymentExists,
    DeploymentNotFound,
    GatesConfigError,
    InvalidReference,
    InvalidTransition,
    StaleDeployment,
)
from detops.model.registry import alias_history, get_model, register_model
from detops.serve import deployments as deps
from detops.serve.rollout import plan_for, wanted_versions
from detops.serve.routing import client_unit
from detops.store.schema import leases
from tests.serve.conftest import const_onnx, spec


@pytest.fixture()
def ws(make_ws):
    w = make_ws()
    for _ in range(2):  # det@v2, det@v3 beside det@v1 (production)
        register_model(w, "det", const_onnx(), spec())
    return w


def test_create_and_read(ws):
    dep = deps.create(ws, "prod", "det@production", automation="partial", actor="human:ana")
    assert (dep.model_name, dep.alias, dep.live_version, dep.state, dep.revision) == (
        "det", "production", 1, "idle", 1
    )  # fmt: skip
    assert deps.get(ws, "prod") == dep
    assert deps.revision_of(ws, "prod") == 1 and deps.revision_of(ws, "nope") is None
    [event] = deps.history(ws, "prod")
    assert (event["kind"], event["to_state"], event["actor"]) == ("create", "idle", "human:ana")
    with pytest.raises(DeploymentExists, match="'prod' already exists"):
        deps.create(ws, "prod", "det@production")
    with pytest.raises(DeploymentNotFound, match="no deployment 'prd' \\(deployments: prod\\)"):
        deps.get(ws, "prd")
    with pytest.raises(InvalidTransition, match="automation level 'fully'"):
        deps.create(ws, "other", "det@production", automation="fully")
    with pytest.raises(InvalidReference, match="version too large"):
        deps.create(ws, "other", "det@v99999999999999999999")


BAD = [
    # (action, arguments, message)
    ("promote", {}, "cannot promote in deployment 'prod': no candidate \\(state idle\\)"),
    ("rollback", {}, "nothing to roll back"),
    ("pause", {}, "only a canary can be paused"),
    ("resume", {}, "it is not paused"),
    ("start_canary", {"candidate": "v9"}, "cannot canary v9 .*model det@v9 not found"),
    ("start_canary", {"candidate": "v1"}, "det@v1 .*already the live version"),
    ("start_canary", {"candidate": "other@v2"}, "serves model 'det', not 'other'"),
    ("start_canary", {"candidate": "v2", "steps": "5,1,100"}, "must increase"),
    ("start_canary", {"candidate": "v2", "steps": "1,5"}, "last step must be 100"),
    ("start_canary", {"candidate": "v2", "steps": "a,b"}, "percentages separated by commas"),
    ("start_canary", {"candidate": "v2", "steps": "100"}, "at least one step below 100"),
    ("start_shadow", {"candidate": "v2", "sample": 0}, "expected a share in \\(0, 1\\]"),
    ("start_shadow", {"candidate": "v2", "sample": float("nan")}, "expected a share"),
    # NaN seconds would never be due: the step would hold silently for ever
    ("start_canary", {"candidate": "v2", "min_seconds": float("nan")}, "expected 0 or more"),
    ("start_canary", {"candidate": "v2", "min_seconds": float("inf")}, "expected 0 or more"),
    ("start_bluegreen", {"candidate": "v2", "keep_warm_s": float("nan")}, "expected 0 or more"),
    # a version no INTEGER column can hold is a clear error, not an OverflowError (a 500)
    ("start_canary", {"candidate": "99999999999999999999"}, "version too large"),
    ("start_bluegreen", {"candidate": "det@v2147483648"}, "version too large"),
    ("start_shadow", {"candidate": "v" + "9" * 5000}, "version too large"),
]


@pytest.mark.parametrize(("action", "kwargs", "message"), BAD)
def test_bad_transitions_say_why(ws, action, kwargs, message):
    deps.create(ws, "prod", "det@production")
    kwargs = dict(kwargs)
    args = [kwargs.pop("candidate")] if "candidate" in kwargs else []
    with pytest.raises(InvalidTransition, match=message):
        getattr(deps, action)(ws, "prod", *args, **kwargs)
    assert deps.get(ws, "prod").revision == 1  # nothing half-written
    assert len(deps.history(ws, "prod")) == 1


def test_bad_gates_are_refused_before_anything_changes(ws):
    deps.create(ws, "prod", "det@production")
    with pytest.raises(GatesConfigError, match="unknown key 'latency'"):
        deps.start_canary(ws, "prod", "v2", gates={"latency": {}})
    assert deps.get(ws, "prod").state == "idle"


def test_canary_life_cycle_and_its_events(ws):
    deps.create(ws, "prod", "det@production")
    dep = deps.start_canary(ws, "prod", "2", steps="10,50,100", min_requests=7, min_seconds=3)
    assert (dep.state, dep.candidate_version, dep.steps, dep.share) == (
        "canary", 2, (10.0, 50.0, 100.0), 0.1
    )  # fmt: skip
    assert (dep.min_requests, dep.min_seconds) == (7, 3.0)
    assert dep.gates["latency_p95"]["max_ratio"] == 1.5  # defaults stored with the deployment
    with pytest.raises(InvalidTransition, match="a canary of det@v2 is in progress"):
        deps.start_shadow(ws, "prod", "v3")
    kw = dict(actor="controller:r1", measured={"x": 1}, thresholds={"y": 2})
    dep = deps.hold(ws, "prod", expect_revision=dep.revision, reason="thin", **kw)
    assert dep.state == "insufficient_data" and dep.share == 0.1  # the step holds
    dep = deps.advance(ws, "prod", expect_revision=dep.revision, **kw)
    assert (dep.state, dep.step, dep.share) == ("canary", 1, 0.5)
    with pytest.raises(StaleDeployment, match="changed"):
        deps.advance(ws, "prod", expect_revision=dep.revision - 1, **kw)
    dep = deps.pause(ws, "prod")
    assert dep.state == "paused" and dep.share == 0.5
    dep = deps.resume(ws, "prod")
    assert dep.state == "canary" and dep.step == 1
    dep = deps.advance(ws, "prod", expect_revision=dep.revision, **kw)  # 50% passed: 100%
    assert (dep.state, dep.live_version, dep.candidate_version, dep.previous_version) == (
        "promoted", 2, None, 1
    )  # fmt: skip
    assert dep.step == 2 and dep.share == 0.0
    assert get_model(ws, "det@production").version == 2  # the alias moved with it
    assert alias_history(ws, "det")[-1]["actor"] == "deployment:prod:controller:r1"
    events = deps.history(ws, "prod")
    assert [e["kind"] for e in events] == [
        "create", "canary", "hold", "advance", "pause", "resume", "promote",
    ]  # fmt: skip
    last = events[-1]
    assert (last["decision"], last["candidate_version"], last["live_version"]) == ("promote", 2, 2)
    assert last["measured"] == {"x": 1} and last["thresholds"] == {"y": 2}
    # after a promotion, a rollback switches back (and moves the alias back)
    dep = deps.rollback(ws, "prod", actor="human:bo")
    assert (dep.state, dep.live_version, dep.previous_version) == ("rolled_back", 1, None)
    assert get_model(ws, "det@production").version == 1
    assert deps.history(ws, "prod", limit=1)[0]["candidate_version"] is None


def test_automatic_rollback_records_the_reason(ws):
    deps.create(ws, "prod", "det@production")
    dep = deps.start_canary(ws, "prod", "v3")
    dep = deps.auto_rollback(
        ws,
        "prod",
        expect_revision=dep.revision,
        actor="controller:r1",
        reason="latency_p95: candidate 90 ms vs live 5 ms",
        measured={"gates": {"latency_p95": {"status": "fail"}}},
        thresholds={"latency_p95": {"max_ratio": 1.5}},
    )
    assert (dep.state, dep.candidate_version, dep.live_version, dep.share) == (
        "rolled_back", None, 1, 0.0
    )  # fmt: skip
    e = deps.history(ws, "prod")[-1]
    assert (e["decision"], e["candidate_version"]) == ("rollback", 3)
    assert e["reason"].startswith("latency_p95") and e["thresholds"]["latency_p95"]
    assert get_model(ws, "det@production").version == 1  # never moved
    with pytest.raises(InvalidTransition, match="nothing to roll back"):
        deps.rollback(ws, "prod")


def test_bluegreen_colours_and_plans(ws):
    deps.create(ws, "prod", "det@v1")
    dep = deps.start_bluegreen(ws, "prod", "v2", keep_warm_s=30)
    assert dep.colours == {1: "blue", 2: "green"} and dep.alias is None
    plan = plan_for(dep)
    assert (plan.mode, plan.live_reason, plan.candidate_reason, plan.candidate_share()) == (
        "bluegreen", "blue", "green", 0.0
    )  # fmt: skip
    assert wanted_versions(dep, 300) == {(1, "serve"), (2, "serve")}
    dep = deps.promote(ws, "prod")
    assert (plan_for(dep).live, plan_for(dep).live_reason) == (2, "green")
    # the old colour stays warm for keep_warm_s, then is let go
    assert wanted_versions(dep, 300) == {(2, "serve"), (1, "serve")}
    later = dep.switched_at + dt.timedelta(seconds=31)
    assert wanted_versions(dep, 300, now=later) == {(2, "serve")}
    # the next blue-green deploys into the free colour
    dep = deps.start_bluegreen(ws, "prod", "v3")
    assert dep.colours == {2: "green", 3: "blue"}


def test_shadow_plan(ws):
    deps.create(ws, "prod", "det@production")
    dep = deps.start_shadow(ws, "prod", "det@v2", sample=0.25)
    plan = plan_for(dep)
    assert (plan.mode, plan.sample, plan.candidate, plan.candidate_share()) == (
        "shadow", 0.25, 2, 0.0
    )  # fmt: skip
    assert wanted_versions(dep, 0) == {(1, "serve"), (2, "shadow")}
    dep = deps.start_canary(ws, "prod", "v2")  # shadow, then canary of the same candidate
    assert wanted_versions(dep, 0) == {(1, "serve"), (2, "serve")}


def test_the_lease_has_one_holder_until_it_expires(ws):
    a = deps.acquire_lease(ws, "rollout:prod", "a", 30)
    assert a.holder == "a"
    assert deps.acquire_lease(ws, "rollout:prod", "b", 30).holder == "a"
    renewed = deps.acquire_lease(ws, "rollout:prod", "a", 30)
    assert renewed.holder == "a" and renewed.acquired_at == a.acquired_at
    with ws.db.write() as conn:  # a's process died: its lease runs out
        past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
        conn.execute(update(leases).values(expires_at=past))
    assert deps.acquire_lease(ws, "rollout:prod", "b", 30).holder == "b"
    deps.release_lease(ws, "rollout:prod", "a")  # not a's any more: no effect
    assert deps.read_lease(ws, "rollout:prod").holder == "b"
    deps.release_lease(ws, "rollout:prod", "b")
    assert deps.acquire_lease(ws, "rollout:prod", "a", 30).holder == "a"


def test_concurrent_contenders_get_one_holder(ws):
    winners: list[str] = []
    barrier = threading.Barrier(6)

    def contend(i: int) -> None:
        barrier.wait()
        winners.append(deps.acquire_lease(ws, "rollout:x", f"r{i}", 30).holder)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(winners)) == 1
    with ws.db.read() as conn:
        assert len(conn.execute(select(leases)).all()) == 1


def test_the_client_hash_is_the_same_in_every_process():
    keys = [f"client-{i}" for i in range(50)]
    here = [client_unit(k) for k in keys]
    code = f"from detops.serve.routing import client_unit;print([client_unit(k) for k in {keys!r}])"
    for seed in ("1", "2"):  # Python's own hash() would differ between these
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
        ).stdout
        assert eval(out) == here
    # and it spreads clients evenly: about 10% below 0.1
    many = [client_unit(f"c{i}") for i in range(20_000)]
    assert abs(sum(u < 0.1 for u in many) / len(many) - 0.1) < 0.01


def test_a_change_never_overwrites_one_committed_since_it_read(ws, monkeypatch):
    # PostgreSQL (READ COMMITTED) lets two writers read the same revision: simulate the loser,
    # whose read is older than the row a concurrent promote has just committed
    deps.create(ws, "prod", "det@production")
    deps.start_canary(ws, "prod", "v2")
    real = deps._read
    canary = deps.get(ws, "prod")
    promoted = deps.promote(ws, "prod", actor="human:first")
    assert promoted.revision == canary.revision + 1
    monkeypatch.setattr(deps, "_read", lambda conn, name: canary)  # what the loser had read
    with pytest.raises(StaleDeployment, match="changed while this change was being made"):
        deps.rollback(ws, "prod", actor="human:late")
    monkeypatch.setattr(deps, "_read", real)
    assert deps.get(ws, "prod") == promoted  # the first writer's state stands
    assert [e["actor"] for e in deps.history(ws, "prod")][-1] == "human:first"


def test_a_lease_taken_by_a_contender_in_between_is_not_overwritten(ws, monkeypatch):
    a = deps.acquire_lease(ws, "rollout:prod", "a", 30)
    real = deps._lease
    # "b" read the lease when it had run out; "a" renewed it before b's update
    monkeypatch.setattr(deps, "_lease", lambda row: replace(real(row), expires_at=a.acquired_at))
    got = deps.acquire_lease(ws, "rollout:prod", "b", 30)
    monkeypatch.setattr(deps, "_lease", real)
    assert got.holder == "a"
    assert deps.read_lease(ws, "rollout:prod").holder == "a"


def test_a_lost_race_through_the_api_is_a_409_not_a_500():
    import asyncio

    from detops.serve import deploy_api
    from detops.serve.service import HTTPProblem

    def lost() -> None:
        raise StaleDeployment("deployment 'prod' changed while this change was being made")

    with pytest.raises(HTTPProblem) as info:
        asyncio.run(deploy_api._call(lost))
    assert info.value.status == 409 and "changed while" in str(info.value)


def test_a_paused_canary_never_advances_but_a_breach_still_rolls_it_back(ws, monkeypatch):
    from detops.config import RolloutSettings
    from detops.monitor import gates
    from detops.serve.models import ModelHost
    from detops.serve.rollout import RolloutAgent
    from detops.serve.routing import DeploymentRouter

    deps.create(ws, "prod", "det@production")
    deps.start_canary(ws, "prod", "v2", steps="50,100", min_requests=1, min_seconds=0)
    dep = deps.pause(ws, "prod")
    host = ModelHost("test", resolve=lambda: ("det", 1), load=None, watch=False)  # type: ignore[arg-type]
    router = DeploymentRouter(host, plan_for(dep))
    agent = RolloutAgent(ws, dep, host=host, router=router, load=None, rollout=RolloutSettings())  # type: ignore[arg-type]
    agent.apply(dep)
    healthy = [{"status": 200, "latency_ms": 5.0, "n_boxes": 1, "mean_score": 0.9,
                "class_counts": {"car": 1}}] * 50  # fmt: skip
    candidate = healthy
    monkeypatch.setattr(
        gates,
        "load_window",
        lambda ws, model, version, **kw: gates.Window.from_records(
            candidate if version == 2 else healthy
        ),
    )
    assert agent.tick() is None  # every gate passes, yet a paused step does not advance
    assert deps.get(ws, "prod").state == "paused"
    candidate = [{"status": 500}] * 50  # the candidate starts failing while paused
    assert agent.tick() == "rollback"
    dep = deps.get(ws, "prod")
    assert (dep.state, dep.candidate_version) == ("rolled_back", None)
    assert router.plan.candidate_share() == 0.0
    event = deps.history(ws, "prod")[-1]
    assert (event["from_state"], event["decision"]) == ("paused", "rollback")
    assert event["reason"].startswith("error_rate")


def test_no_decision_once_the_lease_ran_out_while_judging(ws, monkeypatch):
    from detops.config import RolloutSettings
    from detops.monitor import gates
    from detops.serve.models import ModelHost
    from detops.serve.rollout import RolloutAgent
    from detops.serve.routing import DeploymentRouter

    deps.create(ws, "prod", "det@production")
    dep = deps.start_canary(ws, "prod", "v2", steps="50,100", min_requests=1, min_seconds=0)
    host = ModelHost("test", resolve=lambda: ("det", 1), load=None, watch=False)  # type: ignore[arg-type]
    router = DeploymentRouter(host, plan_for(dep))
    settings = RolloutSettings(lease_ttl_s=30)
    agent = RolloutAgent(ws, dep, host=host, router=router, load=None, rollout=settings)  # type: ignore[arg-type]
    failing = gates.Window.from_records([{"status": 500}] * 50)
    ok = {"status": 200, "latency_ms": 5.0, "n_boxes": 1, "mean_score": 0.9}
    healthy = gates.Window.from_records([{**ok, "class_counts": {"car": 1}}] * 50)

    def slow_store(*args, **kw):  # the lease runs out while the windows are read
        with ws.db.write() as conn:
            past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
            conn.execute(update(leases).values(expires_at=past))
        agent.lease = deps.read_lease(ws, agent.lease_name)
        return failing if args[2] == 2 else healthy

    monkeypatch.setattr(gates, "load_window", slow_store)
    assert agent.tick() is None  # a breach, but no longer this replica's to decide
    assert deps.get(ws, "prod").revision == dep.revision  # nothing written
    assert router.plan.candidate_share() == 0.5 and not agent.is_controller
