"""Consensus labels: majority vote, median-fused boxes, who agreed, stored as a version."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detops.data._agreement import iou_grid
from detops.data.consensus import CONSENSUS, add_consensus, build_consensus
from detops.data.consistency import check_consistency
from detops.data.dataset import Category, Dataset
from detops.data.versions import add_dataset, get_version, load_version
from detops.errors import ConsistencyError
from detops.workspace import Workspace, init_workspace


def three_way() -> Dataset:
    ds = Dataset(categories=[Category(0, "star"), Category(1, "square")])
    img = ds.add_image("a.png", 200, 200)
    rows = [
        # object 1: all three; C calls it a square, B's box is a bit off
        ("A", (10, 10, 50, 50), 0), ("B", (14, 10, 54, 50), 0), ("C", (10, 12, 50, 52), 1),
        # object 2: A and C only (2 of 3 votes): kept; a class tie A square vs C star
        ("A", (100, 100, 150, 150), 1), ("C", (100, 100, 150, 150), 0),
        # object 3: B only (1 of 3): dropped
        ("B", (160, 10, 190, 40), 0),
    ]
    for who, box, cls in rows:
        ds.add_annotation(img.id, box, cls, annotator=who)
    return ds


def test_majority_vote_fused_box_and_who_agreed():
    out = build_consensus(three_way())
    assert [(a.box, a.category_id, a.annotator) for a in out.annotations] == [
        ((10.0, 10.0, 50.0, 50.0), 0, CONSENSUS),  # per-coordinate median of the three boxes
        ((100.0, 100.0, 150.0, 150.0), 1, CONSENSUS),  # the tie goes to A, listed first
    ]
    first, second = (a.attributes for a in out.annotations)
    assert first == {"votes": 3, "labelled_by": 3, "annotators": ["A", "B", "C"],
                     "agreed": ["A", "B"], "source_ids": [0, 1, 2],
                     "class_votes": {"star": ["A", "B"], "square": ["C"]}}
    assert second["agreed"] == ["A"] and second["class_tie"] is True
    assert out.info["consensus"]["objects_dropped"] == 1


@pytest.mark.parametrize(("min_votes", "kept"), [(1, 3), (2, 2), (3, 1)])
def test_min_votes_sets_how_many_must_draw_an_object(min_votes, kept):
    assert len(build_consensus(three_way(), min_votes=min_votes).annotations) == kept


def test_two_annotators_keep_the_union_by_default():
    ds = three_way()
    ds.annotations = [a for a in ds.annotations if a.annotator != "C"]
    out = build_consensus(ds)
    assert len(out.annotations) == 3  # "at least half" of two is one
    assert len(build_consensus(ds, min_votes=2).annotations) == 1


def test_bad_min_votes_is_refused():
    with pytest.raises(ConsistencyError, match="min_votes=4, but only 3 annotators"):
        build_consensus(three_way(), min_votes=4)


def test_consensus_of_simulated_annotators_is_the_truth_where_two_agree(make_scenes):
    scenes = make_scenes()
    out = build_consensus(scenes.ds, all_labelled=True)
    truth = {t["id"]: t for t in scenes.injected["truth"]}
    by_truth: dict[int, list] = {}
    for a in scenes.ds.annotations:
        by_truth.setdefault(a.attributes["truth_id"], []).append(a)
    exact = {tid for tid, anns in by_truth.items()
             if len(anns) == 3 and sum(a.attributes["injected"] != "none" for a in anns) <= 1}
    assert len(exact) > 500
    fused = {}
    for a in out.annotations:
        ids = {scenes.ds.annotations[i].attributes["truth_id"] for i in a.attributes["source_ids"]}
        assert len(ids) == 1  # one object never mixes boxes of two true objects
        fused[ids.pop()] = a
    for tid in exact:
        a, t = fused[tid], truth[tid]
        assert a.category_id == t["category_id"]
        np.testing.assert_allclose(a.box, t["box"], atol=1e-3)
    # every object two or more annotators drew is in the consensus, unless their boxes are
    # too far apart to be matched (IoU < 0.5: a jittered and a loose box of one object)
    drawn_twice = {tid for tid, anns in by_truth.items() if len(anns) >= 2}
    assert set(fused) <= drawn_twice
    for tid in drawn_twice - set(fused):
        boxes = np.array([a.box for a in by_truth[tid]])
        grid = iou_grid(boxes, boxes)
        assert (grid[np.triu_indices(len(boxes), 1)] < 0.5).all(), tid
    assert len(drawn_twice - set(fused)) <= 0.01 * len(drawn_twice)


def test_add_consensus_registers_a_version_with_splits_kept(tmp_path):
    ws = Workspace(init_workspace(tmp_path / "ws"))
    try:
        ds = three_way()
        ds.root = tmp_path
        Image.new("RGB", (200, 200), (30, 60, 90)).save(tmp_path / "a.png")
        src = add_dataset(ws, "shapes", ds)
        dv, info = add_consensus(ws, src.ref, "shapes-consensus")
        assert dv.ref == "shapes-consensus@v1" and dv.source == "consensus:shapes@v1"
        stored = load_version(ws, dv)
        assert stored.annotators == [CONSENSUS] and len(stored.annotations) == 2
        assert [img.split for img in stored.images] == [
            img.split for img in load_version(ws, src).images]
        assert stored.annotations[0].attributes["agreed"] == ["A", "B"]
        assert info == stored.info["consensus"]  # what the command prints is what was stored
        assert add_consensus(ws, src.ref, "shapes-consensus")[0].created is False  # idempotent
        assert get_version(ws, "shapes-consensus").version == 1
        with pytest.raises(ConsistencyError, match="annotator 'consensus' only"):
            check_consistency(stored)
    finally:
        ws.close()
