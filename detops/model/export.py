"""ONNX export of the default detector, and the PyTorch <-> ONNX Runtime parity check.

Heavy module (imports torch). The exported graph follows the ``detops`` adapter contract: input
``images`` float32 ``[B, 3, H, W]`` (normalised as :func:`detops.model.detector.spec_dict`
says), ONE output ``detections`` ``[B, K, 6] = (x1, y1, x2, y2, score, class)`` in input
pixels, top-K (K = 100) selected inside the graph; the batch axis is dynamic.

Parity (:func:`parity_check`) compares, on the same preprocessed images:

1. the RAW heads (heatmap logits and the box conv output: ltrb before ReLU/scale and, with
   ``DetectorConfig.quality``, the IoU logit) read from the exported file itself by exposing
   the two head convolutions as extra outputs of an in-memory copy: max abs diff must be <=
   ``atol``. Heads are compared rather than the top-K tensor because equal scores may
   legitimately come out of ``TopK`` in a different order;
2. the top-K score column, sorted per image (order-free): max abs diff <= ``atol``;
3. the detections after post-processing (score threshold + per-class NMS, as the runtime
   does): every detection matched to one of the same class with score within ``atol`` and box
   within ``box_tol`` pixels. Only a borderline detection may go unmatched: its score within
   ``atol`` of the threshold, its IoU with a stronger box of its class within 1e-3 of the NMS
   threshold, or suppressed (or not) by such a box. Counts alone would flip on a score of
   0.05000 against 0.04999, which a model with many low scores (early in training) produces.

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


def _borderline(rows: np.ndarray, threshold: float, nms_iou: float, atol: float,
                iou_tol: float, kth: float | None = None) -> np.ndarray:
    """Which of one image's graph rows may be kept by one runtime and dropped by the other.

    Two runtimes within ``atol`` of each other can still disagree on a detection whose score
    sits within ``atol`` of the score threshold, on one whose score sits within ``atol`` of the
    graph's top-K cut (``kth``: the K-th score, when the graph filled its K rows; the other
    runtime may have taken a near-equal candidate instead), on one whose IoU with a
    higher-scored box of its class sits within ``iou_tol`` of the NMS threshold, and on one
    that a box of those kinds may or may not suppress (a cascade; resolved to a fixpoint).
    Anything else must match.
    """
    from detops.evaluate.matching import iou_matrix_xyxy

    n = len(rows)
    flag = np.abs(rows[:, 4] - threshold) <= atol
    if kth is not None:
        flag |= rows[:, 4] <= kth + atol
    boxes = rows[:, :4].astype(np.float64)
    ious = iou_matrix_xyxy(boxes, boxes)
    # q may suppress r: same class, q scored higher (or within atol: ties may order either way)
    above = ((rows[:, None, 5] == rows[None, :, 5])
             & (rows[:, None, 4] >= rows[None, :, 4] - atol) & ~np.eye(n, dtype=bool))
    near = above & (np.abs(ious - nms_iou) <= iou_tol)
    flag |= near.any(0)
    reach = above & (ious > nms_iou - iou_tol)
    while True:
        more = flag | (reach & flag[:, None]).any(0)
        if (more == flag).all():
            return flag
        flag = more


def _compare_post(a_rows: np.ndarray, b_rows: np.ndarray, threshold: float, nms_iou: float,
                  atol: float, box_tol: float, *, where: str,
                  top_k: int | None = None) -> tuple[int, float, float]:
    """Match PyTorch's post-processed detections (``a``) to ONNX Runtime's (``b``) of one image.

    Returns (detections matched, worst box diff in px, worst score diff). A detection with no
    counterpart is an error unless it is borderline on its own side (see :func:`_borderline`).
    ``top_k``: the graph's K; a side that returned K rows has a top-K cut at its lowest score.
    """
    from detops.model.train import postprocess

    a = postprocess(a_rows, threshold, nms_iou)
    b = postprocess(b_rows, threshold, nms_iou)
    # candidates within atol below the threshold may be kept by the other runtime
    lo = threshold - atol
    iou_tol = 1e-3
    cand_a, cand_b = a_rows[a_rows[:, 4] >= lo], b_rows[b_rows[:, 4] >= lo]
    def kth(rows: np.ndarray) -> float | None:
        return float(rows[:, 4].min()) if top_k and len(rows) == top_k else None

    border_a = _borderline(cand_a, threshold, nms_iou, atol, iou_tol, kth(a_rows))
    border_b = _borderline(cand_b, threshold, nms_iou, atol, iou_tol, kth(b_rows))

    def is_border(row: np.ndarray, cand: np.ndarray, border: np.ndarray) -> bool:
        same = np.flatnonzero((cand[:, 5] == row[5]) & (np.abs(cand[:, :4] - row[:4]).max(1) == 0)
                              & (cand[:, 4] == row[4]))
        return bool(same.size and border[same].any())

    used = np.zeros(len(b), bool)
    worst_box = worst_score = 0.0
    matched = 0
    for row in a:
        cand = np.flatnonzero((b[:, 5] == row[5]) & ~used)
        err = np.abs(b[cand, :4] - row[:4]).max(1) if cand.size else np.zeros(0)
        if cand.size == 0 or err.min() > box_tol:
            if is_border(row, cand_a, border_a):
                continue
            nearest = (f"the nearest of its class is {err.min():.3g} px away > tolerance "
                       f"{box_tol:g} px" if cand.size else "none of its class is left")
            raise ParityError(
                f"{where}: a class-{int(row[5])} detection of PyTorch (score {row[4]:.4f}, box "
                f"{np.round(row[:4], 1).tolist()}) has no counterpart in ONNX Runtime after score "
                f"threshold {threshold} + NMS: {nearest} ({len(b)} detections there, {len(a)} "
                "from PyTorch)")
        j = cand[int(np.argmin(err))]
        used[j] = True
        matched += 1
        worst_box = max(worst_box, float(err.min()))
        worst_score = max(worst_score, abs(float(b[j, 4] - row[4])))
    for j in np.flatnonzero(~used):
        if not is_border(b[j], cand_b, border_b):
            raise ParityError(
                f"{where}: a class-{int(b[j, 5])} detection of ONNX Runtime (score "
                f"{b[j, 4]:.4f}, box {np.round(b[j, :4], 1).tolist()}) has no counterpart in "
                f"PyTorch after score threshold {threshold} + NMS ({len(b)} detections there, "
                f"{len(a)} from PyTorch)")
    return matched, worst_box, worst_score


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
    path = Path(onnx_path)
    x = preprocess(images, imgsz)
    top_k = 100
    graph = _graph_module(model, top_k=top_k)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        heat_t, ltrb_raw_t = graph.model.raw_heads(xt)
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
        n, box, score = _compare_post(dets_t[i], dets_o[i], score_threshold, nms_iou, atol,
                                      box_tol, where=f"{path}: image {i}", top_k=top_k)
        n_det += n
        worst_box = max(worst_box, box)
        diffs["post.score"] = max(diffs.get("post.score", 0.0), score)
    diffs["post.box_px"] = worst_box  # <= box_tol: farther is no counterpart (raised above)
    if diffs.get("post.score", 0.0) > atol:
        raise ParityError(f"{path}: post-processed scores differ by up to "
                          f"{diffs['post.score']:.3g} > tolerance {atol:g}")
    heads = max(diffs["heat_logits"], diffs["ltrb_raw"])
    return ParityReport(max_abs_diff=heads, diffs=diffs, atol=atol, box_tol=box_tol,
                        n_images=len(images), n_detections=n_det)
