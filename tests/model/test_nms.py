"""NMS against a brute-force reference on random boxes (hypothesis)."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detops.model import nms as nms_module
from detops.model.nms import nms


def reference_nms(boxes, scores, iou_threshold, labels=None, max_output=None) -> list[int]:
    """Greedy NMS, one pair at a time in plain Python: the definition, not an optimisation."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    b = [[float(v) for v in box] for box in boxes]

    def area(i: int) -> float:
        return max(b[i][2] - b[i][0], 0.0) * max(b[i][3] - b[i][1], 0.0)

    def iou(i: int, j: int) -> float:
        iw = max(min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]), 0.0)
        ih = max(min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]), 0.0)
        inter = iw * ih
        union = area(i) + area(j) - inter
        return inter / union if union > 0 else 0.0

    kept: list[int] = []
    for i in order:
        if max_output is not None and len(kept) == max_output:
            break
        if all(
            (labels is not None and labels[k] != labels[i]) or iou(k, i) <= iou_threshold
            for k in kept
        ):
            kept.append(i)
    return kept


coord = st.integers(0, 60).map(float)  # a small grid makes overlaps, ties and equal boxes common


@st.composite
def problems(draw):
    n = draw(st.integers(0, 40))
    boxes = []
    for _ in range(n):
        x1, y1 = draw(coord), draw(coord)
        w, h = draw(st.integers(0, 30)), draw(st.integers(0, 30))  # zero-area boxes included
        boxes.append([x1, y1, x1 + w, y1 + h])
    scores = draw(
        st.lists(
            st.sampled_from([0.1, 0.3, 0.5, 0.7, 0.9]) | st.floats(0, 1, width=32),
            min_size=n,
            max_size=n,
        )
    )
    labels = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    return (
        np.array(boxes, np.float32).reshape(-1, 4),
        np.array(scores, np.float32),
        np.array(labels, np.int64),
    )


@settings(max_examples=300, deadline=None)
@given(
    problems(),
    st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]),
    st.booleans(),
    st.none() | st.integers(1, 10),
    # MATRIX_MAX: the per-box loop alone; the loop handing over to the matrix once at most 8
    # candidates remain; or at any size (after the first step that suppresses at most one)
    st.sampled_from([0, 8, 10**6]),
)
def test_nms_matches_the_reference(
    problem, iou_threshold, per_class, max_output, matrix_max
) -> None:
    boxes, scores, labels = problem
    lab = labels if per_class else None
    with mock.patch.object(nms_module, "MATRIX_MAX", matrix_max):
        got = nms(boxes, scores, iou_threshold, labels=lab, max_output=max_output)
    assert got.dtype == np.int64
    assert got.tolist() == reference_nms(boxes, scores, iou_threshold, lab, max_output)


NMS_CASES = [
    # (boxes, scores, iou threshold, labels, expected kept indices)
    # identical boxes: the higher score wins
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.9], 0.5, None, [1]),
    # equal scores: the earlier box wins (stable order)
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.7, 0.7], 0.5, None, [0]),
    # IoU exactly at the threshold is kept (only > suppresses): IoU of these two is 0.5
    ([[0, 0, 10, 10], [0, 0, 10, 20]], [0.9, 0.8], 0.5, None, [0, 1]),
    # a suppressed box does not suppress others (chain A > B > C, A and C apart)
    ([[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]], [0.9, 0.8, 0.7], 0.3, None, [0, 2]),
    # per-class: the same box in two classes survives twice
    ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.8], 0.5, [0, 1], [0, 1]),
    # zero-area boxes never overlap anything
    ([[5, 5, 5, 5], [5, 5, 5, 5]], [0.9, 0.8], 0.5, None, [0, 1]),
    # nothing in, nothing out
    (np.zeros((0, 4)), [], 0.5, None, []),
]


@pytest.mark.parametrize(("boxes", "scores", "thr", "labels", "want"), NMS_CASES)
def test_nms_cases(boxes, scores, thr, labels, want) -> None:
    lab = None if labels is None else np.array(labels)
    got = nms(
        np.array(boxes, np.float32).reshape(-1, 4), np.array(scores, np.float32), thr, labels=lab
    )
    assert got.tolist() == want
