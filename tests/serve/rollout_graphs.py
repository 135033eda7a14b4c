"""Candidate ONNX graphs for rollout tests: healthy, slower, erroring, detecting worse.

All take the server tests' 64x64 input and the ``detops`` output layout. ``mean_box`` is the
live model of ``tests/serve/conftest.py`` (one ``person`` box whose size follows the image).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.model.conftest import make_const_model, make_mean_box_model, rows

SIZE = 64
OPSET = 17
GREY = 114 / 255  # what the runtime's warm-up image becomes after pre-processing


def _mean_box_nodes(gain: float = 20.0, score: float = 0.9, out: str = "det0"):
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),
        helper.make_node("Mul", ["m1", "kgain"], ["mg"]),
        helper.make_node("Add", ["mg", "koffset"], ["s"]),
        helper.make_node("Mul", ["s", "k0"], ["zero"]),
        helper.make_node("Add", ["zero", "kscore"], ["sc"]),
        helper.make_node("Concat", ["zero", "zero", "s", "s", "sc", "zero"], ["row"], axis=1),
        helper.make_node("Unsqueeze", ["row", "axis1"], [out]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(gain, np.float32), "kgain"),
        numpy_helper.from_array(np.array(2.0, np.float32), "koffset"),
        numpy_helper.from_array(np.array(0, np.float32), "k0"),
        numpy_helper.from_array(np.array(score, np.float32), "kscore"),
    ]
    return nodes, inits


def _graph(nodes, inits) -> bytes:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["B", 1, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def healthy(gain: float = 20.5) -> bytes:
    """Like live, boxes 2.5% larger: agrees with live at IoU 0.5."""
    return make_mean_box_model(width=SIZE, height=SIZE, gain=gain)


def slow(pairs: int = 16, width: int = 2048) -> bytes:
    """Like live, plus matrix products on the image worth tens of milliseconds per image."""
    nodes, inits = _mean_box_nodes()
    nodes.append(helper.make_node("Reshape", ["images", "shape3"], ["x0"]))  # [B, 192, 64]
    inits.append(numpy_helper.from_array(np.array([-1, 192, 64], np.int64), "shape3"))
    rng = np.random.default_rng(0)
    # unit-variance products: shrinking values would turn denormal and crawl unpredictably
    w_up = (rng.standard_normal((64, width)) / np.sqrt(64)).astype(np.float32)
    w_down = (rng.standard_normal((width, 64)) / np.sqrt(width)).astype(np.float32)
    inits += [numpy_helper.from_array(w_up, "w_up"), numpy_helper.from_array(w_down, "w_down")]
    x = "x0"
    for i in range(pairs):
        nodes.append(helper.make_node("MatMul", [x, "w_up"], [f"u{i}"]))
        nodes.append(helper.make_node("MatMul", [f"u{i}", "w_down"], [f"x{i + 1}"]))
        x = f"x{i + 1}"
    nodes += [
        helper.make_node("ReduceMean", [x], ["burn"], keepdims=0),
        helper.make_node("Mul", ["burn", "k0"], ["nothing"]),
        helper.make_node("Add", ["det0", "nothing"], ["detections"]),
    ]
    return _graph(nodes, inits)


def erroring() -> bytes:
    """Loads and warms (on the runtime's grey warm-up image) but fails on any other image.

    A Gather whose index is ``1000 * |mean - grey|``: 0 for the warm-up image, out of bounds
    (an ONNX Runtime error) for real ones.
    """
    nodes, inits = _mean_box_nodes()
    nodes += [
        helper.make_node("Sub", ["m", "kgrey"], ["d"]),
        helper.make_node("Abs", ["d"], ["ad"]),
        helper.make_node("Mul", ["ad", "k1000"], ["ad1000"]),
        helper.make_node("Floor", ["ad1000"], ["fl"]),
        helper.make_node("Cast", ["fl"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["one", "idx"], ["g"], axis=0),  # [B]
        helper.make_node("Reshape", ["g", "shape_b11"], ["g3"]),
        helper.make_node("Mul", ["det0", "g3"], ["detections"]),
    ]
    inits += [
        numpy_helper.from_array(np.array(GREY, np.float32), "kgrey"),
        numpy_helper.from_array(np.array(1000, np.float32), "k1000"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape_b11"),
    ]
    return _graph(nodes, inits)


def empty() -> bytes:
    """Detects nothing, ever."""
    return make_const_model({"detections": rows((), 1)}, width=SIZE, height=SIZE)


def random_boxes(n: int = 12, seed: int = 0) -> bytes:
    """A dozen boxes of random classes and middling scores."""
    rng = np.random.default_rng(seed)
    known = []
    for _ in range(n):
        x, y = rng.uniform(0, 40, 2)
        w, h = rng.uniform(5, 20, 2)
        known.append(((x, y, x + w, y + h), float(rng.uniform(0.3, 0.6)), int(rng.integers(0, 3))))
    return make_const_model({"detections": rows(known)}, width=SIZE, height=SIZE)
