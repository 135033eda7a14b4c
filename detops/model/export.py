"""ONNX export of the default detector, and the PyTorch <-> ONNX Runtime parity check.

Heavy module (imports torch). The exported graph follows the ``detops`` adapter contract: input
``images`` float32 ``[B, 3, H, W]`` (normalised as :func:`detops.model.detector.spec_dict`
says), ONE output ``detections`` ``[B, K, 6] = (x1, y1, x2, y2, score, class)`` in input
pixels, top-K (K = 100) selected inside the graph; the batch axis is dynamic.

Parity (:func:`parity_check`) compares, on the same preprocessed images:

1. the RAW heads (heatmap logits and the ltrb conv output, before ReLU/scale) read from the
   exported file itself by exposing the two head convolutions as extra outputs of an in-memory
   copy: max abs diff must be <= ``atol``. Heads are compared rather than the top-K tensor
   because equal scores may legitimately come out of ``TopK`` in a different order;
2. the top-K score column, sorted per image (order-free): max abs diff <= ``atol``;
3. the detections after post-processing (score threshold + per-class NMS, as the runtime
   does): same count and classes, scores within ``atol``, boxes within ``box_tol`` pixels.

A failure raises :class:`detops.errors.ParityError` naming the tensor, the max abs diff and
the tolerance.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from detops.errors import ModelError, ParityError
from detops.model.detector import MEAN, STD, Detector, DetectorGraph

__all__ = ["ParityReport", "export_onnx", "parity_check", "preprocess"]

_HEAD_NODES = {"heat_logits": "/model/heat/Conv", "ltrb_raw": "/model/ltrb/Conv"}


def _graph_module(model: Detector, top_k: int) -> DetectorGraph:
    m = copy.deepcopy(model).float().to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return DetectorGraph(m, top_k=top_k).eval()


def export_onnx(
    model: Detector,
    path: str | os.PathLike[str],
    *,
    imgsz: int = 320,
    opset: int = 17,
    top_k: int = 100,
) -> Path:
    """Write ``model`` (fp32, eval) as ONNX with the decode inside; dynamic batch axis.

    Uses the TorchScript-based exporter (``dynamo=False``): the dynamo exporter needs
    onnxscript, which detops does not depend on.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    cells = model.config.num_classes * (imgsz // model.config.stride) ** 2
    if imgsz % 32 or cells < top_k:
        raise ModelError(f"export_onnx: imgsz={imgsz} must be a multiple of 32 with at least "
                         f"top_k={top_k} heatmap cells (has {cells})")
    graph = _graph_module(model, top_k)
    dummy = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter announces its own deprecation; we choose it on purpose (above)
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX",
                                DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
        torch.onnx.export(
            graph,
            (dummy,),
            str(p),
            input_names=["images"],
            output_names=["detections"],
            dynamic_axes={"images": {0: "batch"}, "detections": {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return p


def preprocess(images: Sequence[np.ndarray], imgsz: int = 320) -> np.ndarray:
    """uint8 HxWx3 RGB images -> float32 NCHW network input (stretch resize, spec mean/std)."""
    out = np.empty((len(images), 3, imgsz, imgsz), np.float32)
    mean = np.asarray(MEAN, np.float32) * 255
    std = np.asarray(STD, np.float32) * 255
    for i, img in enumerate(images):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {i}: expected uint8 HxWx3, got {img.dtype} {img.shape}")
        if img.shape[:2] != (imgsz, imgsz):
            img = np.asarray(Image.fromarray(img).resize((imgsz, imgsz), Image.Resampling.BILINEAR))
        out[i] = ((img.astype(np.float32) - mean) / std).transpose(2, 0, 1)
    return out


@dataclass(frozen=True)
class ParityReport:
    """How far ONNX Runtime is from PyTorch (fp32) on the same inputs."""

    max_abs_diff: float  # over the raw heads
    diffs: dict[str, float] = field(default_factory=dict)  # per compared tensor
    atol: float = 1e-4
    box_tol: float = 0.5
    n_images: int = 0
    n_detections: int = 0  # post-processed detections compared

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol


def _session_with_heads(onnx_path: Path) -> tuple[object, list[str]]:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(onnx_path))
    by_name = {n.name: n for n in proto.graph.node}
    extra = []
    for key, node_name in _HEAD_NODES.items():
        node = by_name.get(node_name)
        if node is None:
            raise ModelError(
                f"{onnx_path}: no node {node_name!r} ({key}); parity_check needs a graph "
                "written by detops.model.export.export_onnx"
            )
        extra.append(node.output[0])
    for name in extra:
        proto.graph.output.append(onnx.ValueInfoProto(name=name))
    so = ort.SessionOptions()
    so.intra_op_num_threads = min(2, os.cpu_count() or 1)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(proto.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    return sess, extra


def parity_check(
    model: Detector,
    onnx_path: str | os.PathLike[str],
    images: Sequence[np.ndarray],
    *,
    atol: float = 1e-4,
    box_tol: float = 0.5,
    imgsz: int = 320,
    score_threshold: float = 0.05,
    nms_iou: float = 0.5,
) -> ParityReport:
    """Run PyTorch (fp32, eval) and ONNX Runtime on ``images``; raise ``ParityError`` if apart.

    See the module docstring for what is compared and why.
    """
    from detops.model.train import postprocess

    path = Path(onnx_path)
    x = preprocess(images, imgsz)
    graph = _graph_module(model, top_k=100)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        heat_t, _ = graph.model(xt)
        ltrb_raw_t = graph.model.ltrb(graph.model.features(xt))
        dets_t = graph(xt).numpy()
    sess, extra = _session_with_heads(path)
    dets_o, heat_o, ltrb_o = sess.run(["detections", *extra], {"images": x})  # type: ignore[attr-defined]

    diffs: dict[str, float] = {}

    def check(name: str, a: np.ndarray, b: np.ndarray, tol: float) -> None:
        if a.shape != b.shape:
            raise ParityError(
                f"{path}: {name} has shape {list(b.shape)} in ONNX Runtime but "
                f"{list(a.shape)} in PyTorch"
            )
        d = float(np.max(np.abs(a - b))) if a.size else 0.0
        diffs[name] = d
        if not d <= tol:  # also catches NaN
            raise ParityError(
                f"{path}: ONNX Runtime disagrees with PyTorch on {name}: max |diff| {d:.4g} > "
                f"tolerance {tol:g} (over {len(images)} images)"
            )

    check("heat_logits", heat_t.numpy(), heat_o, atol)
    check("ltrb_raw", ltrb_raw_t.numpy(), ltrb_o, atol)
    check("detections.score (sorted)", -np.sort(-dets_t[:, :, 4], axis=1),
          -np.sort(-dets_o[:, :, 4], axis=1), atol)
    n_det = 0
    worst_box = 0.0
    for i in range(len(images)):
        a = postprocess(dets_t[i], score_threshold, nms_iou)
        b = postprocess(dets_o[i], score_threshold, nms_iou)
        if len(a) != len(b):
            raise ParityError(
                f"{path}: image {i}: {len(b)} detections from ONNX Runtime after score "
                f"threshold {score_threshold} + NMS, {len(a)} from PyTorch"
            )
        # match each torch detection to the nearest ONNX one of the same class
        used = np.zeros(len(b), bool)
        for row in a:
            cand = np.flatnonzero((b[:, 5] == row[5]) & ~used)
            if cand.size == 0:
                raise ParityError(f"{path}: image {i}: a class-{int(row[5])} detection of "
                                  "PyTorch has no counterpart in ONNX Runtime")
            err = np.abs(b[cand, :4] - row[:4]).max(1)
            j = cand[int(np.argmin(err))]
            used[j] = True
            worst_box = max(worst_box, float(err.min()))
            diffs["post.score"] = max(diffs.get("post.score", 0.0), abs(float(b[j, 4] - row[4])))
        n_det += len(a)
    diffs["post.box_px"] = worst_box
    if worst_box > box_tol:
        raise ParityError(f"{path}: post-processed boxes differ by up to {worst_box:.3g} px > "
                          f"tolerance {box_tol:g} px")
    if diffs.get("post.score", 0.0) > atol:
        raise ParityError(f"{path}: post-processed scores differ by up to "
                          f"{diffs['post.score']:.3g} > tolerance {atol:g}")
    heads = max(diffs["heat_logits"], diffs["ltrb_raw"])
    return ParityReport(max_abs_diff=heads, diffs=diffs, atol=atol, box_tol=box_tol,
                        n_images=len(images), n_detections=n_det)
