"""ONNX graph factories for runtime and adapter tests: tiny graphs built in code, no downloads.

``make_const_model`` builds a detector whose outputs are constants (the same for every image)
repeated along a batch dimension taken from the input's shape, so batch size flows through the
graph like in a real model. Tests encode known boxes in an adapter's layout and check the
runtime maps them back to original-image pixels.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from types import ModuleType

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 9

Dim = int | str | None


def _model(nodes, inputs, outputs, initializers=()) -> bytes:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _image_input(
    name: str, batch: Dim, channels: int, height: Dim, width: Dim
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, channels, height, width])


def make_const_model(
    outputs: Mapping[str, np.ndarray],
    *,
    width: int = 320,
    height: int = 320,
    channels: int = 3,
    batch: Dim = "B",
    batched: bool = True,
    input_name: str = "images",
    output_shapes: Mapping[str, Sequence[Dim]] | None = None,
) -> bytes:
    """A graph with input ``[batch, channels, height, width]`` and constant outputs.

    ``outputs``: name -> the value for ONE image. With ``batched`` each output is that value
    repeated to ``[B, ...]`` (B read from the input); without, the value is returned as is (a
    torchvision-style graph without batch dim). ``output_shapes`` overrides the declared
    output shapes (e.g. to make dimensions dynamic).
    """
    nodes, inits, outs = [], [], []
    if batched:
        nodes.append(helper.make_node("Shape", [input_name], ["batch_dim"], start=0, end=1))
    else:
        # still depend on the input, so the graph is a function of the image
        nodes.append(helper.make_node("Shape", [input_name], ["unused_shape"]))
    for name, value in outputs.items():
        value = np.asarray(value)
        elem = helper.np_dtype_to_tensor_dtype(value.dtype)
        if batched:
            inits.append(numpy_helper.from_array(value[None], f"{name}_const"))
            inits.append(numpy_helper.from_array(np.array(value.shape, np.int64), f"{name}_rest"))
            nodes += [
                helper.make_node(
                    "Concat", ["batch_dim", f"{name}_rest"], [f"{name}_shape"], axis=0
                ),
                helper.make_node("Expand", [f"{name}_const", f"{name}_shape"], [name]),
            ]
            shape: list[Dim] = [batch, *value.shape]
        else:
            inits.append(numpy_helper.from_array(value, f"{name}_const"))
            nodes.append(helper.make_node("Identity", [f"{name}_const"], [name]))
            shape = list(value.shape)
        if output_shapes and name in output_shapes:
            shape = list(output_shapes[name])
        outs.append(helper.make_tensor_value_info(name, elem, shape))
    if not batched:
        outs.append(helper.make_tensor_value_info("unused_shape", TensorProto.INT64, [4]))
    image = _image_input(input_name, batch, channels, height, width)
    return _model(nodes, [image], outs, inits)


def make_classifier_model(num_classes: int = 10, *, width: int = 320, height: int = 320) -> bytes:
    """Not a detector: ``images [B, 3, H, W] -> logits [B, num_classes]``."""
    weight = np.ones((3, num_classes), np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "weight"], ["logits"]),
    ]
    return _model(
        nodes,
        [_image_input("images", "B", 3, height, width)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", num_classes])],
        [numpy_helper.from_array(weight, "weight")],
    )


def make_mean_box_model(
    *,
    width: int = 320,
    height: int = 320,
    batch: Dim = "B",
    score: float = 0.9,
    gain: float = 20.0,
    offset: float = 2.0,
) -> bytes:
    """A ``detops``-layout detector whose one detection depends on the input image.

    ``detections [B, 1, 6]`` = ``(0, 0, s, s, score, 0)`` with ``s = offset + gain * m`` and ``m``
    the mean of that image's network input, so different images give different boxes (to
    check that batching keeps each image's own result, in order).
    """
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),  # [B, 1]
        helper.make_node("Mul", ["m1", "kgain"], ["mg"]),
        helper.make_node("Add", ["mg", "koffset"], ["s"]),
        helper.make_node("Mul", ["s", "k0"], ["zero"]),
        helper.make_node("Add", ["zero", "kscore"], ["sc"]),
        helper.make_node("Concat", ["zero", "zero", "s", "s", "sc", "zero"], ["row"], axis=1),
        helper.make_node("Unsqueeze", ["row", "axis1"], ["detections"]),  # [B, 1, 6]
    ]
    consts = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(gain, np.float32), "kgain"),
        numpy_helper.from_array(np.array(offset, np.float32), "koffset"),
        numpy_helper.from_array(np.array(0, np.float32), "k0"),
        numpy_helper.from_array(np.array(score, np.float32), "kscore"),
    ]
    return _model(
        nodes,
        [_image_input("images", batch, 3, height, width)],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, [batch, 1, 6])],
        consts,
    )


# -- layouts: known detections (input pixels) encoded for each adapter ---------------------------

Known = Sequence[tuple[tuple[float, float, float, float], float, int]]  # (xyxy, score, class)


def rows(known: Known, pad_rows: int = 0) -> np.ndarray:
    """``[K, 6]`` rows x1, y1, x2, y2, score, class (+ zero-score padding rows)."""
    data = [[*box, score, cls] for box, score, cls in known] + [[0, 0, 0, 0, 0, -1]] * pad_rows
    return np.array(data, np.float32).reshape(-1, 6)


def _cxcywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]


def yolo_v8_head(known: Known, nc: int, extra_anchors: int = 3) -> np.ndarray:
    """``[4+nc, N]``: cxcywh then per-class scores; extra anchors score 0.01."""
    cols = []
    for box, score, cls in known:
        scores = [0.01] * nc
        scores[cls] = score
        cols.append(_cxcywh(box) + scores)
    cols += [[5, 5, 4, 4] + [0.01] * nc] * extra_anchors
    return np.array(cols, np.float32).T.copy()


def yolo_v5_head(known: Known, nc: int, extra_anchors: int = 3) -> np.ndarray:
    """``[N, 5+nc]``: cxcywh, objectness, class probs; objectness * best prob == score."""
    out = []
    for box, score, cls in known:
        probs = [0.05] * nc
        probs[cls] = 0.8
        out.append(_cxcywh(box) + [score / 0.8] + probs)
    out += [[5, 5, 4, 4, 0.02] + [0.5] * nc] * extra_anchors
    return np.array(out, np.float32)


@pytest.fixture(scope="session")
def graphs() -> ModuleType:
    """This module: the graph factories and layout encoders above."""
    return sys.modules[__name__]
