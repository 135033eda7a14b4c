"""Label-error candidates from a registered model (real ONNX Runtime, real store)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detops.data.dataset import Category, Dataset
from detops.data.label_errors import find_label_errors, send_to_review, summary_lines
from detops.data.versions import add_dataset
from detops.errors import ConsistencyError
from detops.model.registry import register_model
from detops.workspace import Workspace, init_workspace
from tests.model.conftest import make_const_model, rows

CLASSES = ["star", "square", "circle", "cross"]
# what is really in every image, and what the constant model predicts there (input = image px)
TRUTH = [((20.0, 20.0, 100.0, 100.0), 0.9, 0), ((150.0, 30.0, 230.0, 110.0), 0.85, 1),
         ((40.0, 180.0, 120.0, 260.0), 0.8, 2), ((200.0, 200.0, 280.0, 280.0), 0.75, 3)]


def labelled(tmp_path, edits: list[tuple[str, str, int | None]]) -> Dataset:
    """One 320x320 image per edit: (split, what is wrong with its labels, which object)."""
    ds = Dataset(categories=[Category(i, c) for i, c in enumerate(CLASSES)], root=tmp_path)
    for i, (split, edit, k) in enumerate(edits):
        noise = np.random.default_rng(i).integers(0, 255, (320, 320, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / f"{i}.png")
        img = ds.add_image(f"{i}.png", 320, 320, split=split)
        for j, (box, _score, cls) in enumerate(TRUTH):
            if j == k and edit == "removed":
                continue
            if j == k and edit == "relabelled":
                cls = (cls + 3) % len(CLASSES)
            if j == k and edit == "moved":
                box = (box[0] + 40, box[1] + 40, box[2] + 40, box[3] + 40)
            ds.add_annotation(img.id, box, cls, annotator="A")
    return ds


EDITS = [("val", "none", None), ("val", "removed", 0), ("val", "relabelled", 1),
         ("val", "moved", 2), ("train", "removed", 3), ("train", "none", None)]


@pytest.fixture()
def ws(tmp_path):
    w = Workspace(init_workspace(tmp_path / "ws"))
    ds = labelled(tmp_path, EDITS)
    add_dataset(w, "shapes", ds, keep_splits=True)
    onnx = make_const_model({"detections": rows(TRUTH, 2)})
    spec = {"class_names": CLASSES, "input_width": 320, "input_height": 320,
            "score_threshold": 0.5}
    register_model(w, "det", onnx, spec, lineage={"dataset": "shapes@v1", "annotator": "A"})
    register_model(w, "nolineage", onnx, spec)
    yield w
    w.close()


def found(result: dict) -> list[tuple]:
    return [(c["kind"], c["file"], c["score"], c["in_sample"]) for c in result["candidates"]]


def test_candidates_are_the_boxes_deliberately_broken_on_unseen_images(ws):
    r = find_label_errors(ws, "shapes@v1", "det@v1")
    moved_iou = 1600 / 11200  # the moved box against the true one
    assert found(r) == [
        ("missed_box", "1.png", 0.9, False),  # removed: the model still sees it
        ("wrong_class", "2.png", 0.85, False),  # relabelled: no prediction of the label's class
        ("bad_location", "3.png", round(0.8 * (1 - moved_iou), 4), False),
    ]
    assert r["candidates"][1]["label"]["class"] == "star"
    assert r["candidates"][1]["prediction"]["class"] == "square"
    assert r["images_used"] == 4 and r["counts"] == {"missed_box": 1, "wrong_class": 1,
                                                       "bad_location": 1}
    assert "trained on the train split of shapes@v1 (2 images)" in r["out_of_sample"]
    assert "2 of those images are in shapes@v1 and were left out" in r["out_of_sample"]
    assert r["annotator"] == "A"  # the model's own ground truth


def test_training_images_are_used_only_when_asked_and_then_flagged(ws):
    r = find_label_errors(ws, "shapes@v1", "det@v1", include_train=True)
    assert ("missed_box", "4.png", 0.75, True) in found(r)
    assert r["images_in_sample"] == 2
    assert any("[in sample]" in line for line in summary_lines(r))


def test_in_sample_images_are_known_by_content_in_other_versions(ws, tmp_path):
    folder = tmp_path / "other"
    folder.mkdir()
    other = labelled(folder, [("val", "none", None), ("val", "removed", 3)])
    # another dataset holding shapes@v1's images 0 (val) and 4 (train): the same bytes
    for i, src in ((0, 0), (1, 4)):
        (folder / f"{i}.png").write_bytes((tmp_path / f"{src}.png").read_bytes())
    add_dataset(ws, "other", other, keep_splits=True)
    r = find_label_errors(ws, "other@v1", "det@v1")
    assert r["images_used"] == 1 and found(r) == []  # 1.png is shapes' training image 4.png


def test_a_model_without_lineage_uses_every_image_and_says_so(ws):
    r = find_label_errors(ws, "shapes@v1", "nolineage@v1")
    assert r["images_used"] == 6 and len(r["candidates"]) == 4
    assert "records no training data" in r["out_of_sample"]
    assert all(c["in_sample"] is None for c in r["candidates"])


def test_confidence_threshold_and_bad_annotator(ws):
    r = find_label_errors(ws, "shapes@v1", "det@v1", min_score=0.88)
    assert found(r) == [("missed_box", "1.png", 0.9, False)]  # only the 0.9 prediction counts
    with pytest.raises(ConsistencyError, match="annotator 'Z' is not in the dataset"):
        find_label_errors(ws, "shapes@v1", "det@v1", annotator="Z")


def test_images_with_candidates_go_to_the_review_queue(ws):
    from detops.serve.review import ReviewQueue

    r = find_label_errors(ws, "shapes@v1", "det@v1")
    ids = send_to_review(ws, r)
    items = ReviewQueue(ws).items(state="pending")
    assert sorted(i["id"] for i in items) == sorted(ids) and len(ids) == 3
    assert {i["reason"] for i in items} == {"label_errors"}
    assert {i["model"] for i in items} == {"det@v1"}
    one = ReviewQueue(ws).get(ids[0])
    assert [s["label"] for s in one["suggestions"]] == CLASSES  # the model's confident boxes
    # the same candidates again: those images already wait for review, nothing is doubled
    assert send_to_review(ws, r) == [] and len(ReviewQueue(ws).items()) == 3
    # once reviewed, an image can be queued again (limit: the best image only)
    best = next(i for i in items if i["id"] == ids[0])["request_id"]
    first = next(i["id"] for i in items if i["request_id"] == best)
    ReviewQueue(ws).submit(first, [], "ann")
    # label-error items were picked for disagreeing with the labels: reviewing them says
    # nothing about how often the served model is overridden
    stats = ReviewQueue(ws).stats()
    assert (stats["reviewed"], stats["override_rate"], stats["reviewed_offline"]) == (0, None, 1)
    again = send_to_review(ws, r, limit=1)
    assert len(again) == 1 and ReviewQueue(ws).get(again[0])["request_id"] == best
    assert len(ReviewQueue(ws).items()) == 3


def test_review_items_follow_the_retention_setting_and_are_all_or_nothing(ws, monkeypatch):
    import datetime as dt

    from detops.serve.review import ReviewQueue
    from detops.store.artifacts import LocalArtifactStore

    r = find_label_errors(ws, "shapes@v1", "det@v1")
    ws.settings.serve.review_retention_days = 2.0
    [rid] = send_to_review(ws, r, limit=1)
    item = ReviewQueue(ws).get(rid)
    at, expires = (dt.datetime.fromisoformat(item[k]) for k in ("at", "expires_at"))
    assert expires - at == dt.timedelta(days=2)
    # a failure while storing the images stores no item and no image
    real, calls = LocalArtifactStore.put_bytes, []

    def failing(self, data):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(self, data)

    monkeypatch.setattr(LocalArtifactStore, "put_bytes", failing)
    blobs = sorted(p.name for p in ws.artifacts.root.rglob("*") if p.is_file())
    with pytest.raises(OSError, match="disk full"):
        send_to_review(ws, r)
    assert len(calls) == 2 and [i["id"] for i in ReviewQueue(ws).items()] == [rid]
    assert sorted(p.name for p in ws.artifacts.root.rglob("*") if p.is_file()) == blobs


def test_model_classes_the_dataset_lacks_are_left_out_or_refused(ws):
    # the same graph, but its class 1 (the relabelled object's prediction) is "kite" here
    onnx = make_const_model({"detections": rows(TRUTH, 2)})
    other = ["star", "kite", "circle", "cross"]
    spec = {"class_names": other, "input_width": 320, "input_height": 320, "score_threshold": 0.5}
    register_model(ws, "kites", onnx, spec, lineage={"dataset": "shapes@v1", "annotator": "A"})
    r = find_label_errors(ws, "shapes@v1", "kites@v1")
    # no "wrong_class" from a class the labels cannot have; the other two are still found
    assert [c[:2] for c in found(r)] == [("missed_box", "1.png"), ("bad_location", "3.png")]
    assert r["notes"] == ["predictions of kite (classes kites@v1 knows and shapes@v1 does not) "
                          "are left out"]
    assert "  note: predictions of kite" in "\n".join(summary_lines(r))
    spec["class_names"] = ["kite", "owl", "bat", "moth"]
    register_model(ws, "birds", onnx, spec)
    with pytest.raises(ConsistencyError, match=r"birds@v1 knows none of the classes of "
                                               r"shapes@v1 \(model: kite, owl, bat, moth; "
                                               r"dataset: star, square, circle, cross\)"):
        find_label_errors(ws, "shapes@v1", "birds@v1")
