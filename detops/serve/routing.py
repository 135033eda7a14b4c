"""Routers pick the model version that answers a request, and say why.

A router is a small strategy object: :meth:`Router.route` returns a :class:`Route` holding the
version it acquired; the app calls :meth:`Router.release` when the request is done. Today
there is :class:`LiveRouter` (everything to the live version); shadow and canary routers
(later issues) implement the same two methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from detops.serve.models import LoadedModel, ModelHost


@dataclass(frozen=True, slots=True)
class Route:
    model: LoadedModel
    reason: str  # live | shadow | canary ...

    @property
    def version(self) -> str:
        return self.model.ref

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "reason": self.reason}


class Router(ABC):
    @abstractmethod
    def route(self, request_id: str) -> Route:
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

    def route(self, request_id: str) -> Route:
        return Route(self.host.acquire(), "live")

    def release(self, route: Route) -> None:
        self.host.release(route.model)

    @property
    def ready(self) -> bool:
        return self.host.ready
