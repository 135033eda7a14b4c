"""The prediction server: typed detection API, Open Inference Protocol v2, dynamic batching,
Prometheus metrics, an asynchronous prediction log, hot model swap, deployments (shadow, canary
with gates and automatic rollback, blue-green), degrees of automation and the review queue.

Names load on first use (``import detops.serve`` imports neither FastAPI nor onnxruntime)::

    from detops.serve import build_service, create_app
    app = create_app(build_service(workspace, "det@production"))   # an ASGI app

Parts: :mod:`~detops.serve.service` (the request pipeline), :mod:`~detops.serve.batching`,
:mod:`~detops.serve.models` (loaded versions, alias following), :mod:`~detops.serve.routing`
(which version answers), :mod:`~detops.serve.predlog`, :mod:`~detops.serve.metrics`,
:mod:`~detops.serve.middleware`; routes in :mod:`~detops.serve.api` (``/v1``),
:mod:`~detops.serve.oip` (``/v2``) and :mod:`~detops.serve.ops`. Rollouts:
:mod:`~detops.serve.deployments` (state and history in the store), :mod:`~detops.serve.rollout`
(the controller and the deployment router), :mod:`~detops.serve.shadow`; people in the loop:
:mod:`~detops.serve.automation`, :mod:`~detops.serve.review`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from detops._lazy import attach

_LAZY: dict[str, str] = {
    "create_app": "detops.serve.app",
    "build_service": "detops.serve.app",
    "serve": "detops.serve.server",
    "Service": "detops.serve.service",
    "HTTPProblem": "detops.serve.service",
    "Batcher": "detops.serve.batching",
    "ModelHost": "detops.serve.models",
    "LoadedModel": "detops.serve.models",
    "Router": "detops.serve.routing",
    "LiveRouter": "detops.serve.routing",
    "Route": "detops.serve.routing",
    "PredictionLog": "detops.serve.predlog",
    "ServeMetrics": "detops.serve.metrics",
    "DetectResponse": "detops.serve.schemas",
    "Deployment": "detops.serve.deployments",
    "RolloutAgent": "detops.serve.rollout",
    "demo_rollout": "detops.serve.rollout_demo",
    "Automation": "detops.serve.automation",
    "AUTOMATION_LEVELS": "detops.serve.automation",
    "ReviewQueue": "detops.serve.review",
}

__all__ = [
    "AUTOMATION_LEVELS",
    "Automation",
    "Batcher",
    "Deployment",
    "DetectResponse",
    "HTTPProblem",
    "LiveRouter",
    "LoadedModel",
    "ModelHost",
    "PredictionLog",
    "Route",
    "ReviewQueue",
    "RolloutAgent",
    "Router",
    "ServeMetrics",
    "Service",
    "build_service",
    "create_app",
    "demo_rollout",
    "serve",
]

if TYPE_CHECKING:
    from detops.serve.app import build_service, create_app
    from detops.serve.automation import AUTOMATION_LEVELS, Automation
    from detops.serve.batching import Batcher
    from detops.serve.deployments import Deployment
    from detops.serve.metrics import ServeMetrics
    from detops.serve.models import LoadedModel, ModelHost
    from detops.serve.predlog import PredictionLog
    from detops.serve.review import ReviewQueue
    from detops.serve.rollout import RolloutAgent
    from detops.serve.rollout_demo import demo_rollout
    from detops.serve.routing import LiveRouter, Route, Router
    from detops.serve.schemas import DetectResponse
    from detops.serve.server import serve
    from detops.serve.service import HTTPProblem, Service


__getattr__, __dir__, _ = attach(__name__, globals(), _LAZY)
