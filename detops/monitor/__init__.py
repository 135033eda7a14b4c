"""Monitoring: request features and rollout gates (more to come: drift tests, alerts).

``from detops.monitor import image_features`` is the way in; names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from detops._lazy import attach

_LAZY: dict[str, str] = {
    "ImageFeatures": "detops.monitor.features",
    "image_features": "detops.monitor.features",
    "grey_view": "detops.monitor.features",
    "GatesConfig": "detops.monitor.gates",
    "load_gates": "detops.monitor.gates",
}

__all__ = ["GatesConfig", "ImageFeatures", "grey_view", "image_features", "load_gates"]

if TYPE_CHECKING:
    from detops.monitor.features import ImageFeatures, grey_view, image_features
    from detops.monitor.gates import GatesConfig, load_gates


__getattr__, __dir__, _ = attach(__name__, globals(), _LAZY)
