"""Output adapters: one conformance suite runs every adapter through the same checks.

Each layout case encodes the same known detections (input pixels of a 320x320 network input)
in one adapter's output format; the suite checks the graph passes ``check_graph``, ``decode``
recovers the boxes, and ``predict`` maps them back to original pixels through a letterbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import pytest

from detops.errors import SpecMismatch
from detops.model.adapters import ADAPTERS, class_ids, get_adapter, to_xyxy
from detops.model.runtime import Runtime
from detops.model.spec import AdapterOptions, ModelSpec

NAMES = ["person", "car", "dog"]
# (xyxy in input pixels, score, class): two confident boxes that do not overlap, one weak box
KNOWN = [
    ((10.0, 80.0, 110.0, 180.0), 0.9, 1),
    ((200.0, 100.0, 300.0, 200.0), 0.6, 0),
    ((150.0, 200.0, 170.0, 230.0), 0.1, 2),
]


@dataclass
class Layout:
    adapter: str
    options: dict[str, Any] = field(default_factory=dict)
    batched: bool = True
    nms_in_graph: bool = False

    def outputs(self, g: Any, known: Any = KNOWN, nc: int = len(NAMES)) -> dict[str, np.ndarray]:
        boxes = np.array([b for b, _, _ in known], np.float32)
        scores = np.array([s for _, s, _ in known], np.float32)
        labels = np.array([c for _, _, c in known], np.int64)
        if self.adapter == "detops":
            return {"detections": g.rows(known, pad_rows=2)}
        if self.adapter == "yolo_nms":
            return {"output0": g.rows(known, pad_rows=2)}
        if self.adapter == "yolo_v8":
            return {"output0": g.yolo_v8_head(known, nc)}
        if self.adapter == "yolo_v5":
            return {"output0": g.yolo_v5_head(known, nc)}
        opts = self.options
        if opts.get("boxes_format") == "xywh":
            boxes[:, 2:] -= boxes[:, :2]
        if opts.get("normalized"):
            boxes /= 320.0
        return {
            opts.get("boxes_output", "boxes"): boxes,
            opts.get("scores_output", "scores"): scores,
            opts.get("labels_output", "labels"): labels + opts.get("class_offset", 0),
        }

    def spec(self, **overrides: Any) -> ModelSpec:
        fields: dict[str, Any] = dict(
            class_names=NAMES,
            input_width=320,
            input_height=320,
            adapter=self.adapter,
            adapter_options=AdapterOptions(**self.options),
        )
        fields.update(overrides)
        return ModelSpec(**fields)

    def model(self, g: Any, **kw: Any) -> bytes:
        # graphs without a batch dim are exported for one image at a time
        return g.make_const_model(
            self.outputs(g), batched=self.batched, batch="B" if self.batched else 1, **kw
        )


LAYOUTS = {
    # the project's own contract: [B, K, 6] in input pixels, zero-score padding rows
    "detops": Layout("detops"),
    # YOLO v8/v11 head [B, 4+nc, N], cxcywh + class scores
    "yolo_v8": Layout("yolo_v8"),
    # YOLO v5 head [B, N, 5+nc], cxcywh + objectness + class probs
    "yolo_v5": Layout("yolo_v5"),
    # YOLO exported with NMS (or end2end): [B, K, 6], already suppressed
    "yolo_nms": Layout("yolo_nms", nms_in_graph=True),
    # torchvision-style separate outputs with a batch dim
    "bsl_batched": Layout("boxes_scores_labels", nms_in_graph=True),
    # torchvision detection models: no batch dim, 1-based labels with background = 0
    "bsl_torchvision": Layout(
        "boxes_scores_labels", {"class_offset": 1}, batched=False, nms_in_graph=True
    ),
    # renamed outputs, boxes as normalised xywh
    "bsl_named_xywh_normalized": Layout(
        "boxes_scores_labels",
        {
            "boxes_output": "det_boxes",
            "scores_output": "det_scores",
            "labels_output": "det_classes",
            "boxes_format": "xywh",
            "normalized": True,
        },
        nms_in_graph=True,
    ),
}
CASES = pytest.mark.parametrize("layout", LAYOUTS.values(), ids=LAYOUTS.keys())


def test_every_adapter_has_a_conformance_case() -> None:
    assert {lay.adapter for lay in LAYOUTS.values()} == set(ADAPTERS)


@CASES
def test_check_graph_accepts_session_and_model_proto(layout: Layout, graphs: Any) -> None:
    data = layout.model(graphs)
    spec = layout.spec()
    spec.check_graph(onnx.load_from_string(data))
    spec.check_graph(Runtime(data, spec)._session)


@CASES
def test_decode_recovers_known_boxes_in_input_pixels(layout: Layout, graphs: Any) -> None:
    spec = layout.spec()
    rt = Runtime(layout.model(graphs), spec)
    batch = np.zeros((rt.max_batch or 2, 3, 320, 320), np.float32)
    raws = ADAPTERS[layout.adapter].decode(rt.infer(batch), spec)
    assert len(raws) == len(batch)
    for raw in raws:
        assert raw.boxes.dtype == np.float32 and raw.scores.dtype == np.float32
        assert raw.labels.dtype == np.int64
        assert raw.already_nms is layout.nms_in_graph
        real = raw.scores > 0.05  # drops padding rows and YOLO background anchors
        got = sorted(
            zip(
                raw.boxes[real].tolist(),
                raw.scores[real].tolist(),
                raw.labels[real].tolist(),
                strict=True,
            ),
            key=lambda r: -r[1],
        )
        assert len(got) == len(KNOWN)
        for (box, score, label), (want_box, want_score, want_label) in zip(got, KNOWN, strict=True):
            np.testing.assert_allclose(box, want_box, atol=1e-3)
            assert score == pytest.approx(want_score, abs=1e-5)
            assert label == want_label


@CASES
def test_min_score_hint_keeps_every_row_above_it(layout: Layout, graphs: Any) -> None:
    spec = layout.spec()
    rt = Runtime(layout.model(graphs), spec)
    outputs = rt.infer(np.zeros((1, 3, 320, 320), np.float32))
    (full,) = ADAPTERS[layout.adapter].decode(outputs, spec)
    (hinted,) = ADAPTERS[layout.adapter].decode(outputs, spec, min_score=0.5)

    def above(raw: Any) -> list:
        sel = raw.scores >= 0.5
        return sorted(
            zip(
                raw.boxes[sel].tolist(),
                raw.scores[sel].tolist(),
                raw.labels[sel].tolist(),
                strict=True,
            )
        )

    assert above(hinted) == above(full) and len(above(full)) == 2


@CASES
def test_predict_maps_to_original_pixels_through_letterbox(layout: Layout, graphs: Any) -> None:
    rt = Runtime(layout.model(graphs), layout.spec())
    wide = np.zeros((360, 640, 3), np.uint8)  # 640x360 -> scale 0.5, 70 px pad top and bottom
    tall = np.zeros((640, 360, 3), np.uint8)  # 360x640 -> scale 0.5, 70 px pad left and right
    d_wide, d_tall = rt.predict([wide, tall])
    np.testing.assert_allclose(d_wide.boxes, [[20, 20, 220, 220], [400, 60, 600, 260]], atol=1e-3)
    np.testing.assert_allclose(d_tall.boxes, [[0, 160, 80, 360], [260, 200, 360, 400]], atol=1e-3)
    for d in (d_wide, d_tall):
        np.testing.assert_allclose(d.scores, [0.9, 0.6], atol=1e-5)
        assert d.labels.tolist() == [1, 0]
        assert d.boxes.dtype == np.float32 and d.labels.dtype == np.int64


@CASES
def test_missing_output_names_the_tensor(layout: Layout, graphs: Any) -> None:
    outputs = {f"other{i}": v for i, v in enumerate(layout.outputs(graphs).values())}
    spec = layout.spec()
    data = graphs.make_const_model(
        outputs, batched=layout.batched, batch="B" if layout.batched else 1
    )
    if layout.adapter.startswith("yolo"):
        pytest.raises(
            SpecMismatch,
            Runtime,
            data,
            spec.model_copy(update={"adapter_options": AdapterOptions(output="output0")}),
        ).match("no output 'output0'.*other0")
    else:
        with pytest.raises(SpecMismatch, match=r"no output '\w+' \(outputs: 'other0'"):
            Runtime(data, spec)


@CASES
def test_classifier_graph_is_refused_naming_its_output(layout: Layout, graphs: Any) -> None:
    with pytest.raises(SpecMismatch, match="'logits'"):
        Runtime(graphs.make_classifier_model(10), layout.spec())


# -- adapter-specific shape checks ---------------------------------------------------------------

NC_MISMATCH = [
    # yolo_v8 head built for 3 classes, spec names 2: channel dim 7 != 4 + 2
    ("yolo_v8", "yolo_v8_head", r"output 'output0' has shape \[\?, 7, 5\], expected \[B, 6, N\]"),
    # yolo_v5 head for 3 classes, spec names 2: last dim 8 != 5 + 2
    ("yolo_v5", "yolo_v5_head", r"output 'output0' has shape \[\?, 5, 8\], expected \[B, N, 7\]"),
]


@pytest.mark.parametrize(("adapter", "encoder", "message"), NC_MISMATCH)
def test_wrong_class_count_is_a_spec_mismatch(
    adapter: str, encoder: str, message: str, graphs: Any
) -> None:
    head = getattr(graphs, encoder)(KNOWN, 3, extra_anchors=2)
    spec = ModelSpec(class_names=["a", "b"], input_width=320, input_height=320, adapter=adapter)
    with pytest.raises(SpecMismatch, match=message):
        Runtime(graphs.make_const_model({"output0": head}), spec)


def test_dynamic_dims_pass_the_load_check_and_are_checked_at_decode(graphs: Any) -> None:
    head = graphs.yolo_v8_head(KNOWN, 3)
    data = graphs.make_const_model({"output0": head}, output_shapes={"output0": ["B", None, None]})
    spec = ModelSpec(class_names=["a", "b"], input_width=320, input_height=320, adapter="yolo_v8")
    spec.check_graph(onnx.load_from_string(data))  # the declared channel dim is dynamic
    outputs = {"output0": np.stack([head, head])}
    with pytest.raises(
        SpecMismatch, match=r"'output0' has shape \[2, 7, 6\], expected \[B, 6, N\]"
    ):
        ADAPTERS["yolo_v8"].decode(outputs, spec)


BAD_SHAPES = [
    # detops rows must have 6 values
    (
        "detops",
        {"detections": np.zeros((4, 5), np.float32)},
        r"'detections' has shape \[\?, 4, 5\]",
    ),
    # yolo_nms rows must be rank 3 [B, K, 6]: a flat [B, 6] is refused
    ("yolo_nms", {"output0": np.zeros((6,), np.float32)}, r"'output0' has shape \[\?, 6\]"),
    # boxes_scores_labels: scores must have the boxes' leading dims
    (
        "boxes_scores_labels",
        {
            "boxes": np.zeros((4, 4), np.float32),
            "scores": np.zeros((5,), np.float32),
            "labels": np.zeros((4,), np.int64),
        },
        r"'scores' has shape \[\?, 5\], expected \[B, 4\] \(boxes are \[\?, 4, 4\]\)",
    ),
    # boxes_scores_labels: boxes need 4 coordinates
    (
        "boxes_scores_labels",
        {
            "boxes": np.zeros((4, 5), np.float32),
            "scores": np.zeros((4,), np.float32),
            "labels": np.zeros((4,), np.int64),
        },
        r"'boxes' has shape \[\?, 4, 5\]",
    ),
]


@pytest.mark.parametrize(("adapter", "outputs", "message"), BAD_SHAPES)
def test_bad_output_shapes(adapter: str, outputs: dict, message: str, graphs: Any) -> None:
    spec = ModelSpec(class_names=NAMES, input_width=320, input_height=320, adapter=adapter)
    with pytest.raises(SpecMismatch, match=message):
        Runtime(graphs.make_const_model(outputs), spec)


def test_class_ids_outside_the_spec_are_dropped(graphs: Any) -> None:
    # class 7 does not exist (3 names); class -1 marks padding; both must vanish
    known = [((10, 10, 50, 50), 0.9, 7), ((60, 60, 90, 90), 0.8, 2), ((0, 0, 5, 5), 0.7, -1)]
    spec = ModelSpec(class_names=NAMES, input_width=320, input_height=320, score_threshold=0.0)
    rt = Runtime(graphs.make_const_model({"detections": graphs.rows(known)}), spec)
    (d,) = rt.predict([np.zeros((320, 320, 3), np.uint8)])
    assert d.labels.tolist() == [2]


# -- helpers -------------------------------------------------------------------------------------

TO_XYXY = [
    # xyxy passes through
    ("xyxy", False, [10, 20, 30, 60], [10, 20, 30, 60]),
    # xywh: corner + size
    ("xywh", False, [10, 20, 20, 40], [10, 20, 30, 60]),
    # cxcywh: centre + size
    ("cxcywh", False, [20, 40, 20, 40], [10, 20, 30, 60]),
    # normalised to the 320x160 input
    ("xyxy", True, [0.25, 0.5, 0.5, 1.0], [80, 80, 160, 160]),
    # normalised cxcywh
    ("cxcywh", True, [0.5, 0.5, 0.25, 0.5], [120, 40, 200, 120]),
]


@pytest.mark.parametrize(("fmt", "normalized", "raw", "want"), TO_XYXY)
def test_to_xyxy(fmt: str, normalized: bool, raw: list, want: list) -> None:
    spec = ModelSpec(class_names=["a"], input_width=320, input_height=160)
    out = to_xyxy(np.array([raw], np.float32), fmt, spec if normalized else None)  # type: ignore[arg-type]
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [want])


def test_class_ids_round_floats_and_apply_the_offset() -> None:
    spec = ModelSpec(
        class_names=NAMES,
        input_width=8,
        input_height=8,
        adapter_options=AdapterOptions(class_offset=1),
    )
    labels, scores = class_ids(
        np.array([1.0, 2.9999, 0.0, 4.0], np.float32),
        np.array([0.5, 0.6, 0.7, 0.8], np.float32),
        spec,
    )
    # 0 is background and 4 - 1 = 3 is out of range: both get score 0
    assert labels.tolist() == [0, 2, 0, 0]
    np.testing.assert_allclose(scores, [0.5, 0.6, 0.0, 0.0])


def test_unknown_adapter() -> None:
    with pytest.raises(SpecMismatch, match="unknown adapter 'ssd'.*yolo_v8"):
        get_adapter("ssd")
