"""Routers pick the model version that answers a request, and say why.

A router is a small strategy object: :meth:`Router.route` returns a :class:`Route` holding the
version it acquired; the app calls :meth:`Router.release` when the request is done.

* :class:`LiveRouter`: every request to the live version of the followed alias.
* :class:`DeploymentRouter`: a deployment's :class:`RoutePlan`, replaced whole (one reference
  assignment) when the deployment changes. ``live`` answers; ``canary`` sends a share of
  clients to the candidate; ``shadow`` also hands a copy of sampled requests to the candidate
  off the critical path (:mod:`detops.serve.shadow`); blue-green answers from one colour.

Canary routing is sticky per client: the ``X-Client-Key`` header hashes (BLAKE2b, the same on
every replica and every process, unlike Python's ``hash``) to a number in ``[0, 1)`` and the
client goes to the candidate when that number is below the step's share, so a client in the
canary at 5% stays in it at 25%. Requests without a key are split at random.

>>> client_unit("camera-17") == client_unit("camera-17")
True
>>> 0.0 <= client_unit("camera-17") < 1.0
True
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from detops.serve.models import LoadedModel, ModelHost

__all__ = [
    "DeploymentRouter",
    "LiveRouter",
    "Route",
    "RoutePlan",
    "Router",
    "client_unit",
]


def client_unit(key: str) -> float:
    """A stable number in ``[0, 1)`` for a client key (the first 8 bytes of BLAKE2b)."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass(frozen=True, slots=True)
class Route:
    model: LoadedModel
    reason: str  # live | canary | blue | green
    shadow: Any = None  # a ShadowTicket when this request is copied to a candidate

    @property
    def version(self) -> str:
        return self.model.ref

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "reason": self.reason}


class Router(ABC):
    @abstractmethod
    def route(self, request_id: str, client_key: str | None = None) -> Route:
        """The version that answers ``request_id`` (acquired: call :meth:`release`)."""

    @abstractmethod
    def release(self, route: Route) -> None: ...

    @property
    @abstractmethod
    def ready(self) -> bool: ...


class LiveRouter(Router):
    """Every request to the live version of the followed alias."""

    def __init__(self, host: ModelHost) -> None:
        self.host = host

    def route(self, request_id: str, client_key: str | None = None) -> Route:
        return Route(self.host.acquire(), "live")

    def release(self, route: Route) -> None:
        self.host.release(route.model)

    @property
    def ready(self) -> bool:
        return self.host.ready


@dataclass(frozen=True)
class RoutePlan:
    """How one deployment splits traffic now (immutable; replaced whole)."""

    name: str  # model name
    live: int
    candidate: int | None = None
    mode: str = "live"  # live | shadow | canary | bluegreen
    share: float = 0.0  # canary: the candidate's share of clients
    sample: float = 0.0  # shadow: the share of live requests copied to the candidate
    live_reason: str = "live"  # live | blue | green
    candidate_reason: str = "canary"  # canary | blue | green
    revision: int = 0
    deployment: str = ""
    colours: tuple[tuple[int, str], ...] = ()  # blue-green: (version, colour)

    def reason_of(self, version: int) -> str:
        """Why ``version`` answers: its colour in a blue-green deployment, else live."""
        return dict(self.colours).get(version, "live")

    def candidate_share(self) -> float:
        return self.share if self.mode == "canary" and self.candidate is not None else 0.0


class DeploymentRouter(Router):
    """Routes by a deployment's :class:`RoutePlan` (see the module docstring).

    A version the plan names but the host has not loaded yet is skipped (the request goes to
    live), so a plan never fails a request; ``plan`` is read once per request.
    """

    def __init__(self, host: ModelHost, plan: RoutePlan, *, shadow: Any = None) -> None:
        self.host = host
        self.plan = plan
        self.shadow = shadow  # a ShadowRunner
        self.agent: Any = None  # the replica's RolloutAgent (detops.serve.rollout)
        self.parts: list[Any] = []  # start and stop with the service (agent, shadow runner)
        self._rng = random.Random()

    def bind(self, service: Any) -> None:
        """Attach the background parts to ``service`` (started after its model host)."""
        for part in self.parts:
            bind = getattr(part, "bind", None)
            if bind is not None:
                bind(service)
            service.background.append(part)

    def route(self, request_id: str, client_key: str | None = None) -> Route:
        p = self.plan
        share = p.candidate_share()
        if share > 0 and p.candidate is not None:
            u = client_unit(client_key) if client_key else self._rng.random()
            if u < share:
                lm = self.host.acquire_version(p.name, p.candidate)
                if lm is not None:
                    return Route(lm, p.candidate_reason)
        live = self.host.acquire_version(p.name, p.live)
        reason = p.live_reason
        if live is None:  # the plan's live version is still loading: the installed one answers
            live = self.host.acquire()
            reason = p.reason_of(live.version)
        ticket = None
        if (
            p.mode == "shadow"
            and p.candidate is not None
            and self.shadow is not None
            and (p.sample >= 1.0 or self._rng.random() < p.sample)
        ):
            ticket = self.shadow.ticket(p)
        return Route(live, reason, ticket)

    def release(self, route: Route) -> None:
        self.host.release(route.model)

    @property
    def ready(self) -> bool:
        return self.host.ready
