"""Monitoring: request features (more to come: windows, drift tests, alerts).

``from detops.monitor import image_features`` is the way in; names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from detops._lazy import attach

_LAZY: dict[str, str] = {
    "ImageFeatures": "detops.monitor.features",
    "image_features": "detops.monitor.features",
    "grey_view": "detops.monitor.features",
}

__all__ = ["ImageFeatures", "grey_view", "image_features"]

if TYPE_CHECKING:
    from detops.monitor.features import ImageFeatures, grey_view, image_features


__getattr__, __dir__, _ = attach(__name__, globals(), _LAZY)
