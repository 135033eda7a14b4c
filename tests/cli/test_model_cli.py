"""eval / predict / models commands end to end, through the real console entry point.

Metrics are checked against the oracle, pycocotools' COCOeval, on the same inputs.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from detops.evaluate import STAT_KEYS
from tests.cli.conftest import run_detops
from tests.evaluate.conftest import make_coco_case, pycocotools_stats
from tests.model.conftest import make_const_model, rows

CLASSES = ["cat", "dog"]
# (xyxy in 320x320 network-input pixels, score, class): inside the letterboxed content of
# every image size below, and not overlapping, so NMS keeps all three
KNOWN = [
    ((50.0, 60.0, 150.0, 200.0), 0.9, 0),
    ((160.0, 100.0, 270.0, 270.0), 0.8, 1),
    ((60.0, 220.0, 120.0, 275.0), 0.6, 0),
]
SIZES = [(320, 320), (640, 480), (480, 640), (400, 300), (800, 600)]


# -- plain-file evaluation -----------------------------------------------------------------------


def write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj))
    return path


@pytest.mark.parametrize(
    "case",
    [
        dict(seed=11),  # plain: some empty images, last class without GT
        dict(seed=12, crowd_rate=0.4),  # many crowd boxes
        dict(seed=13, empty_image_rate=0.6, no_pred_rate=0.4),  # mostly empty images
        dict(seed=14, n_cats=6, score_levels=4),  # classes without GT, tied scores
        dict(seed=15, empty_image_rate=1.0),  # no ground truth at all: every number is -1
    ],
)
def test_eval_files_equals_pycocotools(tmp_path, case):
    gt, preds = make_coco_case(**case)
    out = run_detops(
        "eval", "--gt", str(write_json(tmp_path / "gt.json", gt)),
        "--pred", str(write_json(tmp_path / "pred.json", preds)), "--json", cwd=tmp_path,
    )
    got = json.loads(out.stdout)["coco"]
    assert list(got) == list(STAT_KEYS)
    assert len(STAT_KEYS) == 12
    np.testing.assert_allclose([got[k] for k in STAT_KEYS], pycocotools_stats(gt, preds),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "corrupt, fragments",
    [
        # an image id the ground truth does not have
        (lambda p: p[3].update(image_id=999), ["predictions[3]", "image_id 999"]),
        # a NaN coordinate (json writes NaN; Python reads it back)
        (lambda p: p[0]["bbox"].__setitem__(2, math.nan), ["predictions[0]", "not finite"]),
        # a box with 3 numbers
        (lambda p: p[5].update(bbox=[1, 2, 3]), ["predictions[5]", "4 numbers"]),
        # no score
        (lambda p: p[1].pop("score"), ["predictions[1]", "missing 'score'"]),
    ],
)
def test_eval_refuses_bad_predictions_naming_the_record(tmp_path, corrupt, fragments):
    gt, preds = make_coco_case(21, empty_image_rate=0.0, no_pred_rate=0.0)
    corrupt(preds)
    proc = run_detops(
        "eval", "--gt", str(write_json(tmp_path / "gt.json", gt)),
        "--pred", str(write_json(tmp_path / "pred.json", preds)), "--json",
        cwd=tmp_path, check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")
    for fragment in fragments:
        assert fragment in proc.stderr


# -- a workspace with a registered constant model --------------------------------------------------


def expected_boxes(w: int, h: int, size: int = 320) -> list[list[float]]:
    """KNOWN mapped back through a centred letterbox to a ``w x h`` image (hand-derived)."""
    r = min(size / w, size / h)
    nw, nh = round(w * r), round(h * r)
    left, top = (size - nw) // 2, (size - nh) // 2
    out = []
    for (x1, y1, x2, y2), _score, _cls in KNOWN:
        xs = [min(max((x - left) * w / nw, 0), w) for x in (x1, x2)]
        ys = [min(max((y - top) * h / nh, 0), h) for y in (y1, y2)]
        out.append([xs[0], ys[0], xs[1], ys[1]])
    return out


def write_images(folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for i, (w, h) in enumerate(SIZES):
        path = folder / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    """A workspace with ``det@v1`` (constant graph, ``production``) and ``det@v2``; images."""
    root = tmp_path_factory.mktemp("model-cli")
    ws = root / "ws"
    run_detops("init", str(ws))
    onnx = root / "det.onnx"
    onnx.write_bytes(make_const_model({"detections": rows(KNOWN, pad_rows=2)}))
    spec = root / "spec.yaml"
    spec.write_text(
        "class_names: [cat, dog]\ninput_width: 320\ninput_height: 320\nadapter: detops\n"
        "resize: letterbox\nscore_threshold: 0.25\n"
    )
    first = json.loads(run_detops("models", "register", "--onnx", str(onnx), "--spec", str(spec),
                                  "--name", "det", "--json", cwd=ws).stdout)
    second = json.loads(run_detops("models", "register", "--onnx", str(onnx), "--spec",
                                   str(spec), "--name", "det", "--description", "same graph",
                                   "--json", cwd=ws).stdout)
    moved = run_detops("models", "alias", "det@v1", "production", cwd=ws).stdout
    images = write_images(root / "images")
    # predictions for the oracle, as `detops eval` makes them (threshold 0.01 for the PR curve)
    preds = root / "eval-preds.json"
    run_detops("predict", "det@production", *map(str, images), "--out", str(preds),
               "--score-threshold", "0.01", cwd=ws)
    return {"ws": ws, "root": root, "onnx": onnx, "spec": spec, "images": images,
            "first": first, "second": second, "moved": moved,
            "eval_preds": json.loads(preds.read_text())}


def test_register_alias_list_show_compare(world):
    ws = world["ws"]
    assert (world["first"]["ref"], world["second"]["ref"]) == ("det@v1", "det@v2")
    assert world["first"]["onnx_sha256"] == hashlib.sha256(world["onnx"].read_bytes()).hexdigest()
    assert world["first"]["lineage"] == {"source": "onnx", "onnx_file": str(world["onnx"])}
    assert world["moved"].strip() == "det@production: unset -> v1"
    listed = json.loads(run_detops("models", "list", "--json", cwd=ws).stdout)
    assert [(m["ref"], m["aliases"]) for m in listed] == [("det@v1", ["production"]),
                                                          ("det@v2", [])]
    show = json.loads(run_detops("models", "show", "det@production", "--json", cwd=ws).stdout)
    assert (show["ref"], show["aliases"], show["spec"]["class_names"]) == (
        "det@v1", ["production"], CLASSES)
    assert [(h["alias"], h["from"], h["to"]) for h in show["alias_history"]] == [
        ("production", None, 1)]
    assert show["alias_history"][0]["actor"]
    compare = json.loads(run_detops("models", "compare", "det@v1", "det@v2", "--json",
                                    cwd=ws).stdout)
    assert (compare["a"], compare["b"]) == ("det@v1", "det@v2")
    assert set(compare["lineage"]) == {"det@v1", "det@v2"}
    text = run_detops("models", "compare", "det@v1", "det@v2", cwd=ws).stdout
    assert "det@v1" in text and "det@v2" in text


def test_unknown_alias_exits_2_listing_aliases(world):
    proc = run_detops("models", "show", "det@staging", cwd=world["ws"], check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "no alias 'staging' (aliases: production)" in proc.stderr


def test_register_refuses_spec_that_does_not_fit(world, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(world["spec"].read_text().replace("input_width: 320", "input_width: 640"))
    proc = run_detops("models", "register", "--onnx", str(world["onnx"]), "--spec", str(bad),
                      "--name", "det", cwd=world["ws"], check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "input 'images'" in proc.stderr
    listed = json.loads(run_detops("models", "list", "--json", cwd=world["ws"]).stdout)
    assert [m["ref"] for m in listed] == ["det@v1", "det@v2"]


def test_card_writes_markdown_and_html(world, tmp_path):
    out = run_detops("models", "card", "det@v1", "--out", str(tmp_path / "card"),
                     cwd=world["ws"]).stdout
    md, page = tmp_path / "card" / "card.md", tmp_path / "card" / "card.html"
    assert f"wrote {md}" in out and f"wrote {page}" in out
    text = md.read_text()
    assert text.startswith("# Model card: det@v1")
    assert "aliases: production" in text and "cat, dog" in text and "ms p50" in text
    assert page.read_text().startswith("<!doctype html>")
    assert "<h1>Model card: det@v1</h1>" in page.read_text()


def test_predict_writes_the_known_boxes_in_each_images_pixels(world, tmp_path):
    out = tmp_path / "preds.json"
    run_detops("predict", "det@production", str(world["images"][0].parent), "--out", str(out),
               "--batch", "2", cwd=world["ws"])
    results = json.loads(out.read_text())
    index = json.loads(out.with_suffix(".images.json").read_text())
    assert [Path(i["file_name"]).name for i in index] == [p.name for p in world["images"]]
    for entry, (w, h) in zip(index, SIZES, strict=True):
        mine = [r for r in results if r["image_id"] == entry["id"]]
        assert [(r["category_id"], r["score"]) for r in mine] == [
            (cls + 1, pytest.approx(score)) for _box, score, cls in KNOWN]
        boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh in (r["bbox"] for r in mine)]
        np.testing.assert_allclose(boxes, expected_boxes(w, h), atol=2e-3)


# -- evaluating a registered model on a registered dataset ----------------------------------------


def gt_doc(images: list[Path], boxes: dict[int, list[tuple[list[float], int, int]]]) -> dict:
    """COCO GT for ``images``: ``boxes[i]`` = [(xyxy, category_id, iscrowd)] of image i."""
    anns = []
    for i, items in boxes.items():
        for (x1, y1, x2, y2), cat, crowd in items:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": crowd})
    return {
        "images": [{"id": i + 1, "file_name": p.name, "width": w, "height": h}
                   for i, (p, (w, h)) in enumerate(zip(images, SIZES, strict=True))],
        "categories": [{"id": c + 1, "name": n} for c, n in enumerate(CLASSES)],
        "annotations": anns,
    }


def perfect() -> dict[int, list[tuple[list[float], int, int]]]:
    """GT equal to what the constant graph predicts on every image."""
    return {i: [(b, KNOWN[k][2] + 1, 0) for k, b in enumerate(expected_boxes(w, h))]
            for i, (w, h) in enumerate(SIZES)}


def shift(box: list[float], frac: float) -> list[float]:
    dx = (box[2] - box[0]) * frac
    return [box[0] + dx, box[1], box[2] + dx, box[3]]


def perturbed(kind: str) -> dict[int, list[tuple[list[float], int, int]]]:
    gt = perfect()
    if kind == "shift":  # IoU between thresholds on two images
        gt[1][0] = (shift(gt[1][0][0], 0.15), *gt[1][0][1:])
        gt[3][1] = (shift(gt[3][1][0], 0.3), *gt[3][1][1:])
    elif kind == "drop":  # a prediction without GT becomes a false positive
        del gt[2][1]
    elif kind == "extra":  # a GT box nobody predicts is missed
        gt[0].append(([250.0, 10.0, 300.0, 40.0], 2, 0))
    elif kind == "relabel":  # a cat labelled dog: one FP cat and one missed dog
        gt[4][0] = (gt[4][0][0], 2, 0)
    elif kind == "crowd":  # a crowd region absorbs its match; an unmatched small one
        gt[0][2] = (gt[0][2][0], 1, 1)
        gt[2].append(([5.0, 5.0, 20.0, 20.0], 1, 0))
    return gt


def evaluate_on(world: dict[str, Any], doc: dict[str, Any], tmp: Path) -> tuple[dict, str]:
    ws = world["ws"]
    folder = world["images"][0].parent
    ann = write_json(folder / f"{tmp.name}.json", doc)
    ref = json.loads(run_detops("data", "add", "scenes", str(ann), "--format", "coco", "--json",
                                cwd=ws).stdout)["ref"]
    out = run_detops("eval", "det@production", "--data", ref, "--split", "all", "--json", cwd=ws)
    return json.loads(out.stdout), ref


def test_eval_of_model_on_matching_gt_is_perfect(world, tmp_path):
    result, ref = evaluate_on(world, gt_doc(world["images"], perfect()), tmp_path)
    assert (result["model"], result["data"], result["split"]) == ("det@v1", ref, "all")
    assert result["images"] == len(SIZES)
    c = result["coco"]
    assert (c["AP"], c["AP50"], c["AP75"], c["AR100"]) == (1.0, 1.0, 1.0, 1.0)
    assert {k: v["AP"] for k, v in result["per_class"].items()} == {"cat": 1.0, "dog": 1.0}


@pytest.mark.parametrize(
    "kind",
    [
        "shift",  # boxes moved by 15% and 30% of their width
        "drop",  # a GT removed
        "extra",  # a GT added
        "relabel",  # a GT's class changed
        "crowd",  # a crowd GT and an extra small one
    ],
)
def test_eval_of_model_equals_pycocotools(world, tmp_path, kind):
    result, ref = evaluate_on(world, gt_doc(world["images"], perturbed(kind)), tmp_path)
    # the oracle reads the GT as detops stored it (its image ids), checked against ours
    export = tmp_path / "export"
    run_detops("data", "export", ref, str(export), "--format", "coco", cwd=world["ws"])
    (ann_file,) = export.glob("*.json")
    stored = json.loads(ann_file.read_text())
    ids = {im["sha256"]: im["id"] for im in stored["images"]}
    mine = gt_doc(world["images"], perturbed(kind))
    id_of = {i + 1: ids[hashlib.sha256(p.read_bytes()).hexdigest()]
             for i, p in enumerate(world["images"])}
    assert sorted((id_of[a["image_id"]], a["category_id"], a["iscrowd"],
                   [round(v, 3) for v in a["bbox"]]) for a in mine["annotations"]) == sorted(
        (a["image_id"], a["category_id"], a["iscrowd"], [round(v, 3) for v in a["bbox"]])
        for a in stored["annotations"])
    # the predictions: what `detops predict` writes for the same model and images
    preds = [{**r, "image_id": id_of[r["image_id"]]} for r in world["eval_preds"]]
    oracle = pycocotools_stats(stored, preds)
    got = [result["coco"][k] for k in STAT_KEYS]
    np.testing.assert_allclose(got, oracle, rtol=0, atol=1e-12)
    assert result["coco"]["AP"] < 1.0
