"""Human-level performance: each annotator against the consensus of the others, COCO-exact."""

from __future__ import annotations

import numpy as np
import pytest

from detops.data.baseline import (
    _image_counts,
    _resampled_prf,
    beside_lines,
    get_baseline,
    hlp_beside,
    human_level,
    save_baseline,
)
from detops.data.consensus import add_consensus, build_consensus
from detops.data.dataset import Dataset
from detops.data.synth import AnnotatorSpec
from detops.data.versions import add_dataset
from detops.errors import ConsistencyError
from detops.evaluate import precision_recall_f1
from detops.workspace import Workspace, init_workspace
from tests.evaluate.conftest import pycocotools_eval, pycocotools_stats


def coco_of(ds: Dataset, annotator: str | None) -> tuple[dict, list]:
    """(GT of the other annotators' consensus, ``annotator``'s boxes as score-1 results)."""
    others = [n for n in ds.annotators if n != annotator]
    gt_ds = build_consensus(ds, annotators=others, all_labelled=True)
    cats = [{"id": c.id + 1, "name": c.name} for c in ds.categories]
    images = [{"id": img.id + 1} for img in ds.images]
    anns = [{"id": k + 1, "image_id": a.image_id + 1, "category_id": a.category_id + 1,
             "bbox": [a.box[0], a.box[1], a.box[2] - a.box[0], a.box[3] - a.box[1]],
             "iscrowd": 0, "area": (a.box[2] - a.box[0]) * (a.box[3] - a.box[1])}
            for k, a in enumerate(gt_ds.annotations)]
    preds = [{"image_id": a.image_id + 1, "category_id": a.category_id + 1,
              "bbox": [a.box[0], a.box[1], a.box[2] - a.box[0], a.box[3] - a.box[1]],
              "score": 1.0} for a in ds.annotations if a.annotator == annotator]
    return {"images": images, "categories": cats, "annotations": anns}, preds


def pycocotools_prf(gt: dict, preds: list) -> tuple[int, int, int]:
    """TP / FP / FN at IoU 0.5 from pycocotools' own per-image matches (area all, 100 dets)."""
    ev = pycocotools_eval(gt, preds)
    tp = fp = fn = 0
    for e in ev.evalImgs:
        if e is None or e["aRng"] != [0, 1e10] or e["maxDet"] != 100:
            continue
        matched = np.asarray(e["dtMatches"])[0] > 0
        ignored = np.asarray(e["dtIgnore"])[0].astype(bool)
        tp += int((matched & ~ignored).sum())
        fp += int((~matched & ~ignored).sum())
        fn += int((~np.asarray(e["gtIgnore"], bool)).sum()) - int((matched & ~ignored).sum())
    return tp, fp, fn


@pytest.fixture(scope="module")
def scenes(make_scenes):
    s = make_scenes(n=120)
    for i, img in enumerate(s.ds.images):
        img.split = "val" if i % 4 == 0 else "train"
    return s


@pytest.fixture(scope="module")
def result(scenes):
    return human_level(scenes.ds, bootstrap=40, all_labelled=True)


@pytest.mark.parametrize("annotator", ["A", "B", "C"])
def test_each_annotator_is_scored_like_pycocotools_scores_a_model(scenes, result, annotator):
    gt, preds = coco_of(scenes.ds, annotator)
    stats = pycocotools_stats(gt, preds)
    mine = result["splits"]["all"]["per_annotator"][annotator]
    assert mine["coco"]["AP"] == pytest.approx(stats[0], abs=1e-12)
    assert mine["coco"]["AP50"] == pytest.approx(stats[1], abs=1e-12)
    t = mine["at_threshold"]
    assert (t["tp"], t["fp"], t["fn"]) == pycocotools_prf(gt, preds)
    assert mine["images"] == len(scenes.ds.images)


def test_hlp_is_the_mean_over_annotators_with_intervals_around_it(result):
    part = result["splits"]["all"]
    per = part["per_annotator"]
    h = part["hlp"]
    assert h["AP50"] == pytest.approx(np.mean([r["coco"]["AP50"] for r in per.values()]))
    assert h["f1"] == pytest.approx(np.mean([r["at_threshold"]["f1"] for r in per.values()]))
    for m in ("AP50", "AP", "precision", "recall", "f1"):
        assert h["ci"][m]["low"] <= h[m] <= h["ci"][m]["high"], m
    # C misses and confuses: it agrees least with the others
    assert per["C"]["at_threshold"]["recall"] < min(per["A"]["at_threshold"]["recall"],
                                                    per["B"]["at_threshold"]["recall"])
    assert set(result["splits"]) == {"all", "train", "val"}
    assert result["splits"]["val"]["images"] + result["splits"]["train"]["images"] == 120


def test_precision_recall_resamples_are_the_bootstrap_ci_draws(scenes):
    gt, preds = coco_of(scenes.ds, "C")
    n = len(gt["images"])
    samples = _resampled_prf(_image_counts(gt, preds, n), 3, seed=7)
    rng = np.random.default_rng(7)  # what bootstrap_ci draws with seed 7
    for r in range(3):
        pick = rng.integers(0, n, n)
        images, anns, dets = [], [], []
        for new, old in enumerate(pick.tolist(), 1):
            images.append({"id": new})
            mine = [x for x in gt["annotations"] if x["image_id"] == old + 1]
            anns += [{**a, "id": len(anns) + k + 1, "image_id": new} for k, a in enumerate(mine)]
            dets += [{**p, "image_id": new} for p in preds if p["image_id"] == old + 1]
        prf = precision_recall_f1({**gt, "images": images, "annotations": anns}, dets, 0.5)
        assert samples["precision"][r] == pytest.approx(prf.precision)
        assert samples["recall"][r] == pytest.approx(prf.recall)


def test_annotators_who_agree_perfectly_score_one(make_scenes):
    perfect = make_scenes([AnnotatorSpec("A"), AnnotatorSpec("B")], n=30)
    h = human_level(perfect.ds, bootstrap=10)["splits"]["all"]["hlp"]
    metrics = ("AP50", "AP", "precision", "recall", "f1")
    assert {m: round(h[m], 6) for m in metrics} == dict.fromkeys(metrics, 1.0)


def test_unknown_split_is_refused(scenes):
    with pytest.raises(ConsistencyError, match=r"split 'test' is not in the dataset \(choose "
                                               r"from all, train, val\)"):
        human_level(scenes.ds, splits=["all", "test"], bootstrap=0)


def test_the_baseline_is_stored_and_found_for_the_dataset_and_its_consensus(tmp_path, scenes,
                                                                           result):
    ws = Workspace(init_workspace(tmp_path / "ws"))
    try:
        ds = scenes.ds.subset(range(8))
        ds.root = scenes.root
        dv = add_dataset(ws, "shapes", ds)
        assert get_baseline(ws, dv.ref) is None
        save_baseline(ws, dv, result, {"bootstrap": 40})
        base = get_baseline(ws, "shapes@v1")
        assert base["dataset"] == "shapes@v1" and base["params"] == {"bootstrap": 40}
        assert base["splits"]["val"]["hlp"]["AP50"] == result["splits"]["val"]["hlp"]["AP50"]
        cv, _ = add_consensus(ws, dv.ref, "shapes-consensus", all_labelled=True)
        assert get_baseline(ws, cv.ref)["dataset"] == "shapes@v1"  # the source's baseline
        assert hlp_beside(ws, cv.ref, "val")["AP50"] == result["splits"]["val"]["hlp"]["AP50"]
        assert hlp_beside(ws, dv.ref, "test") is None  # not computed for that split
        assert hlp_beside(ws, "nothing@v1", "val") is None
        # a new version of the data has its own (no) baseline
        ds2 = scenes.ds.subset(range(9))
        ds2.root = scenes.root
        assert get_baseline(ws, add_dataset(ws, "shapes", ds2).ref) is None
        ev = {"coco": {"AP50": 0.5, "AP": 0.3}, "annotator": "A",
              "at_threshold": {"precision": 0.6, "recall": 0.5, "f1": 0.55}}
        table = beside_lines(ev, hlp_beside(ws, dv.ref, "val"))
        assert table[1].split()[:2] == ["mAP@0.5", "0.500"] and "annotator A" in table[-1]
    finally:
        ws.close()


def test_an_undefined_map_is_left_out_of_the_mean_not_averaged_as_minus_one():
    # on val only A draws: A's reference (B and C's consensus) is empty, so A's mAP is COCO's
    # -1 (undefined); B and C are each scored against A's boxes and miss them all (mAP 0)
    from detops.data.baseline import summary_lines
    from detops.data.dataset import Category

    ds = Dataset(categories=[Category(0, "star")])
    img = ds.add_image("0.png", 100, 100, split="train")
    for who in "ABC":
        ds.add_annotation(img.id, (10, 10, 50, 50), 0, annotator=who)
    for i in range(1, 4):
        img = ds.add_image(f"{i}.png", 100, 100, split="val")
        ds.add_annotation(img.id, (10, 10, 50, 50), 0, annotator="A")
    r = human_level(ds, bootstrap=10, all_labelled=True, splits=["val"])
    val = r["splits"]["val"]
    assert [val["per_annotator"][x]["coco"]["AP50"] for x in "ABC"] == [-1.0, 0.0, 0.0]
    assert val["hlp"]["AP50"] == val["hlp"]["AP"] == 0.0  # the mean of B and C only
    assert val["hlp"]["ci"]["AP50"] == {"low": 0.0, "high": 0.0}
    assert any("A's mAP is undefined" in n for n in r["notes"])
    assert "A vs the others: mAP@0.5 n/a" in "\n".join(summary_lines(r, "val"))
    # nobody has a defined mAP: no number at all
    ds.annotations = [a for a in ds.annotations if a.image_id == 0]
    for img in ds.images[1:]:
        img.tags["annotators"] = ["A", "B", "C"]
    r = human_level(ds, bootstrap=10, splits=["val"])
    assert r["splits"]["val"]["hlp"]["AP50"] is None
    assert "mAP@0.5 n/a" in summary_lines(r, "val")[0]
