"""Models: the spec, output adapters and the one inference runtime (onnxruntime, no torch).

Names load on first use, so ``import detops.model`` imports neither onnxruntime nor torch::

    from detops.model import ModelSpec, Runtime
    rt = Runtime.from_files("model.onnx", "spec.yaml")
    detections = rt.predict_bytes([jpeg_bytes])[0]
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from detops._lazy import attach

# public name -> module that defines it (extend here; nothing is imported until asked for).
# A name must not equal a submodule's name: importing the submodule would shadow it.
_LAZY: dict[str, str] = {
    "ModelSpec": "detops.model.spec",
    "AdapterOptions": "detops.model.spec",
    "Detections": "detops.model.detections",
    "ADAPTERS": "detops.model.adapters",
    "Adapter": "detops.model.adapters",
    "RawDetections": "detops.model.adapters",
    "Runtime": "detops.model.runtime",
    "Transform": "detops.model.runtime",
    "decode_image": "detops.model.runtime",
    "ImageDecodeError": "detops.errors",
    "InvalidImage": "detops.errors",
}

__all__ = [
    "ADAPTERS",
    "Adapter",
    "AdapterOptions",
    "Detections",
    "ImageDecodeError",
    "InvalidImage",
    "ModelSpec",
    "RawDetections",
    "Runtime",
    "Transform",
    "decode_image",
]

if TYPE_CHECKING:
    from detops.errors import ImageDecodeError, InvalidImage
    from detops.model.adapters import ADAPTERS, Adapter, RawDetections
    from detops.model.detections import Detections
    from detops.model.runtime import Runtime, Transform, decode_image
    from detops.model.spec import AdapterOptions, ModelSpec


__getattr__, __dir__, _ = attach(__name__, globals(), _LAZY)
