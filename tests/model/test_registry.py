"""The model registry (versions, aliases, integrity) and tracked runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from detops.errors import ArtifactCorrupt, ModelError, ModelNotFound, RunNotFound, SpecMismatch
from detops.model import ModelSpec
from detops.model.registry import (
    alias_history,
    get_model,
    list_models,
    load_runtime,
    register_model,
    set_alias,
)
from detops.model.tracking import RunRecorder, get_run, list_runs
from detops.store.schema import model_versions
from detops.workspace import Workspace, init_workspace

NAMES = ["person", "car", "dog"]
# input pixels of a 320x320 network input; a 320x320 image maps 1:1
KNOWN = [((10.0, 20.0, 110.0, 140.0), 0.9, 0), ((200.0, 40.0, 300.0, 90.0), 0.8, 2)]


@pytest.fixture()
def ws(tmp_path):
    w = Workspace(init_workspace(tmp_path / "ws"))
    yield w
    w.close()


def spec_dict(**kw: Any) -> dict[str, Any]:
    return {"class_names": NAMES, "input_width": 320, "input_height": 320, **kw}


@pytest.fixture()
def const_onnx(graphs, tmp_path) -> Callable[..., Path]:
    """Factory: a ``detops``-layout ONNX file whose graph always outputs ``known``."""

    def make(known: Any = KNOWN, name: str = "det.onnx", pad_rows: int = 2) -> Path:
        path = tmp_path / name
        path.write_bytes(graphs.make_const_model({"detections": graphs.rows(known, pad_rows)}))
        return path

    return make


def version_count(ws: Workspace) -> int:
    with ws.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(model_versions)).scalar())


# -- versions ----------------------------------------------------------------------------------


def test_register_numbers_versions_and_get_model_resolves_refs(ws, const_onnx):
    first = register_model(ws, "det", const_onnx(), spec_dict(), description="first")
    second = register_model(ws, "det", const_onnx([KNOWN[0]], "b.onnx"), ModelSpec(**spec_dict()))
    register_model(ws, "other", const_onnx(), spec_dict())
    assert (first.ref, second.ref) == ("det@v1", "det@v2")
    assert first.onnx != second.onnx  # different graphs, different content addresses
    set_alias(ws, "det@v1", "production")
    resolved = {
        # (ref) -> version it names
        "det@v1": get_model(ws, "det@v1").version,
        "det@v2": get_model(ws, "det@v2").version,
        "det@production": get_model(ws, "det@production").version,
        "det": get_model(ws, "det").version,  # bare name: the latest
    }
    assert resolved == {"det@v1": 1, "det@v2": 2, "det@production": 1, "det": 2}
    assert get_model(ws, "det@v1").aliases == ("production",)
    assert get_model(ws, "det@v1").description == "first"
    assert [m.ref for m in list_models(ws)] == ["det@v1", "det@v2", "other@v1"]
    assert [m.ref for m in list_models(ws, "det")] == ["det@v1", "det@v2"]


def test_registered_version_runs_through_load_runtime(ws, const_onnx):
    mv = register_model(ws, "det", const_onnx(), spec_dict())
    runtime = load_runtime(ws, "det@v1")
    (dets,) = runtime.predict([np.zeros((320, 320, 3), np.uint8)])
    assert runtime.sha256 == mv.onnx
    np.testing.assert_allclose(dets.boxes, [k[0] for k in KNOWN])
    assert dets.labels.tolist() == [k[2] for k in KNOWN]


@pytest.mark.parametrize(
    "ref, fragments",
    [
        # an alias nobody set: the message lists the aliases that exist
        ("det@staging", ["no alias 'staging'", "aliases: canary, production"]),
        # a version that does not exist: the message lists known models
        ("det@v9", ["det@v9 not found", "known models: det"]),
        # a model that does not exist
        ("nope", ["nope not found", "known models: det"]),
    ],
)
def test_unknown_refs_say_what_exists(ws, const_onnx, ref, fragments):
    register_model(ws, "det", const_onnx(), spec_dict())
    set_alias(ws, "det@v1", "production")
    set_alias(ws, "det@v1", "canary")
    with pytest.raises(ModelNotFound) as info:
        get_model(ws, ref)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_alias_without_any_alias_says_how_to_set_one(ws, const_onnx):
    register_model(ws, "det", const_onnx(), spec_dict())
    with pytest.raises(ModelNotFound, match=r"detops models alias det@vN production"):
        get_model(ws, "det@production")


def test_moving_an_alias_is_recorded_with_from_to_and_actor(ws, const_onnx):
    for _ in range(3):
        register_model(ws, "det", const_onnx(), spec_dict())
    moves = [
        # (ref, alias, actor) -> (previous, new) versions
        ("det@v1", "production", "alice", (None, 1)),  # first set: from nothing
        ("det@v2", "production", "bob", (1, 2)),  # promote
        ("det@v3", "staging", "bob", (None, 3)),  # another alias, same model
        ("det@v1", "production", "carol", (2, 1)),  # roll back
    ]
    for ref, alias, actor, expected in moves:
        assert set_alias(ws, ref, alias, actor=actor) == expected
    history = [(h["alias"], h["from"], h["to"], h["actor"]) for h in alias_history(ws, "det")]
    assert history == [(m[1], *m[3], m[2]) for m in moves]
    assert get_model(ws, "det@production").version == 1
    # one row per alias: the move replaced the pointer, it did not add a second one
    assert get_model(ws, "det@v2").aliases == ()
    assert get_model(ws, "det@v3").aliases == ("staging",)


def test_alias_that_looks_like_a_version_is_refused(ws, const_onnx):
    register_model(ws, "det", const_onnx(), spec_dict())
    with pytest.raises(ValueError, match="cannot be an alias"):
        set_alias(ws, "det@v1", "v2")
    assert alias_history(ws, "det") == []


# -- what refuses to register -----------------------------------------------------------------


def _yolo_v8_graph(graphs: Any, nc: int) -> bytes:
    return graphs.make_const_model({"output0": graphs.yolo_v8_head(KNOWN, nc)})


MISMATCHES = [
    # yolo_v8 head with 5 class rows, spec names 3 classes: [B, 9, N] vs expected [B, 7, N]
    (
        lambda g: _yolo_v8_graph(g, 5),
        spec_dict(adapter="yolo_v8"),
        ["'output0'", "expected [B, 7, N]"],
    ),
    # the spec points the adapter at an output the graph does not have
    (
        lambda g: g.make_const_model({"detections": g.rows(KNOWN)}),
        spec_dict(adapter_options={"output": "dets"}),
        ["no output 'dets'", "'detections'"],
    ),
    # the detops adapter's default output is missing (graph names it differently)
    (
        lambda g: g.make_const_model({"boxes": g.rows(KNOWN)}),
        spec_dict(),
        ["no output 'detections'", "'boxes'"],
    ),
    # input size in the spec differs from the graph's static input
    (
        lambda g: g.make_const_model({"detections": g.rows(KNOWN)}, width=640),
        spec_dict(),
        ["input 'images'", "[B, 3, 320, 320]", "[?, 3, 320, 640]"],
    ),
]


@pytest.mark.parametrize("make_graph, spec, fragments", MISMATCHES)
def test_spec_that_does_not_fit_the_graph_registers_nothing(
    ws, graphs, tmp_path, make_graph, spec, fragments
):
    path = tmp_path / "m.onnx"
    path.write_bytes(make_graph(graphs))
    with pytest.raises(SpecMismatch) as info:
        register_model(ws, "det", path, spec)
    for fragment in fragments:
        assert fragment in str(info.value)
    assert version_count(ws) == 0
    assert [p for p in ws.artifacts.root.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a protobuf",  # text
        b"",  # empty file
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 32,  # another binary format
    ],
)
def test_a_file_that_is_not_onnx_is_refused_naming_it(ws, tmp_path, content):
    path = tmp_path / "weights.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=r"weights\.onnx") as info:
        register_model(ws, "det", path, spec_dict())
    assert not isinstance(info.value, SpecMismatch)
    assert version_count(ws) == 0


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # one flipped bit
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b + b"\x00",  # appended byte
    ],
)
def test_tampered_artifact_refuses_to_load_naming_the_file(ws, const_onnx, tamper):
    mv = register_model(ws, "det", const_onnx(), spec_dict())
    artifact = ws.artifacts.path(mv.onnx)
    artifact.chmod(0o644)
    artifact.write_bytes(tamper(artifact.read_bytes()))
    with pytest.raises(ArtifactCorrupt) as info:
        load_runtime(ws, "det@v1")
    assert str(artifact) in str(info.value)


# -- tracked runs ------------------------------------------------------------------------------


def start_run(ws: Workspace, run_id: str | None = None, **params: Any) -> RunRecorder:
    return RunRecorder(
        ws, dataset="shapes@v1", dataset_digest="d" * 64, params=params or {"lr": 0.01},
        run_id=run_id,
    )


def test_run_lifecycle_records_params_metrics_and_duration(ws, tmp_path):
    rec = start_run(ws, epochs=2)
    running = get_run(ws, rec.id)
    assert (running.status, running.params, running.metrics) == ("running", {"epochs": 2}, [])
    assert running.environment["python"] and "package_version" in running.code
    rec.log_epoch({"epoch": 1, "loss": 2.0})
    assert get_run(ws, rec.id).metrics == [{"epoch": 1, "loss": 2.0}]  # written per epoch
    rec.log_epoch({"epoch": 2, "loss": 1.5})
    report = tmp_path / "report.json"
    report.write_text("{}")
    digest = rec.add_artifact("report", report)
    done = rec.finish({"coco": {"AP": 0.5}})
    assert done.status == "finished" and done.error is None
    assert done.metrics == [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
    assert done.evaluation == {"coco": {"AP": 0.5}}
    assert done.artifacts == {"report": digest}
    assert ws.artifacts.get_bytes(digest) == b"{}"
    assert done.duration_s is not None and done.duration_s >= 0
    assert done.finished_at is not None


def test_failed_run_keeps_error_and_metrics_so_far(ws):
    rec = start_run(ws)
    rec.log_epoch({"epoch": 1, "loss": 3.0})
    run = rec.finish(None, status="failed", error="RuntimeError: out of memory")
    assert (run.status, run.error, run.evaluation) == (
        "failed", "RuntimeError: out of memory", None)
    assert run.metrics == [{"epoch": 1, "loss": 3.0}]


def test_reopen_keeps_metrics_and_replaces_relogged_epochs(ws):
    rec = start_run(ws)
    for epoch, loss in [(1, 3.0), (2, 2.0), (3, 1.0)]:
        rec.log_epoch({"epoch": epoch, "loss": loss})
    rec.finish(None, status="failed", error="KeyboardInterrupt: ")
    # resumed from the checkpoint of epoch 2: epoch 3 runs again with a new loss
    again = RunRecorder.reopen(ws, rec.id[:6])
    assert again.id == rec.id
    reopened = get_run(ws, rec.id)
    assert (reopened.status, reopened.error) == ("running", None)
    again.log_epoch({"epoch": 3, "loss": 0.9})
    again.log_epoch({"epoch": 4, "loss": 0.8})
    run = again.finish({"coco": {}})
    assert [(m["epoch"], m["loss"]) for m in run.metrics] == [(1, 3.0), (2, 2.0), (3, 0.9),
                                                              (4, 0.8)]
    assert run.status == "finished"
    # the duration counts from the first start
    assert run.duration_s >= (run.finished_at - run.started_at).total_seconds() - 1e-3


@pytest.mark.parametrize(
    "query, expected",
    [
        ("abc123def456", "abc123def456"),  # full id
        ("abc1", "abc123def456"),  # unique prefix
        ("abd", "abd000000000"),  # unique prefix of the other
    ],
)
def test_get_run_by_unique_prefix(ws, query, expected):
    start_run(ws, "abc123def456")
    start_run(ws, "abd000000000")
    assert get_run(ws, query).id == expected


@pytest.mark.parametrize(
    "query",
    [
        "ab",  # ambiguous: prefix of both runs
        "zzz",  # matches nothing
    ],
)
def test_run_not_found_names_the_id_and_the_fix(ws, query):
    start_run(ws, "abc123def456")
    start_run(ws, "abd000000000")
    with pytest.raises(RunNotFound) as info:
        get_run(ws, query)
    assert str(info.value) == f"run {query!r} not found (see `detops runs list`)"
    assert isinstance(info.value, KeyError)


def test_list_runs_in_start_order(ws):
    ids = [start_run(ws, f"run{i:09d}").id for i in range(3)]
    assert [r.id for r in list_runs(ws)] == ids
