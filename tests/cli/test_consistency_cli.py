"""``detops data consistency / consensus / label-errors``, ``detops baseline``, HLP in eval."""

from __future__ import annotations

import json

import pytest

from detops.model.registry import register_model
from detops.workspace import Workspace, init_workspace
from tests.model.conftest import make_const_model, rows

SPEC = "A:jitter=0.3;B:loose=0.3;C:miss=0.15,confuse=star>square@0.5"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from tests.cli.conftest import run_detops

    root = init_workspace(tmp_path_factory.mktemp("cli") / "ws")
    run_detops("data", "synth", str(root.parent / "src"), "--n", "60", "--size", "160",
               "--annotators", "A,B,C", "--annotator-spec", SPEC, "--workers", "1")
    run_detops("data", "add", "shapes", str(root.parent / "src"), cwd=root)
    return root


def test_consistency_json_and_html_report(workspace, detops):
    out = detops("data", "consistency", "shapes@v1", "--json", "--report", "r.html",
                 "--all-labelled", cwd=workspace)
    d = json.loads(out.stdout)
    assert d["dataset"] == "shapes@v1" and d["annotators"] == ["A", "B", "C"]
    assert {(c["kind"], c["annotator"]) for c in d["conventions"]} >= {("loose", "B"),
                                                                         ("jitter", "A")}
    assert d["verdict"].startswith("agreement alpha")
    page = (workspace / "r.html").read_text()
    assert d["report"] == str((workspace / "r.html").resolve())
    assert page.count("data:image/jpeg;base64,") == min(12, len(d["images"]))
    text = detops("data", "consistency", "shapes@v1", "--annotators", "A,B", cwd=workspace)
    assert "A-B:" in text.stdout and "B draws looser boxes" not in text.stdout
    assert "B's boxes are" in text.stdout  # two annotators: a pairwise statement


def test_bad_input_exits_2_with_what_is_needed(workspace, detops):
    bad = detops("data", "consistency", "shapes@v1", "--annotators", "A,Z", cwd=workspace,
                 check=False)
    assert bad.returncode == 2
    assert ("error: annotator 'Z' is not in shapes@v1 (its annotators: A, B, C)"
            in bad.stderr)
    for cmd in (("data", "consistency"), ("baseline", "hlp")):
        empty = detops(*cmd, "shapes@v1", "--annotators", " , ", cwd=workspace, check=False)
        assert empty.returncode == 2, cmd
        assert "--annotators ' , ': expected comma-separated names like 'A,B'" in empty.stderr
    cons = json.loads(detops("data", "consensus", "shapes@v1", "--name", "cons", "--json",
                             cwd=workspace).stdout)
    assert cons["ref"] == "cons@v1" and cons["consensus"]["annotators"] == ["A", "B", "C"]
    one = detops("data", "consistency", "cons@v1", cwd=workspace, check=False)
    assert one.returncode == 2 and "annotator 'consensus' only" in one.stderr
    assert "at least 2 annotators" in one.stderr


def test_hlp_is_stored_and_shown_beside_the_model(workspace, detops):
    d = json.loads(detops("baseline", "hlp", "shapes@v1", "--bootstrap", "20", "--splits",
                          "all", "--all-labelled", "--json", cwd=workspace).stdout)
    assert d["stored"] and set(d["splits"]) == {"all"}
    hlp = d["splits"]["all"]["hlp"]
    assert 0 < hlp["f1"] < 1 and hlp["ci"]["f1"]["low"] <= hlp["f1"] <= hlp["ci"]["f1"]["high"]
    shown = detops("baseline", "show", "shapes@v1", cwd=workspace).stdout
    assert "HLP on all images (60 images, annotators A, B, C)" in shown

    ws = Workspace(workspace)
    try:
        evaluation = {"dataset": "shapes@v1", "split": "all", "annotator": "A", "images": 60,
                      "coco": {"AP50": 0.25, "AP": 0.1},
                      "at_threshold": {"score_threshold": 0.5, "precision": 0.3, "recall": 0.2,
                                       "f1": 0.24}}
        onnx = make_const_model({"detections": rows([((10.0, 10.0, 60.0, 60.0), 0.9, 3)], 2)},
                                width=160, height=160)
        spec = {"class_names": ["circle", "square", "triangle", "star", "cross"],
                "input_width": 160, "input_height": 160, "score_threshold": 0.5}
        register_model(ws, "det", onnx, spec, evaluation=evaluation,
                       lineage={"dataset": "shapes@v1", "annotator": "A"})
    finally:
        ws.close()
    ev = detops("eval", "det@v1", "--data", "shapes@v1", "--split", "all", cwd=workspace)
    assert "beside human-level performance:" in ev.stdout
    line = next(x for x in ev.stdout.splitlines() if x.strip().startswith("F1"))
    assert f"{hlp['f1']:.3f}" in line
    detops("models", "card", "det@v1", cwd=workspace)
    card = next(workspace.glob("reports/det-v1/card.md")).read_text()
    assert "## Beside human-level performance" in card and f"| F1 | 0.240 | {hlp['f1']:.3f}" in card
    assert "consensus of the others on the same all images of shapes@v1" in card

    out = detops("data", "label-errors", "shapes@v1", "--model", "det@v1", "--out", "c.json",
                 cwd=workspace)
    saved = json.loads((workspace / "c.json").read_text())
    assert saved["model"] == "det@v1" and saved["annotator"] == "A"
    assert "left out" in saved["out_of_sample"] and saved["candidates"]
    assert f"candidates: {(workspace / 'c.json').resolve()}" in out.stdout
