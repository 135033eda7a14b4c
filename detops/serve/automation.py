"""Degrees of automation: who decides a request's boxes, and which requests a person reviews.

=================  ==================================  =====================================
level              the response's detections           enters the review queue
=================  ==================================  =====================================
``human_only``     none (the model runs hidden)        every request (the model's boxes are
                                                       kept but not shown to the reviewer)
``shadow``         final (a candidate runs in shadow)  none
``ai_assistance``  returned as suggestions             every request
``partial``        final, or provisional when any      requests with a detection whose score
                   score falls in the review band      is in ``[low, high)``
``full``           final                               none
=================  ==================================  =====================================

In ``partial`` mode the server judges the model's detections down to the band's low end, even
when the response keeps fewer (a higher ``score_threshold``): a client's threshold neither hides
the uncertain detections from review nor opts its requests out of it, and the reviewer's
suggestions include them.

The server holds one :class:`Automation` as ``service.automation``; a deployment changes
``service.automation.level`` while serving (one attribute assignment, read once per request).

>>> auto = Automation("partial", band=(0.3, 0.6))
>>> auto.decide([{"score": 0.9}, {"score": 0.45}])
Verdict(level='partial', detections='provisional', review_reason='low_confidence')
>>> auto.decide([{"score": 0.9}, {"score": 0.6}, {"score": 0.2}]).review_reason is None
True
>>> auto.level = "human_only"
>>> auto.decide([{"score": 0.9}])
Verdict(level='human_only', detections='withheld', review_reason='human_only')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

from detops.config import AutomationLevel, ServeSettings
from detops.errors import ConfigError

AUTOMATION_LEVELS: tuple[str, ...] = ("human_only", "shadow", "ai_assistance", "partial", "full")
assert AUTOMATION_LEVELS == get_args(AutomationLevel), "keep config.AutomationLevel in step"

# what the response's detections are, per level ("provisional" replaces "final" in partial
# mode when the request was queued for review)
DETECTIONS_ARE = {
    "human_only": "withheld",
    "shadow": "final",
    "ai_assistance": "suggestions",
    "partial": "final",
    "full": "final",
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with one answered request."""

    level: str
    detections: str  # final | suggestions | withheld | provisional
    review_reason: str | None  # None: not queued; else human_only | ai_assistance | low_confidence

    @property
    def needs_review(self) -> bool:
        return self.review_reason is not None


class Automation:
    """The automation level of a server (mutable ``level``) and the partial-review band."""

    def __init__(
        self,
        level: str = "full",
        *,
        band: tuple[float, float] = (0.3, 0.6),
        on_change: Any = None,
    ) -> None:
        low, high = band
        if not 0.0 <= low <= high <= 1.0:
            raise ConfigError(f"review band {band}: expected 0 <= low <= high <= 1")
        self.band = (float(low), float(high))
        self._on_change = on_change
        self._level = "full"
        self.level = level

    @classmethod
    def from_settings(cls, settings: ServeSettings, on_change: Any = None) -> Automation:
        b = settings.review_band
        return cls(settings.automation, band=(b.low, b.high), on_change=on_change)

    @property
    def level(self) -> str:
        return self._level

    @level.setter
    def level(self, value: str) -> None:
        if value not in AUTOMATION_LEVELS:
            raise ConfigError(
                f"automation level {value!r} is not one of {', '.join(AUTOMATION_LEVELS)}"
            )
        old, self._level = self._level, value
        if self._on_change is not None:
            self._on_change(old, value)

    def reaches_band(self, score_threshold: float) -> bool:
        """True when detections kept at ``score_threshold`` include every score in the band.

        >>> Automation(band=(0.3, 0.6)).reaches_band(0.5)
        False
        """
        return score_threshold <= self.band[0]

    def in_band(self, score: float) -> bool:
        """True when ``score`` asks for review in partial mode: ``low <= score < high``.

        >>> a = Automation(band=(0.25, 0.5))
        >>> [a.in_band(s) for s in (0.2499, 0.25, 0.4999, 0.5)]
        [False, True, True, False]
        """
        low, high = self.band
        return low <= score < high

    def decide(self, detections: Sequence[dict[str, Any]], level: str | None = None) -> Verdict:
        """The verdict for a request the model answered with ``detections`` (``score`` each),
        at ``level`` (default: the level in force, read once, so a concurrent change applies
        from the next request).

        In ``partial`` mode ``detections`` must reach down to the band's low end: a response
        threshold above it would hide the very detections that ask for review (the server
        passes the model's detections down to ``band[0]``; see :meth:`reaches_band`).
        """
        level = self._level if level is None else level
        if level == "human_only":
            return Verdict(level, "withheld", "human_only")
        if level == "ai_assistance":
            return Verdict(level, "suggestions", "ai_assistance")
        if level == "partial" and any(self.in_band(d["score"]) for d in detections):
            return Verdict(level, "provisional", "low_confidence")
        return Verdict(level, DETECTIONS_ARE[level], None)
