"""What a detector found in one image: boxes, scores and class ids, in that image's pixels.

Boxes are ``xyxy`` float32 in pixels of the ORIGINAL image (not the network input), scores are
float32, class ids are 0-based int64. Rows are sorted by descending score.

>>> import numpy as np
>>> d = Detections(np.array([[1, 2, 11, 22]], np.float32), np.array([0.9], np.float32),
...                np.array([1], np.int64))
>>> len(d), d.to_list(["cat", "dog"])[0]["label"]
(1, 'dog')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

_EMPTY_BOXES = np.zeros((0, 4), np.float32)
_EMPTY_SCORES = np.zeros((0,), np.float32)
_EMPTY_LABELS = np.zeros((0,), np.int64)
for _a in (_EMPTY_BOXES, _EMPTY_SCORES, _EMPTY_LABELS):
    _a.flags.writeable = False


@dataclass(frozen=True, slots=True)
class Detections:
    """Detections of one image (see the module docstring for units)."""

    boxes: np.ndarray  # (N, 4) float32 xyxy, original-image pixels
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64, 0-based class ids

    def __post_init__(self) -> None:
        n = self.scores.shape[0]
        if self.boxes.shape != (n, 4) or self.labels.shape != (n,):
            raise ValueError(
                f"Detections: boxes {self.boxes.shape}, scores {self.scores.shape} and labels "
                f"{self.labels.shape} must be (N, 4), (N,), (N,)"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(_EMPTY_BOXES, _EMPTY_SCORES, _EMPTY_LABELS)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def to_list(self, class_names: Sequence[str]) -> list[dict[str, Any]]:
        """Plain Python rows ``{box, score, class_id, label}`` (JSON-ready)."""
        boxes = self.boxes.tolist()
        scores = self.scores.tolist()
        labels = self.labels.tolist()
        return [
            {
                "box": box,
                "score": score,
                "class_id": cid,
                "label": class_names[cid] if 0 <= cid < len(class_names) else str(cid),
            }
            for box, score, cid in zip(boxes, scores, labels, strict=True)
        ]
