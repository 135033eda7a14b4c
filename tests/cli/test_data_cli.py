"""The data commands end to end, through the real console entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from tests.cli.conftest import run_detops

    out = tmp_path_factory.mktemp("scenes")
    run_detops("data", "synth", str(out), "--n", "12", "--seed", "3", "--workers", "1",
               "--annotators", "A,B", "--annotator-spec", "B:loose=0.5")
    return out


@pytest.fixture()
def ws(detops, tmp_path) -> Path:
    detops("init", str(tmp_path / "ws"))
    return tmp_path / "ws"


def test_synth_writes_coco_with_annotators(scenes):
    doc = json.loads((scenes / "annotations.json").read_text())
    assert len(doc["images"]) == 12
    assert {a["annotator"] for a in doc["annotations"]} == {"A", "B"}
    assert (scenes / "injected.json").is_file()
    first = scenes / doc["images"][0]["file_name"]
    with Image.open(first) as im:
        assert im.size == (320, 320)


def test_add_list_show_and_identical_readd(detops, ws, scenes):
    out = json.loads(detops("data", "add", "shapes", str(scenes), "--json", cwd=ws).stdout)
    assert (out["ref"], out["created"], out["images"]) == ("shapes@v1", True, 12)
    again = json.loads(detops("data", "add", "shapes", str(scenes / "annotations.json"),
                              "--format", "coco", "--json", cwd=ws).stdout)
    assert (again["ref"], again["created"], again["digest"]) == ("shapes@v1", False, out["digest"])
    rows = json.loads(detops("data", "list", "--json", cwd=ws).stdout)
    assert [r["ref"] for r in rows] == ["shapes@v1"]
    show = json.loads(detops("data", "show", "shapes@v1", "--json", cwd=ws).stdout)
    assert show["annotators"] == ["A", "B"]
    assert sum(show["splits"].values()) == 12
    assert sum(c["boxes"] for c in show["categories"]) == out["annotations"]
    assert "shapes@v1" in detops("data", "show", "shapes", cwd=ws).stdout


@pytest.mark.parametrize("fmt", ["yolo", "voc", "coco"])
def test_export_and_reimport_is_the_same_version(detops, ws, scenes, tmp_path, fmt):
    detops("data", "add", "shapes", str(scenes), cwd=ws)
    out = tmp_path / f"out-{fmt}"
    extra = ["--annotator", "A"] if fmt == "yolo" else []
    detops("data", "export", "shapes@v1", str(out), "--format", fmt, *extra, cwd=ws)
    res = json.loads(detops("data", "add", f"re-{fmt}", str(out), "--json", cwd=ws).stdout)
    assert res["images"] == 12
    src = json.loads(detops("data", "show", "shapes@v1", "--json", cwd=ws).stdout)
    if fmt == "coco":  # COCO carries everything: same content, same digest
        assert res["digest"] == src["digest"]
    elif fmt == "voc":  # every box, class and annotator survives; tags do not (and are said)
        d = json.loads(detops("data", "diff", "shapes@v1", "re-voc@v1", "--json", cwd=ws).stdout)
        assert d["images_changed"] == [] and d["summary"]["unchanged"] == 12
    else:
        assert res["annotations"] == sum(
            1 for _ in json.loads((scenes / "annotations.json").read_text())["annotations"]
            if _["annotator"] == "A")


def test_yolo_export_of_several_annotators_asks_for_one(detops, ws, scenes, tmp_path):
    detops("data", "add", "shapes", str(scenes), cwd=ws)
    proc = detops("data", "export", "shapes@v1", str(tmp_path / "y"), "--format", "yolo",
                  cwd=ws, check=False)
    assert proc.returncode == 2 and "annotator" in proc.stderr and "Traceback" not in proc.stderr


def test_diff_between_versions(detops, ws, scenes, tmp_path):
    detops("data", "add", "shapes", str(scenes), cwd=ws)
    doc = json.loads((scenes / "annotations.json").read_text())
    removed = doc["images"].pop()
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != removed["id"]]
    doc["annotations"][0]["category_id"] = doc["annotations"][0]["category_id"] % 5 + 1
    for img in doc["images"]:
        img["file_name"] = str(scenes / img["file_name"])
    (tmp_path / "v2.json").write_text(json.dumps(doc))
    detops("data", "add", "shapes", str(tmp_path / "v2.json"), cwd=ws)
    d = json.loads(detops("data", "diff", "shapes@v1", "shapes@v2", "--json", cwd=ws).stdout)
    assert d["summary"]["removed"] == 1 and d["summary"]["changed"] == 1
    assert d["summary"]["added"] == 0
    text = detops("data", "diff", "shapes@v1", "shapes@v2", cwd=ws).stdout
    assert "1 removed" in text


def test_validate_folder_with_problems_exits_1_and_names_them(detops, scenes, tmp_path):
    doc = json.loads((scenes / "annotations.json").read_text())
    for img in doc["images"]:
        img["file_name"] = str(scenes / img["file_name"])
    doc["images"][0]["file_name"] = str(tmp_path / "gone.jpg")
    doc["annotations"][0]["bbox"] = [300, 300, 50, 50]
    doc["annotations"][1]["category_id"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(doc))
    proc = detops("data", "validate", str(tmp_path / "bad.json"), "--json", check=False)
    assert proc.returncode == 1
    kinds = {f["kind"] for f in json.loads(proc.stdout)["findings"]}
    assert {"missing_image", "box_out_of_bounds", "unknown_category"} <= kinds
    for f in json.loads(proc.stdout)["findings"]:
        assert set(f) == {"kind", "file", "record", "message", "severity"}


def test_validate_clean_version_exits_0(detops, ws, scenes):
    detops("data", "add", "shapes", str(scenes), cwd=ws)
    proc = detops("data", "validate", "shapes@v1", cwd=ws)
    assert "0 errors" in proc.stdout


def test_stats_json_and_plot(detops, ws, scenes, tmp_path):
    detops("data", "add", "shapes", str(scenes), cwd=ws)
    plot = tmp_path / "s.png"
    st = json.loads(detops("data", "stats", "shapes@v1", "--json", "--plot", str(plot),
                           cwd=ws).stdout)
    assert st["counts"]["images"] == 12
    with Image.open(plot) as im:
        assert im.format == "PNG" and im.size[0] > 800


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "add", "x", "nowhere.json"], "nowhere.json"),  # missing file
        (["data", "show", "nope@v1"], "dataset nope@v1 not found"),  # unknown version
        (["data", "show", "nope@"], "expected NAME@vN"),  # bad reference
        (["data", "synth", "o", "--annotators", "A", "--annotator-spec", "A:lose=1"],
         "unknown key 'lose'"),  # typo in a spec
    ],
)
def test_bad_input_is_a_clear_error(detops, ws, args, message):
    proc = detops(*args, cwd=ws, check=False)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_broken_coco_json_stores_nothing(detops, ws, tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [}')
    proc = detops("data", "add", "x", str(tmp_path / "broken.json"), cwd=ws, check=False)
    assert proc.returncode == 2 and "broken.json" in proc.stderr and "line 1" in proc.stderr
    assert json.loads(detops("data", "list", "--json", cwd=ws).stdout) == []
    assert [p for p in (ws / ".detops" / "artifacts").rglob("*") if p.is_file()] == []
