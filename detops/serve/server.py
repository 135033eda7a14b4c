"""Run the app on uvicorn: ``detops serve`` and the multi-worker factory."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from detops.serve.app import build_service, create_app


def tcp_socket(host: str, port: int) -> socket.socket:
    """A listening socket whose accepted connections get TCP_NODELAY.

    asyncio sets TCP_NODELAY only on sockets whose ``proto`` is IPPROTO_TCP; uvicorn's own
    ``bind_socket`` (used for ``--workers > 1``) creates them with proto 0, so every response
    (headers and body are two writes) waits ~40 ms on Nagle + delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


_LOG_LEVEL_ENV = "DETOPS_LOG_LEVEL"  # configure_logging's level, for --workers' processes


def configure_logging(level: str = "warning") -> None:
    """Show the server's own log lines on stderr, as uvicorn shows its: a model loaded (with
    what ``auto`` chose and measured), swapped or unloaded, rollout decisions, dropped records.

    ``level`` is the uvicorn ``--log-level``. The server's info lines are a few per model or
    decision, never one per request, so they show at the default ``warning`` too; ``error``
    and ``critical`` silence them, ``debug`` adds debug lines.
    """
    name = level.upper()
    value = logging.DEBUG if name == "TRACE" else logging.getLevelName(name)
    wanted = value if isinstance(value, int) else logging.WARNING
    logger = logging.getLogger("detops")
    logger.setLevel(min(wanted, logging.INFO) if wanted <= logging.WARNING else wanted)
    if not logger.hasHandlers():  # nothing shows them yet: an embedder's own handlers stay
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        logger.addHandler(handler)


def app_from_env() -> Any:
    """uvicorn factory for ``--workers > 1``: each process opens the workspace in DETOPS_HOME
    (settings from its DETOPS_SERVE_* environment) and builds its own app."""
    from detops.workspace import Workspace

    configure_logging(os.environ.get(_LOG_LEVEL_ENV, "warning"))
    ws = Workspace.find(os.environ.get("DETOPS_HOME"))
    return create_app(build_service(ws))


def serve(ws: Any, *, log_level: str = "warning", access_log: bool = False) -> None:
    """Serve ``ws.settings.serve`` until interrupted."""
    import uvicorn

    configure_logging(log_level)
    s = ws.settings.serve
    common = dict(
        host=s.host,
        port=s.port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=max(1, int(s.timeout_ms / 1000) + 1),
    )
    if s.workers > 1:
        # every process re-resolves settings: hand it what the flags decided through the env
        from detops.config import _flatten, env_name

        for key, value in _flatten(ws.settings).items():
            if key.startswith("serve.") and value is not None:
                os.environ[env_name(key)] = (
                    str(value).lower() if isinstance(value, bool) else str(value)
                )
        os.environ["DETOPS_HOME"] = str(ws.root)
        os.environ[_LOG_LEVEL_ENV] = log_level
        from uvicorn.supervisors import Multiprocess

        config = uvicorn.Config(
            "detops.serve.server:app_from_env", factory=True, workers=s.workers, **common
        )
        Multiprocess(config, sockets=[tcp_socket(s.host, s.port)]).run()
    else:
        uvicorn.run(create_app(build_service(ws)), **common)
