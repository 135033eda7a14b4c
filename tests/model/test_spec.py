"""ModelSpec: YAML round trip and validation."""

from __future__ import annotations

import pytest

from detops.errors import ModelError
from detops.model import AdapterOptions, ModelSpec


def test_yaml_round_trip(tmp_path) -> None:
    spec = ModelSpec(
        class_names=["a", "b"],
        input_width=640,
        input_height=384,
        resize="stretch",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        channel_order="bgr",
        adapter="boxes_scores_labels",
        adapter_options=AdapterOptions(class_offset=1, normalized=True, boxes_format="xywh"),
        score_threshold=0.05,
        nms_iou=0.6,
        max_detections=300,
        class_agnostic_nms=True,
    )
    path = spec.save(tmp_path / "spec.yaml")
    assert ModelSpec.load(path) == spec
    assert "class_offset: 1" in path.read_text()
    assert spec.num_classes == 2


INVALID = [
    # unknown field (extra="forbid"): a typo must not pass silently
    ("class_names: [a]\ninput_width: 8\ninput_height: 8\nscore_treshold: 0.3\n", "score_treshold"),
    # unknown adapter option
    ("class_names: [a]\ninput_width: 8\ninput_height: 8\nadapter_options: {offset: 1}\n", "offset"),
    # unknown adapter
    ("class_names: [a]\ninput_width: 8\ninput_height: 8\nadapter: ssd\n", "adapter"),
    # std of zero would divide by zero
    ("class_names: [a]\ninput_width: 8\ninput_height: 8\nstd: [1, 0, 1]\n", "std must not"),
    # duplicate class names
    ("class_names: [a, a]\ninput_width: 8\ninput_height: 8\n", "unique"),
    # no classes
    ("class_names: []\ninput_width: 8\ninput_height: 8\n", "class_names"),
    # not a mapping
    ("- just a list\n", "expected a mapping"),
    # not YAML
    ("class_names: [a\n", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_invalid_specs(text: str, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        ModelSpec.from_yaml(text, source="spec.yaml")
