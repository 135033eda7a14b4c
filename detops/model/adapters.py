"""Output adapters: read a detector graph's raw outputs as boxes, scores and class ids.

Each adapter does two things: :meth:`Adapter.check` verifies, from the graph's output
signature, that the outputs it needs exist with compatible shapes (raising
:class:`~detops.errors.SpecMismatch` naming the tensor, the expected and the actual shape), and
:meth:`Adapter.decode` turns one batch of outputs into one :class:`RawDetections` per image:
``xyxy`` float32 boxes in INPUT pixels (the network's ``input_width x input_height`` frame),
float32 scores, int64 0-based class ids, and whether NMS already ran inside the graph. The
runtime then thresholds, runs NMS (unless it already ran), keeps the top detections and maps
boxes back to original-image pixels.

Rows whose class id (after ``class_offset``) falls outside ``0..nc-1`` get score 0, and rows
with score 0 are never detections, so graphs may pad fixed-size outputs with zero-score rows.

The ``detops`` output contract (what ``detops`` trainers export)
---------------------------------------------------------------
ONE output named ``detections``, float32, shape ``[B, K, 6]``; each row is
``(x1, y1, x2, y2, score, class)``:

- ``x1, y1, x2, y2``: box corners in INPUT pixels (0..input_width, 0..input_height of the
  letterboxed/stretched network input), already decoded from anchors/grids inside the graph;
- ``score``: final confidence in [0, 1] (class probability, times objectness if any);
- ``class``: the 0-based class id, stored as a float holding an integer;
- ``K``: the graph has already taken its top-K rows by score (K may be a dynamic dimension);
  rows beyond the real candidates are padding with ``score = 0`` (class any value).

NMS does NOT run inside the graph: the runtime thresholds by score and runs per-class (or
class-agnostic) NMS, so thresholds stay runtime settings. The input is ``[B, 3, H, W]``
float32, prepared as the spec says.

Other layouts
-------------
=======================  =============================================================  ======
adapter                  outputs                                                        NMS
=======================  =============================================================  ======
``yolo_v8`` (v8/v11)     ``[B, 4+nc, N]``: cx, cy, w, h, then nc class scores            runtime
``yolo_v5``              ``[B, N, 5+nc]``: cx, cy, w, h, objectness, nc class probs;     runtime
                         score = objectness * best class prob
``yolo_nms``             ``[B, K, 6]`` x1, y1, x2, y2, score, class (NMS/end2end export) graph
``boxes_scores_labels``  ``boxes [B?, N, 4]``, ``scores [B?, N]``, ``labels [B?, N]``      graph
                         (torchvision style; the batch dim is optional)
=======================  =============================================================  ======

``AdapterOptions`` adjust any of them: ``output`` names, ``boxes_format``, ``normalized`` boxes
(fractions of the input size), ``class_offset`` (1 for 1-based labels with background 0) and
``nms_in_graph``. Boxes of YOLO heads are ``cxcywh``; the others default to ``xyxy``.

>>> sorted(ADAPTERS)
['boxes_scores_labels', 'detops', 'yolo_nms', 'yolo_v5', 'yolo_v8']
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from detops.errors import SpecMismatch
from detops.model.spec import BoxFormat, ModelSpec, TensorInfo, format_shape

Shape = Sequence[int | None]
Pattern = Sequence[int | str]  # an int must match; a str names a free dimension


@dataclass(frozen=True, slots=True)
class RawDetections:
    """One image's candidates as the graph gave them, boxes already ``xyxy`` input pixels."""

    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    labels: np.ndarray  # (N,) int64
    already_nms: bool


class Adapter(ABC):
    """Reads one output layout; stateless, so one instance serves every runtime."""

    name: ClassVar[str]
    default_format: ClassVar[BoxFormat] = "xyxy"
    default_nms_in_graph: ClassVar[bool] = False

    @abstractmethod
    def check(self, outputs: Sequence[TensorInfo], spec: ModelSpec) -> None:
        """Raise :class:`SpecMismatch` unless ``outputs`` fit this layout and ``spec``."""

    @abstractmethod
    def decode(
        self, outputs: Mapping[str, np.ndarray], spec: ModelSpec, min_score: float = 0.0
    ) -> list[RawDetections]:
        """One :class:`RawDetections` per image of the batch.

        ``min_score`` is a hint: an adapter MAY drop rows scoring below it early (dense YOLO
        heads do, to skip work on thousands of background anchors); callers still threshold.
        """

    # -- shared helpers ---------------------------------------------------------------------

    def _nms_in_graph(self, spec: ModelSpec) -> bool:
        flag = spec.adapter_options.nms_in_graph
        return self.default_nms_in_graph if flag is None else flag

    def _boxes(self, raw: np.ndarray, spec: ModelSpec) -> np.ndarray:
        opts = spec.adapter_options
        fmt = opts.boxes_format or self.default_format
        return to_xyxy(raw, fmt, spec if opts.normalized else None)


def to_xyxy(raw: np.ndarray, fmt: BoxFormat, normalized_to: ModelSpec | None) -> np.ndarray:
    """A new (N, 4) float32 ``xyxy`` array from ``raw`` boxes in ``fmt``.

    ``normalized_to``: when given, ``raw`` is in fractions of that spec's input size.
    """
    out = np.empty(raw.shape, np.float32)
    if fmt == "xyxy":
        out[...] = raw
    elif fmt == "cxcywh":
        half = raw[:, 2:4] * np.float32(0.5)
        np.subtract(raw[:, 0:2], half, out=out[:, 0:2])
        np.add(raw[:, 0:2], half, out=out[:, 2:4])
    elif fmt == "xywh":
        out[:, 0:2] = raw[:, 0:2]
        np.add(raw[:, 0:2], raw[:, 2:4], out=out[:, 2:4])
    else:  # pragma: no cover - the spec's Literal forbids it
        raise ValueError(f"unknown box format {fmt!r}")
    if normalized_to is not None:
        w, h = normalized_to.input_width, normalized_to.input_height
        out *= np.array([w, h, w, h], np.float32)
    return out


def class_ids(
    raw: np.ndarray, scores: np.ndarray, spec: ModelSpec
) -> tuple[np.ndarray, np.ndarray]:
    """0-based int64 ids from graph class values; rows outside ``0..nc-1`` get score 0."""
    if raw.dtype.kind == "f":
        labels = np.rint(raw).astype(np.int64)
    else:
        labels = raw.astype(np.int64)
    if spec.adapter_options.class_offset:
        labels -= spec.adapter_options.class_offset
    bad = (labels < 0) | (labels >= spec.num_classes)
    if bad.any():
        scores = np.where(bad, np.float32(0), scores).astype(np.float32, copy=False)
        labels[bad] = 0
    return labels, scores


def find_output(outputs: Sequence[TensorInfo], name: str | None, adapter: str) -> TensorInfo:
    """The output called ``name`` (``None``: the first output)."""
    if not outputs:
        raise SpecMismatch(f"adapter {adapter!r}: the graph has no outputs")
    if name is None:
        return outputs[0]
    for o in outputs:
        if o.name == name:
            return o
    listing = ", ".join(f"{o.name!r} {format_shape(o.shape)}" for o in outputs)
    raise SpecMismatch(
        f"adapter {adapter!r}: the graph has no output {name!r} (outputs: {listing}); "
        f"set adapter_options in the spec or choose another adapter"
    )


def expect_shape(
    name: str, shape: Shape, pattern: Pattern, adapter: str, hint: str = ""
) -> dict[str, int | None]:
    """Match ``shape`` against ``pattern``; return the free dims by name, or raise."""
    free: dict[str, int | None] = {}
    ok = len(shape) == len(pattern)
    if ok:
        for dim, want in zip(shape, pattern, strict=True):
            if isinstance(want, str):
                free[want] = dim
            elif dim is not None and dim != want:
                ok = False
    if not ok:
        expected = "[" + ", ".join(str(p) for p in pattern) + "]"
        raise SpecMismatch(
            f"adapter {adapter!r}: output {name!r} has shape {format_shape(shape)}, "
            f"expected {expected}{hint}"
        )
    return free


def _array(
    outputs: Mapping[str, np.ndarray], name: str | None, adapter: str
) -> tuple[str, np.ndarray]:
    if name is None:
        name = next(iter(outputs))
    try:
        arr = outputs[name]
    except KeyError:
        raise SpecMismatch(
            f"adapter {adapter!r}: no output {name!r} among {sorted(outputs)}"
        ) from None
    return name, np.asarray(arr, dtype=np.float32)


# -- single-output [B, K, 6] layouts -----------------------------------------------------------


class _RowsAdapter(Adapter):
    """``[B, K, 6]`` rows of x1, y1, x2, y2, score, class."""

    default_output: ClassVar[str | None] = None

    def _output_name(self, spec: ModelSpec) -> str | None:
        return spec.adapter_options.output or self.default_output

    def check(self, outputs: Sequence[TensorInfo], spec: ModelSpec) -> None:
        info = find_output(outputs, self._output_name(spec), self.name)
        expect_shape(
            info.name,
            info.shape,
            ("B", "K", 6),
            self.name,
            " (rows of x1, y1, x2, y2, score, class)",
        )

    def decode(
        self, outputs: Mapping[str, np.ndarray], spec: ModelSpec, min_score: float = 0.0
    ) -> list[RawDetections]:
        name, arr = _array(outputs, self._output_name(spec), self.name)
        expect_shape(name, arr.shape, ("B", "K", 6), self.name)
        nms_done = self._nms_in_graph(spec)
        result = []
        for rows in arr:
            labels, scores = class_ids(rows[:, 5], rows[:, 4], spec)
            result.append(
                RawDetections(
                    self._boxes(rows[:, :4], spec), np.ascontiguousarray(scores), labels, nms_done
                )
            )
        return result


class DetopsAdapter(_RowsAdapter):
    """The project's own contract (see the module docstring)."""

    name = "detops"
    default_output = "detections"
    default_nms_in_graph = False


class YoloNMSAdapter(_RowsAdapter):
    """YOLO exported with NMS inside the graph (``nms=True`` or end2end heads)."""

    name = "yolo_nms"
    default_nms_in_graph = True


# -- raw YOLO heads ----------------------------------------------------------------------------


class YoloV8Adapter(Adapter):
    """``[B, 4+nc, N]``: cxcywh in input pixels then per-class scores (no objectness)."""

    name = "yolo_v8"
    default_format = "cxcywh"

    def check(self, outputs: Sequence[TensorInfo], spec: ModelSpec) -> None:
        info = find_output(outputs, spec.adapter_options.output, self.name)
        expect_shape(
            info.name,
            info.shape,
            ("B", 4 + spec.num_classes, "N"),
            self.name,
            f" (4 box values + {spec.num_classes} class names in the spec)",
        )

    def decode(
        self, outputs: Mapping[str, np.ndarray], spec: ModelSpec, min_score: float = 0.0
    ) -> list[RawDetections]:
        nc = spec.num_classes
        name, arr = _array(outputs, spec.adapter_options.output, self.name)
        expect_shape(name, arr.shape, ("B", 4 + nc, "N"), self.name)
        nms_done = self._nms_in_graph(spec)
        result = []
        for pred in arr:
            cls = pred[4:]
            scores = cls.max(axis=0)
            raw_boxes = pred[:4].T
            if min_score > 0:  # argmax and box decoding only for the candidates
                keep = np.flatnonzero(scores >= min_score)
                cls, scores, raw_boxes = cls[:, keep], scores[keep], raw_boxes[keep]
            labels = cls.argmax(axis=0).astype(np.int64)
            result.append(RawDetections(self._boxes(raw_boxes, spec), scores, labels, nms_done))
        return result


class YoloV5Adapter(Adapter):
    """``[B, N, 5+nc]``: cxcywh, objectness, class probabilities; score = obj * best prob."""

    name = "yolo_v5"
    default_format = "cxcywh"

    def check(self, outputs: Sequence[TensorInfo], spec: ModelSpec) -> None:
        info = find_output(outputs, spec.adapter_options.output, self.name)
        expect_shape(
            info.name,
            info.shape,
            ("B", "N", 5 + spec.num_classes),
            self.name,
            f" (4 box values + objectness + {spec.num_classes} class names in the spec)",
        )

    def decode(
        self, outputs: Mapping[str, np.ndarray], spec: ModelSpec, min_score: float = 0.0
    ) -> list[RawDetections]:
        nc = spec.num_classes
        name, arr = _array(outputs, spec.adapter_options.output, self.name)
        expect_shape(name, arr.shape, ("B", "N", 5 + nc), self.name)
        nms_done = self._nms_in_graph(spec)
        result = []
        for pred in arr:
            # objectness is a probability (>= 0), so max(obj * cls) == obj * max(cls): one
            # multiply per anchor instead of nc
            scores = pred[:, 5:].max(axis=1)
            scores *= pred[:, 4]
            if min_score > 0:  # argmax and box decoding only for the candidates
                keep = np.flatnonzero(scores >= min_score)
                pred, scores = pred[keep], scores[keep]
            labels = pred[:, 5:].argmax(axis=1).astype(np.int64)
            result.append(RawDetections(self._boxes(pred[:, :4], spec), scores, labels, nms_done))
        return result


# -- separate outputs ----------------------------------------------------------------------------


class BoxesScoresLabelsAdapter(Adapter):
    """``boxes [B?, N, 4]``, ``scores [B?, N]``, ``labels [B?, N]`` (torchvision style)."""

    name = "boxes_scores_labels"
    default_nms_in_graph = True

    def _names(self, spec: ModelSpec) -> tuple[str, str, str]:
        o = spec.adapter_options
        return o.boxes_output, o.scores_output, o.labels_output

    def _check_shapes(self, shapes: Sequence[tuple[str, Shape]]) -> None:
        (bn, bs), (sn, ss), (ln, ls) = shapes
        batched = len(bs) == 3
        lead: tuple[str, ...] = ("B", "N") if batched else ("N",)
        free = expect_shape(bn, bs, (*lead, 4), self.name, " ([N, 4] or [B, N, 4])")
        # scores and labels share the boxes' leading dims wherever those are known
        same: tuple[int | str, ...] = tuple(d if (d := free[k]) is not None else k for k in lead)
        expect_shape(sn, ss, same, self.name, f" (boxes are {format_shape(bs)})")
        expect_shape(ln, ls, same, self.name, f" (boxes are {format_shape(bs)})")

    def check(self, outputs: Sequence[TensorInfo], spec: ModelSpec) -> None:
        infos = [find_output(outputs, n, self.name) for n in self._names(spec)]
        self._check_shapes([(i.name, i.shape) for i in infos])

    def decode(
        self, outputs: Mapping[str, np.ndarray], spec: ModelSpec, min_score: float = 0.0
    ) -> list[RawDetections]:
        names = self._names(spec)
        missing = [n for n in names if n not in outputs]
        if missing:
            raise SpecMismatch(
                f"adapter {self.name!r}: no output {missing[0]!r} among {sorted(outputs)}"
            )
        boxes, scores, labels = (np.asarray(outputs[n]) for n in names)
        self._check_shapes(list(zip(names, (boxes.shape, scores.shape, labels.shape), strict=True)))
        if boxes.ndim == 2:
            boxes, scores, labels = boxes[None], scores[None], labels[None]
        nms_done = self._nms_in_graph(spec)
        result = []
        for b, s, lab in zip(boxes, scores, labels, strict=True):
            ids, sc = class_ids(lab, s.astype(np.float32, copy=False), spec)
            result.append(
                RawDetections(
                    self._boxes(b.astype(np.float32, copy=False), spec), sc, ids, nms_done
                )
            )
        return result


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        DetopsAdapter(),
        YoloV8Adapter(),
        YoloV5Adapter(),
        YoloNMSAdapter(),
        BoxesScoresLabelsAdapter(),
    )
}


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name]
    except KeyError:
        raise SpecMismatch(
            f"unknown adapter {name!r}; choose one of {', '.join(sorted(ADAPTERS))}"
        ) from None
