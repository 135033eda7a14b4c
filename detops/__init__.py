"""detops: carry an object-detection model through its production life cycle.

The public API lives in the stage packages (``detops.data``, ``detops.model``,
``detops.evaluate``); this module stays small so that ``import detops`` is instant.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
