"""The one inference runtime: an ONNX graph + a :class:`ModelSpec`, run by onnxruntime.

Evaluation, batch prediction, the HTTP server, shadow and canary all run models through
:class:`Runtime`, so what was evaluated is what is served. No torch here.

The path of a batch::

    bytes -> decode_image -> preprocess (resize, normalise, NCHW) -> infer (onnxruntime)
          -> postprocess (adapter decode, score threshold, NMS, top-K, back to original pixels)

Letterbox resizing is centred (left/top padding = floor of half the total, as Ultralytics
exports expect); boxes are mapped back by undoing the padding and the per-axis scale, then
clipped to the image. Resizing uses PIL's bilinear filter, which antialiases when shrinking
(OpenCV's INTER_LINEAR does not), so pixel values differ slightly from cv2-based pipelines.
EXIF orientation is NOT applied: boxes refer to the pixel grid as stored in the file.

A Runtime is safe to share between threads: onnxruntime sessions are, and every call
allocates its own buffers.

>>> import numpy as np
>>> t = Transform(scale_x=0.5, scale_y=0.5, pad_x=0, pad_y=70, width=640, height=360)
>>> t.to_original(np.array([[10, 80, 110, 180]], np.float32)).tolist()
[[20.0, 20.0, 220.0, 220.0]]
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from detops.errors import (
    ArtifactCorrupt,
    CostlyImage,
    ImageDecodeError,
    ImageTooLarge,
    InvalidImage,
    ModelError,
    SpecMismatch,
)
from detops.model.adapters import RawDetections, get_adapter
from detops.model.detections import Detections
from detops.model.nms import nms
from detops.model.spec import ModelSpec, graph_signature

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # ~7000 x 7000; a bigger body is refused, not decoded


# -- images --------------------------------------------------------------------------------------


# formats whose decode time is bounded by the pixel count (a progressive JPEG is not: its scans
# are many passes, as many as the file asks for)
PREDICTABLE_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "BMP"})


def decode_image(
    data: bytes,
    *,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    predictable_only: bool = False,
) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, ...) into an ``HxWx3`` uint8 RGB array.

    The header is read first, so an image larger than ``max_pixels`` is refused before its
    pixels are decoded, and with ``predictable_only`` one not in ``PREDICTABLE_FORMATS`` (or a
    progressive JPEG) raises :class:`CostlyImage`. Only the first frame of animated formats is
    used.
    """
    if not data:
        raise ImageDecodeError("image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if max_pixels is not None and w * h > max_pixels:
                raise ImageTooLarge(
                    f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels}; "
                    f"downscale it before sending"
                )
            if predictable_only and (
                im.format not in PREDICTABLE_FORMATS or im.info.get("progressive")
            ):
                raise CostlyImage(f"{im.format} image, progressive={im.info.get('progressive')}")
            im.load()  # decode now, so truncation is reported here
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            arr = np.asarray(rgb)
    except ImageDecodeError:
        raise
    except Image.DecompressionBombError as e:
        # PIL's own guard (far above any sane max_pixels) fires inside Image.open
        raise ImageTooLarge(f"image refused before decoding: {e}") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image format ({len(data)} bytes starting {data[:8]!r})"
        ) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"corrupt or truncated image ({len(data)} bytes): {e}") from e
    return arr


def _check_image(img: np.ndarray, index: int) -> np.ndarray:
    if (
        not isinstance(img, np.ndarray)
        or img.ndim != 3
        or img.shape[2] != 3
        or img.dtype != np.uint8
    ):
        what = (
            f"shape {img.shape} dtype {img.dtype}"
            if isinstance(img, np.ndarray)
            else type(img).__name__
        )
        raise InvalidImage(f"image {index}: expected an HxWx3 uint8 RGB array, got {what}")
    if img.shape[0] == 0 or img.shape[1] == 0:
        raise InvalidImage(f"image {index}: is empty ({img.shape[1]}x{img.shape[0]})")
    return img


@dataclass(frozen=True, slots=True)
class Transform:
    """How one original image became the network input: ``input = original * scale + pad``."""

    scale_x: float
    scale_y: float
    pad_x: int  # left padding, input pixels
    pad_y: int  # top padding, input pixels
    width: int  # original image size
    height: int

    def to_original(
        self, boxes: np.ndarray, width: int | None = None, height: int | None = None
    ) -> np.ndarray:
        """Map (N, 4) ``xyxy`` input-pixel boxes to original pixels IN PLACE, clipped."""
        w = self.width if width is None else width
        h = self.height if height is None else height
        xs, ys = boxes[:, 0::2], boxes[:, 1::2]
        if self.pad_x:
            xs -= self.pad_x
        if self.pad_y:
            ys -= self.pad_y
        xs /= self.scale_x
        ys /= self.scale_y
        np.clip(xs, 0, w, out=xs)
        np.clip(ys, 0, h, out=ys)
        return boxes


# -- the runtime -----------------------------------------------------------------------------------


class Runtime:
    """Run one ONNX detector as its spec says.

    ``onnx``: a path to the ``.onnx`` file or its bytes (external-data models are not
    supported). ``expected_sha256``: refuse bytes that do not hash to it
    (:class:`~detops.errors.ArtifactCorrupt`). Thread knobs go to onnxruntime;
    ``allow_spinning`` trades idle CPU for latency. ``max_image_pixels`` bounds decoding.
    """

    def __init__(
        self,
        onnx: str | os.PathLike[str] | bytes,
        spec: ModelSpec,
        *,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
        allow_spinning: bool = False,
        providers: Sequence[str] | None = None,
        expected_sha256: str | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        name: str | None = None,
    ) -> None:
        if isinstance(onnx, bytes | bytearray | memoryview):
            data = bytes(onnx)
            source = name or "<onnx bytes>"
        else:
            path = Path(onnx)
            source = name or str(path)
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                raise ModelError(f"{path}: ONNX file not found") from None
        self.name = source
        self.sha256 = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and self.sha256 != expected_sha256.lower():
            raise ArtifactCorrupt(
                f"{source}: ONNX bytes hash to {self.sha256[:12]}, expected "
                f"{expected_sha256[:12]}; the file was modified or damaged — restore it from "
                f"the artifact store"
            )
        self.spec = spec
        self.max_image_pixels = max_image_pixels
        self._adapter = get_adapter(spec.adapter)

        self._data, self._spinning = data, allow_spinning
        self._providers = list(providers or ["CPUExecutionProvider"])
        try:
            self._session = self._new_session(intra_op_threads, inter_op_threads)
        except Exception as e:  # onnxruntime raises its own untyped exceptions
            raise ModelError(f"{source}: not a loadable ONNX model: {e}") from e
        self._narrow: Any = None  # a one-thread session, made by infer_narrow on first use
        self._sessions_lock = threading.Lock()  # guards the lazily made sessions
        self._threads = (intra_op_threads, inter_op_threads)
        self._quiet: Any = None  # a non-spinning full session, made by infer_quiet (spinning)

        inputs, outputs = graph_signature(self._session)
        try:
            info = spec.find_input(inputs)
            self._adapter.check(outputs, spec)
        except SpecMismatch as e:
            raise SpecMismatch(f"{source}: {e}") from None
        self.input_name = info.name
        self.output_names = [o.name for o in outputs]
        self._input_dtype = np.float16 if info.dtype == "tensor(float16)" else np.float32
        # a static batch dim (often 1 in exports) caps how many images go in one run
        self.max_batch: int | None = info.shape[0]

        # (pixel * scale - mean) / std  ==  pixel * mul + add, per channel
        std = np.asarray(spec.std, np.float64)
        mean = np.asarray(spec.mean, np.float64)
        self._mul = (spec.scale / std).astype(np.float32)[:, None, None]
        add = -mean / std
        self._add = add.astype(np.float32)[:, None, None] if np.any(add) else None
        pad = spec.pad_value * spec.scale / std + add
        self._pad = pad.astype(np.float32)[:, None, None]
        # mean/std are in the network's channel order, so BGR only reverses the source pixels
        self._bgr = spec.channel_order == "bgr"

    @classmethod
    def from_files(
        cls, onnx_path: str | os.PathLike[str], spec_path: str | os.PathLike[str], **kwargs: object
    ) -> Runtime:
        return cls(onnx_path, ModelSpec.load(spec_path), **kwargs)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Runtime({self.name!r}, adapter={self.spec.adapter!r}, sha256={self.sha256[:12]})"

    # -- stages ------------------------------------------------------------------------------

    def decode_image(
        self, data: bytes, max_pixels: int | None = None, *, predictable_only: bool = False
    ) -> np.ndarray:
        """``max_pixels``: a lower limit than the runtime's for this call (None: the runtime's);
        ``predictable_only``: see :func:`decode_image`."""
        limit = self.max_image_pixels
        if max_pixels is not None:
            limit = max_pixels if limit is None else min(limit, max_pixels)
        return decode_image(data, max_pixels=limit, predictable_only=predictable_only)

    def preprocess(
        self, images: Sequence[np.ndarray], allocate: Callable[..., np.ndarray] | None = None
    ) -> tuple[np.ndarray, list[Transform]]:
        """A ``[B, 3, H, W]`` float32 batch and one :class:`Transform` per image.

        ``allocate``: makes the batch array instead of ``np.empty`` (called with its shape and
        dtype; every element is then written).
        """
        spec = self.spec
        iw, ih = spec.input_width, spec.input_height
        letterbox = spec.resize == "letterbox"
        batch = (allocate or np.empty)((len(images), 3, ih, iw), np.float32)
        transforms = []
        for i, img in enumerate(images):
            h, w = _check_image(img, i).shape[:2]
            if letterbox:
                r = min(iw / w, ih / h)
                nw, nh = max(1, int(round(w * r))), max(1, int(round(h * r)))
                left, top = (iw - nw) // 2, (ih - nh) // 2
            else:
                nw, nh, left, top = iw, ih, 0, 0
            if (nw, nh) != (w, h):
                img = np.asarray(
                    Image.fromarray(np.ascontiguousarray(img)).resize(
                        (nw, nh), Image.Resampling.BILINEAR
                    )
                )
            out = batch[i]
            if nw != iw or nh != ih:
                out[:, :top] = self._pad
                out[:, top + nh :] = self._pad
                out[:, top : top + nh, :left] = self._pad
                out[:, top : top + nh, left + nw :] = self._pad
            chw = img.transpose(2, 0, 1)
            dst = out[:, top : top + nh, left : left + nw]
            np.multiply(chw[::-1] if self._bgr else chw, self._mul, out=dst)
            if self._add is not None:
                dst += self._add
            transforms.append(Transform(nw / w, nh / h, left, top, w, h))
        return batch, transforms

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Raw graph outputs by name."""
        return self._infer_with(self._session, batch)

    def infer_narrow(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`infer` on a second session with one intra-op thread, for running several
        batches at once (one per core) instead of one batch on every core."""
        if self._narrow is None:
            with self._sessions_lock:
                if self._narrow is None:
                    self._narrow = self._new_session(1, 1)
        return self._infer_with(self._narrow, batch)

    def drop_narrow(self) -> None:
        """Free the one-thread session (a lane-gain measure made it and one lane was chosen);
        :meth:`infer_narrow` would make it again."""
        with self._sessions_lock:
            self._narrow = None

    def infer_quiet(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`infer` with every intra-op thread, on threads that sleep when idle instead of
        spinning. Without ``allow_spinning`` that is the main session; with it, a second
        session made on first use (for runs under load, where a spinning thread takes a core
        another run needs). One intra-op thread has no pool to spin: the main session."""
        if not self.spinning:
            return self._infer_with(self._session, batch)
        if self._quiet is None:
            with self._sessions_lock:
                if self._quiet is None:
                    self._quiet = self._new_session(*self._threads, spinning=False)
        return self._infer_with(self._quiet, batch)

    @property
    def spinning(self) -> bool:
        """Whether the main session has intra-op threads that spin while waiting for work."""
        return self._spinning and self._threads[0] != 1

    def _new_session(
        self, intra_op_threads: int | None, inter_op_threads: int, *, spinning: bool | None = None
    ) -> Any:
        """An onnxruntime session over this runtime's graph with these thread counts (and
        this runtime's spinning unless ``spinning`` says otherwise)."""
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if intra_op_threads is not None:
            opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = inter_op_threads
        spin = "1" if (self._spinning if spinning is None else spinning) else "0"
        opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
        opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
        opts.log_severity_level = 3  # errors only; warnings about unused initialisers are noise
        return ort.InferenceSession(self._data, opts, providers=self._providers)

    def _infer_with(self, session: Any, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != self._input_dtype:
            batch = batch.astype(self._input_dtype)
        try:
            outs = session.run(self.output_names, {self.input_name: batch})
        except Exception as e:  # onnxruntime's exceptions are untyped
            raise ModelError(
                f"{self.name}: inference failed on a batch of {batch.shape}: {e}"
            ) from e
        return dict(zip(self.output_names, outs, strict=True))

    def postprocess(
        self,
        outputs: Mapping[str, np.ndarray],
        transforms: Sequence[Transform],
        original_sizes: Sequence[tuple[int, int]] | None = None,
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        nms_iou: float | None = None,
    ) -> list[Detections]:
        """Detections per image in original pixels.

        ``original_sizes``: ``(height, width)`` per image to clip to; default the sizes the
        transforms recorded. Keyword overrides replace the spec's values for this call.
        """
        spec = self.spec
        thr = spec.score_threshold if score_threshold is None else score_threshold
        top = spec.max_detections if max_detections is None else max_detections
        iou = spec.nms_iou if nms_iou is None else nms_iou
        raws = self._adapter.decode(outputs, spec, thr)
        if len(raws) < len(transforms):
            raise SpecMismatch(
                f"{self.name}: the graph returned {len(raws)} images' outputs for a batch of "
                f"{len(transforms)}"
            )
        result = []
        for i, t in enumerate(transforms):
            h, w = (t.height, t.width) if original_sizes is None else original_sizes[i]
            result.append(self._finish(raws[i], t, w, h, thr, top, iou))
        return result

    def _finish(
        self, raw: RawDetections, t: Transform, w: int, h: int, thr: float, top: int, iou: float
    ) -> Detections:
        scores = raw.scores
        keep = scores >= thr
        if thr <= 0:
            keep &= scores > 0  # zero-score rows are padding, never detections
        idx = np.flatnonzero(keep)
        if idx.size == 0 or top <= 0:
            return Detections.empty()
        k = self.spec.pre_nms_top_k
        if idx.size > k:
            idx = idx[np.argpartition(scores[idx], idx.size - k)[idx.size - k :]]
        boxes, scores, labels = raw.boxes[idx], scores[idx], raw.labels[idx]
        if raw.already_nms:
            order = np.argsort(-scores, kind="stable")[:top]
        else:
            agnostic = self.spec.class_agnostic_nms
            order = nms(boxes, scores, iou, labels=None if agnostic else labels, max_output=top)
        boxes = boxes[order]
        t.to_original(boxes, w, h)
        return Detections(boxes, scores[order], labels[order])

    # -- conveniences ------------------------------------------------------------------------

    def predict(
        self,
        images: Sequence[np.ndarray],
        *,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        nms_iou: float | None = None,
    ) -> list[Detections]:
        """Detections for ``HxWx3`` uint8 RGB images, one :class:`Detections` each."""
        step = self.max_batch or max(1, len(images))
        result: list[Detections] = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            batch, transforms = self.preprocess(chunk)
            if self.max_batch is not None and len(chunk) < self.max_batch:
                # a graph exported with a fixed batch size: fill the rest with blank images
                fill = np.zeros((self.max_batch - len(chunk), *batch.shape[1:]), np.float32)
                batch = np.concatenate([batch, fill])
            result.extend(
                self.postprocess(
                    self.infer(batch),
                    transforms,
                    score_threshold=score_threshold,
                    max_detections=max_detections,
                    nms_iou=nms_iou,
                )
            )
        return result

    def predict_bytes(
        self, images: Sequence[bytes], **overrides: float | int | None
    ) -> list[Detections]:
        """Decode then :meth:`predict`."""
        return self.predict([self.decode_image(b) for b in images], **overrides)  # type: ignore[arg-type]

    def warmup(self, runs: int = 1) -> None:
        """Run a grey image through the whole path so the first real request is not slow."""
        img = np.full((self.spec.input_height, self.spec.input_width, 3), 114, np.uint8)
        for _ in range(runs):
            self.predict([img])
