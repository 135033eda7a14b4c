"""``demo_rollout`` (what ``detops quickstart`` runs): shadow, then canary, to a decision."""

from __future__ import annotations

from sqlalchemy import func, select

from detops.model.registry import get_model, register_model
from detops.serve.rollout import demo_rollout
from detops.store.schema import shadow_comparisons
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


def test_demo_compares_as_many_as_it_asked_for_with_a_candidate_too_slow_to_keep_up(make_ws):
    # each copy takes the slow candidate tens of milliseconds, a live request a few: most
    # copies are shed, and the shadow phase goes on until the candidate has answered enough
    ws = make_ws()
    register_model(ws, "det", graphs.slow(), spec())
    images = [image_bytes(64, 64, seed=i) for i in range(8)]
    lines: list[str] = []
    gates = {"min_samples": 10, "latency_p95": {"enabled": False}}
    got = demo_rollout(ws, "prod", "v2", model="det@production", echo=lines.append,
                       images=images, gates=gates, **FAST)  # fmt: skip
    shadow = got["shadow"]
    assert shadow["shed"] > 0  # the case at hand: the candidate fell behind
    assert shadow["compared"] >= FAST["shadow_requests"] and shadow["mean_f1"] == 1.0
    assert shadow["errors"] == 0
    line = next(x for x in lines if x.startswith("shadow: ") and "compared" in x)
    assert line.startswith(f"shadow: {shadow['compared']} requests compared")
    assert line.endswith(f"{shadow['shed']} copies shed while it was behind")
    assert got["outcome"] == "promoted", got["reason"]


def test_demo_summarises_only_its_own_shadow_comparisons(make_ws):
    # a second demo of the same candidate against the same live version (the first rolled
    # back) reports its own comparisons, not both runs' together
    ws = make_ws()
    register_model(ws, "det", graphs.empty(), spec())
    images = [image_bytes(64, 64, seed=i) for i in range(8)]
    gates = {"min_samples": 10, "latency_p95": {"enabled": False}}
    kw = dict(model="det@production", images=images, gates=gates, **FAST)

    def stored() -> int:
        with ws.db.read() as conn:
            return conn.execute(select(func.count()).select_from(shadow_comparisons)).scalar_one()

    runs, counts = [], []
    for _ in range(2):  # the store counted after each run (its server stopped, its log closed)
        runs.append(demo_rollout(ws, "prod", "v2", echo=lambda _: None, **kw))
        counts.append(stored())
    assert [r["outcome"] for r in runs] == ["rolled_back", "rolled_back"]
    first, second = (r["shadow"]["compared"] for r in runs)
    assert first >= FAST["shadow_requests"] and second >= FAST["shadow_requests"]
    # each counted only rows stored during its own run (the store can hold a few more than it
    # counted: the canary's first requests are still shadowed until the server picks up the
    # new plan); counting the first run's again would put the second above its own rows
    assert first <= counts[0]
    assert second <= counts[1] - counts[0]
