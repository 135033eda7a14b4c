"""What the server benchmarks share: a free port, a clean environment, stopping a server, a
graph that answers one constant detection per image (no compute), and the command line of the
comparison servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env() -> dict[str, str]:
    """This process's environment without ``DETOPS_*``: a server takes only the settings given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DETOPS_")}


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C (a clean shutdown), then a kill if it has not exited within 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def constant_graph(row: list[float], imgsz: int, name: str) -> bytes:
    """``images [B,3,S,S] -> detections [B,1,6]``: ``row`` for every image, no compute."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("Shape", ["images"], ["b"], start=0, end=1),
        helper.make_node("Concat", ["b", "rest"], ["shape"], axis=0),
        helper.make_node("Expand", ["row", "shape"], ["detections"]),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, imgsz, imgsz])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["B", 1, 6])],
        [
            numpy_helper.from_array(np.array([[row]], np.float32), "row"),
            numpy_helper.from_array(np.array([1, 6], np.int64), "rest"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def comparison_runtime() -> tuple[Any, int]:
    """A comparison server's warmed runtime and port, from ``WORKSPACE NAME@ALIAS PORT
    [--spinning]`` on its command line."""
    from detops.model.registry import load_runtime
    from detops.workspace import Workspace

    ws, ref, port = Workspace(Path(sys.argv[1])), sys.argv[2], int(sys.argv[3])
    rt = load_runtime(ws, ref, allow_spinning="--spinning" in sys.argv)
    rt.warmup(3)
    return rt, port
