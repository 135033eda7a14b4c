"""ModelSpec: everything beside the ONNX graph that running a detector needs.

A model version is an ONNX graph plus this spec: class names, the input size, how pixels are
prepared (resize mode, scale, mean/std, channel order) and which output adapter reads the
graph's outputs (see :mod:`detops.model.adapters`). The spec is YAML on disk.

Pixel preparation, in order: decode to RGB uint8 -> resize (``stretch`` or ``letterbox``) ->
reorder channels if ``channel_order == "bgr"`` -> ``(pixel * scale - mean) / std`` per channel
-> NCHW float32.

``letterbox`` keeps the aspect ratio and CENTRES the resized image, padding with ``pad_value``
(the Ultralytics convention: when the padding is odd, the extra pixel goes to the right/bottom).

>>> spec = ModelSpec(class_names=["cat", "dog"], input_width=320, input_height=320,
...                  adapter="yolo_v8")
>>> ModelSpec.from_yaml(spec.to_yaml()) == spec
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detops.errors import ModelError, SpecMismatch

AdapterName = Literal["detops", "yolo_v8", "yolo_v5", "yolo_nms", "boxes_scores_labels"]
BoxFormat = Literal["xyxy", "xywh", "cxcywh"]


class AdapterOptions(BaseModel):
    """How the chosen adapter finds and reads its outputs; ``None`` = the adapter's default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    output: str | None = Field(
        default=None,
        description="single-output adapters: the output to read "
        "(detops: 'detections'; yolo_*: the graph's first output)",
    )
    boxes_output: str = Field(default="boxes", description="boxes_scores_labels: the boxes output")
    scores_output: str = Field(
        default="scores", description="boxes_scores_labels: the scores output"
    )
    labels_output: str = Field(
        default="labels", description="boxes_scores_labels: the labels output"
    )
    boxes_format: BoxFormat | None = Field(
        default=None, description="box encoding; default cxcywh for yolo_v8/yolo_v5, xyxy otherwise"
    )
    normalized: bool = Field(
        default=False, description="boxes are fractions of the input size rather than input pixels"
    )
    class_offset: int = Field(
        default=0,
        description="subtracted from graph class ids (1 for 1-based labels with background=0)",
    )
    nms_in_graph: bool | None = Field(
        default=None,
        description="the graph already ran NMS; default true for yolo_nms and "
        "boxes_scores_labels, false otherwise",
    )


class ModelSpec(BaseModel):
    """How to feed a detector and read its outputs (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    class_names: list[str] = Field(min_length=1)
    input_width: int = Field(gt=0)
    input_height: int = Field(gt=0)
    resize: Literal["stretch", "letterbox"] = "letterbox"
    pad_value: int = Field(114, ge=0, le=255, description="letterbox padding, in 0..255 pixels")
    scale: float = Field(1 / 255, gt=0, description="pixels are multiplied by this first")
    # per channel of the NETWORK input, in channel_order (so B, G, R when "bgr")
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw"] = "nchw"
    input_name: str | None = Field(default=None, description="default: the graph's first input")
    adapter: AdapterName = "detops"
    adapter_options: AdapterOptions = AdapterOptions()
    score_threshold: float = Field(0.25, ge=0, le=1)
    nms_iou: float = Field(0.5, gt=0, le=1, description="suppress a box whose IoU is above this")
    max_detections: int = Field(100, gt=0)
    pre_nms_top_k: int = Field(
        10_000, gt=0, description="only the highest-scoring candidates enter NMS"
    )
    class_agnostic_nms: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must not contain 0 (got {list(self.std)})")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError("class_names must be unique")
        return self

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # -- YAML -------------------------------------------------------------------------------

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str, *, source: str = "<spec>") -> ModelSpec:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ModelError(f"{source}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ModelError(
                f"{source}: expected a mapping of spec fields, got {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ModelError(f"{source}: invalid model spec:\n{e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelSpec:
        p = Path(path)
        return cls.from_yaml(p.read_text(encoding="utf-8"), source=str(p))

    def save(self, path: str | os.PathLike[str]) -> Path:
        p = Path(path)
        p.write_text(self.to_yaml(), encoding="utf-8")
        return p

    # -- graph check ------------------------------------------------------------------------

    def check_graph(self, model: Any) -> None:
        """Raise :class:`SpecMismatch` unless ``model`` (onnx ModelProto or onnxruntime
        InferenceSession) has the input and outputs this spec describes.

        Dynamic dimensions are accepted; static ones must match.
        """
        from detops.model.adapters import get_adapter

        inputs, outputs = graph_signature(model)
        self.find_input(inputs)
        get_adapter(self.adapter).check(outputs, self)

    def find_input(self, inputs: Sequence[TensorInfo]) -> TensorInfo:
        """The graph input this spec feeds, checked for rank 4 / 3 channels / input size."""
        if not inputs:
            raise SpecMismatch("the graph has no inputs; expected an image input [B, 3, H, W]")
        if self.input_name is None:
            info = inputs[0]
        else:
            found = [i for i in inputs if i.name == self.input_name]
            if not found:
                names = ", ".join(repr(i.name) for i in inputs)
                raise SpecMismatch(
                    f"input {self.input_name!r} named in the spec is not in the graph "
                    f"(inputs: {names}); fix input_name"
                )
            info = found[0]
        expected = ("B", 3, self.input_height, self.input_width)
        shape = info.shape
        ok = len(shape) == 4 and all(
            e == "B" or d is None or d == e for d, e in zip(shape, expected, strict=False)
        )
        if not ok:
            raise SpecMismatch(
                f"input {info.name!r}: expected shape {format_shape(expected)} (NCHW, 3 channels, "
                f"input_height x input_width from the spec), got {format_shape(shape)}"
            )
        if info.dtype not in _FLOAT_TYPES:
            raise SpecMismatch(
                f"input {info.name!r}: expected a float32 or float16 tensor, got {info.dtype}"
            )
        return info


# -- graph signatures -------------------------------------------------------------------------

_FLOAT_TYPES = ("tensor(float)", "tensor(float16)")


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """A graph input or output: name, shape (``None`` for a dynamic dim), onnxruntime type."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # onnxruntime spelling, e.g. "tensor(float)"


def format_shape(shape: Sequence[object]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def graph_signature(model: Any) -> tuple[list[TensorInfo], list[TensorInfo]]:
    """Inputs and outputs of an onnxruntime session or an onnx ModelProto."""
    if hasattr(model, "get_inputs") and hasattr(model, "get_outputs"):
        return (
            [_from_node_arg(a) for a in model.get_inputs()],
            [_from_node_arg(a) for a in model.get_outputs()],
        )
    if hasattr(model, "graph"):
        graph = model.graph
        initializers = {t.name for t in graph.initializer}
        return (
            [_from_value_info(v) for v in graph.input if v.name not in initializers],
            [_from_value_info(v) for v in graph.output],
        )
    raise TypeError(
        f"expected an onnx.ModelProto or onnxruntime.InferenceSession, got {type(model).__name__}"
    )


def _from_node_arg(arg: Any) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return TensorInfo(arg.name, shape, arg.type)


def _from_value_info(v: Any) -> TensorInfo:
    from onnx import helper

    t = v.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    np_name = helper.tensor_dtype_to_np_dtype(t.elem_type).name
    dtype = {"float32": "float", "float64": "double"}.get(np_name, np_name)
    return TensorInfo(v.name, shape, f"tensor({dtype})")
