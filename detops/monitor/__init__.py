"""Monitoring: request features (more to come: windows, drift tests, alerts).

``from detops.monitor import image_features`` is the way in; names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY: dict[str, str] = {
    "ImageFeatures": "detops.monitor.features",
    "image_features": "detops.monitor.features",
    "grey_view": "detops.monitor.features",
}

__all__ = ["ImageFeatures", "grey_view", "image_features"]

if TYPE_CHECKING:
    from detops.monitor.features import ImageFeatures, grey_view, image_features


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'detops.monitor' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
