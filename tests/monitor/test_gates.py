"""Rollout gates: the gates file, each gate's verdict, windows read from a real store."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from scipy import stats
from scipy.spatial import distance

from detops.errors import GatesConfigError
from detops.monitor.gates import (
    GATE_NAMES,
    GatesConfig,
    Window,
    class_mix_test,
    evaluate,
    load_agreement,
    load_gates,
    load_window,
)


def rec(status=200, ms=5.0, boxes=1, score=0.9, classes=None):
    classes = classes if classes is not None else ({"car": boxes} if boxes else {})
    return {
        "status": status,
        "latency_ms": ms,
        "n_boxes": boxes,
        "mean_score": score if boxes else None,
        "class_counts": classes,
    }


def window(n=50, **kw) -> Window:
    return Window.from_records([rec(**kw) for _ in range(n)])


def only(report, gate):
    [r] = [r for r in report.results if r.gate == gate]
    return r


# -- the gates file ---------------------------------------------------------------------------


def test_defaults_and_overrides():
    cfg = GatesConfig.from_mapping({"min_samples": 5, "class_mix": {"max_tvd": 0.3}})
    assert cfg.min_samples == 5 and cfg.class_mix.max_tvd == 0.3 and cfg.class_mix.alpha == 0.01
    assert cfg.samples_for("class_mix") == 5
    assert GatesConfig.from_mapping({"agreement": {"min_samples": 7}}).samples_for("agreement") == 7


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"latency_p59": {}}, "unknown key 'latency_p59' (known: min_samples, live_window_s, "),
        ({"latency_p95": {"max_ratoi": 2}}, "unknown key 'latency_p95.max_ratoi' (known: enabled"),
        ({"error_rate": {"max_increase": 2}}, "error_rate.max_increase"),  # out of range
        ({"min_samples": 0}, "min_samples"),
        ([1, 2], "expected a mapping"),
        ({"latency_p95": {"max_ratio": float("inf")}}, "latency_p95.max_ratio"),  # not JSON
        ({"live_window_s": float("nan")}, "live_window_s"),
    ],
)
def test_bad_gates_name_the_problem(data, message):
    with pytest.raises(GatesConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        GatesConfig.from_mapping(data, source="gates.yaml")


def test_gates_file(tmp_path):
    f = tmp_path / "gates.yaml"
    f.write_text("min_samples: 3\nmean_confidence:\n  enabled: false\n")
    cfg = load_gates(f)
    assert cfg.min_samples == 3 and not cfg.mean_confidence.enabled
    f.write_text("mean_confidence:\n  max_dorp: 0.1\n")
    with pytest.raises(GatesConfigError, match=f"{f}: unknown key 'mean_confidence.max_dorp'"):
        load_gates(f)
    with pytest.raises(GatesConfigError, match="no such gates file"):
        load_gates(tmp_path / "missing.yaml")
    f.write_bytes(b"min_samples: \xff\xfe\n")  # not a traceback: the file and why
    with pytest.raises(GatesConfigError, match="not UTF-8 text"):
        load_gates(f)
    report = evaluate(cfg, live=window(), candidate=window())
    assert "mean_confidence" not in {r.gate for r in report.results}


# -- windows ----------------------------------------------------------------------------------


def test_window_counts_server_errors_and_leaves_client_errors_out():
    w = Window.from_records(
        [rec(), rec(boxes=0), rec(status=500), rec(status=503), rec(status=400), rec(status=413)]
    )
    assert (w.n, w.errors, w.n_ok) == (4, 2, 2)
    assert list(w.boxes) == [1, 0] and list(w.mean_scores) == [0.9]
    assert w.class_counts == {"car": 1}


# -- each gate --------------------------------------------------------------------------------

SLOW = [rec(ms=50.0)] * 50
GATE_CASES = [
    # (gate, candidate records, expected status) against 50 live records of rec()
    ("error_rate", [rec()] * 50, "pass"),
    ("error_rate", [rec()] * 49 + [rec(status=500)], "fail"),  # 2% > 0% + 1%
    ("error_rate", [rec()] * 10, "insufficient_data"),
    ("latency_p95", SLOW, "fail"),  # 10x and +45 ms
    ("latency_p95", [rec(ms=12.0)] * 50, "pass"),  # 2.4x but only +7 ms
    ("latency_p95", [rec(ms=7.0)] * 50, "pass"),
    ("latency_p95", [rec()] * 47 + [rec(ms=60.0)] * 3, "pass"),  # a tail of stragglers only
    ("latency_p95", [rec()] * 40 + [rec(ms=60.0)] * 10, "fail"),  # slower as a whole
    ("latency_p95", [rec(ms=50.0)] * 15, "insufficient_data"),  # p95 needs 20 samples
    ("no_detection_rate", [rec(boxes=0)] * 50, "fail"),
    ("no_detection_rate", [rec()] * 46 + [rec(boxes=0)] * 4, "pass"),  # 8% <= 10%
    ("mean_confidence", [rec(score=0.7)] * 50, "fail"),
    ("mean_confidence", [rec(score=0.85)] * 50, "pass"),
    ("mean_confidence", [rec(boxes=0)] * 50, "insufficient_data"),  # no boxes, no scores
    ("boxes_per_image", [rec(boxes=4)] * 50, "fail"),
    ("boxes_per_image", [rec(boxes=0)] * 50, "fail"),
    ("boxes_per_image", [rec(boxes=1)] * 30 + [rec(boxes=2)] * 20, "pass"),  # 1.4x
    ("class_mix", [rec(classes={"dog": 1})] * 50, "fail"),
    ("class_mix", [rec(classes={"car": 1})] * 45 + [rec(classes={"dog": 1})] * 5, "pass"),
]


@pytest.mark.parametrize(("gate", "records", "expected"), GATE_CASES)
def test_each_gate(gate, records, expected):
    cfg = GatesConfig.from_mapping({"min_samples": 30})
    report = evaluate(cfg, live=window(50), candidate=Window.from_records(records))
    result = only(report, gate)
    assert result.status == expected, result.reason
    assert result.thresholds and result.reason.startswith(gate)


def test_the_verdict_fail_beats_insufficient_beats_pass():
    cfg = GatesConfig.from_mapping({"min_samples": 30})
    ok = evaluate(cfg, live=window(), candidate=window())
    assert ok.verdict == "pass" and ok.reason == "all gates passed"
    assert only(ok, "agreement").status == "skipped"  # no shadow data: reported, not a pass
    thin = evaluate(cfg, live=window(), candidate=window(5))
    assert thin.verdict == "insufficient_data" and "candidate 5/30" in thin.reason
    # an erroring candidate has no answered requests, yet its error rate alone decides
    broken = evaluate(cfg, live=window(), candidate=window(40, status=500))
    assert broken.verdict == "fail" and broken.failed == ["error_rate"]
    assert "insufficient_data" in {r.status for r in broken.results}
    empty = evaluate(cfg, live=window(0), candidate=window(0))
    assert empty.verdict == "insufficient_data"  # no traffic never passes


def test_agreement_needs_shadow_data_and_fails_below_min_f1():
    cfg = GatesConfig.from_mapping({"min_samples": 30, "agreement": {"min_samples": 10}})
    few = evaluate(cfg, live=window(), candidate=window(), agreement=np.ones(9))
    assert only(few, "agreement").status == "skipped" and few.verdict == "pass"
    good = evaluate(cfg, live=window(), candidate=window(), agreement=np.full(20, 0.9))
    assert only(good, "agreement").status == "pass"
    bad = evaluate(cfg, live=window(), candidate=window(), agreement=np.full(20, 0.3))
    assert bad.failed == ["agreement"] and only(bad, "agreement").measured["mean_f1"] == 0.3


def test_the_report_records_every_gate_with_values_and_thresholds():
    report = evaluate(GatesConfig(), live=window(), candidate=Window.from_records(SLOW))
    assert set(report.thresholds) == set(GATE_NAMES)
    lat = report.measured["gates"]["latency_p95"]
    assert lat["status"] == "fail" and lat["p_value"] < 1e-6
    assert (lat["candidate_ms"], lat["live_ms"], lat["ratio"]) == (50.0, 5.0, 10.0)
    assert report.thresholds["latency_p95"] == {
        "max_ratio": 1.5, "min_increase_ms": 10.0, "alpha": 0.01
    }  # fmt: skip


@pytest.mark.parametrize("seed", range(8))
def test_class_mix_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    a = {f"c{i}": int(v) for i, v in enumerate(rng.integers(0, 60, k))}
    b = {f"c{i}": int(v) for i, v in enumerate(rng.integers(0, 60, k))}
    tvd, p = class_mix_test(a, b)
    pa = np.array(list(a.values()), float)
    pb = np.array(list(b.values()), float)
    assert tvd == pytest.approx(0.5 * distance.cityblock(pa / pa.sum(), pb / pb.sum()))
    # the chi-square statistic of the 2 x k table, by the textbook formula
    keep = (pa + pb) > 0
    table = np.stack([pa[keep], pb[keep]])
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert p == pytest.approx(stats.chi2.sf(chi2, keep.sum() - 1), rel=1e-9, abs=1e-300)


# -- windows from the store -------------------------------------------------------------------


def test_windows_read_the_prediction_log(tmp_path, monkeypatch):
    from detops.serve.predlog import store_writer
    from detops.workspace import Workspace, init_workspace

    ws = Workspace(init_workspace(tmp_path))
    now = dt.datetime.now(dt.UTC)
    old = now - dt.timedelta(minutes=5)

    def row(version, route, at, **kw):
        base = {"request_id": "r", "at": at, "model_name": "det", "model_version": version}
        return {**base, "route": route, **rec(**kw)}

    records = (
        [row(1, "live", now) for _ in range(4)]
        + [row(1, "live", old) for _ in range(3)]  # before the window
        + [row(2, "canary", now, ms=40.0) for _ in range(5)]
        + [row(2, "shadow", now) for _ in range(6)]  # shadow copies answer nobody
        + [row(2, "canary", now, status=500) for _ in range(2)]
    )
    records[-1]["_comparison"] = {
        "request_id": "r",
        "at": now,
        "deployment": "d",
        "model_name": "det",
        "live_version": 1,
        "candidate_version": 2,
        "f1": 0.5,
    }
    store_writer(ws)(records)
    since = now - dt.timedelta(seconds=1)
    live = load_window(ws, "det", 1, since=since)
    assert (live.n, live.errors) == (4, 0)
    assert load_window(ws, "det", 1, since=old - dt.timedelta(seconds=1)).n == 7
    cand = load_window(ws, "det", 2, since=since, routes=("canary",))
    assert (cand.n, cand.errors, float(np.median(cand.latencies_ms))) == (7, 2, 40.0)
    assert load_window(ws, "det", 2, since=since).n == 7  # shadow rows are left out
    assert list(load_agreement(ws, "det", 2)) == [0.5]
    # counts cover the whole window; the values its newest MAX_ROWS requests
    import detops.monitor.gates as gates_module

    monkeypatch.setattr(gates_module, "MAX_ROWS", 3)
    few = load_window(ws, "det", 2, since=since, routes=("canary",))
    assert (few.n, few.errors, few.n_ok) == (7, 2, 1)
    assert load_agreement(ws, "det", 3).size == 0
    ws.close()


def test_no_gate_judging_is_not_a_pass():
    # every gate disabled, or only agreement left and no shadow data: nothing was judged
    off = {name: {"enabled": False} for name in GATE_NAMES}
    none = evaluate(GatesConfig.from_mapping(off), live=window(), candidate=window())
    assert none.verdict == "insufficient_data" and none.results == []
    assert "every gate is disabled" in none.reason
    only_agreement = GatesConfig.from_mapping({**off, "agreement": {"enabled": True}})
    skipped = evaluate(only_agreement, live=window(), candidate=window())
    assert skipped.verdict == "insufficient_data" and "no gate judged" in skipped.reason
    judged = evaluate(only_agreement, live=window(), candidate=window(), agreement=np.ones(40))
    assert judged.verdict == "pass"


def test_class_mix_without_class_counts_is_insufficient_not_a_pass():
    cfg = GatesConfig.from_mapping({"min_samples": 30})
    unlabeled = window(classes={})  # boxes and scores logged, no class counts
    report = evaluate(cfg, live=window(), candidate=unlabeled)
    r = only(report, "class_mix")
    assert r.status == "insufficient_data" and "no class counts" in r.reason
    assert report.verdict == "insufficient_data"


def test_measured_values_are_strict_json_even_when_a_ratio_is_infinite():
    import json

    # live finds nothing, the candidate finds boxes everywhere: the boxes ratio is infinite
    report = evaluate(GatesConfig(), live=window(boxes=0), candidate=window(boxes=3))
    r = only(report, "boxes_per_image")
    assert r.status == "fail" and r.measured["ratio"] is None
    json.dumps({"m": report.measured, "t": report.thresholds}, allow_nan=False)  # no Infinity
