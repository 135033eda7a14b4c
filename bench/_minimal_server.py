"""The least an HTTP server can add, for comparison in ``serve_bench.py``: uvicorn (the same
uvloop and httptools as ``detops serve``) with a bare ASGI app that reads the body, runs the
in-process pipeline (``Runtime.predict_bytes``) on the event loop and returns the detections
as JSON (orjson). No routing, validation, limits, metrics, prediction log or batching: what
is left is the HTTP round trip itself.

    python bench/_minimal_server.py WORKSPACE NAME@ALIAS PORT [--spinning]
"""

from __future__ import annotations

from typing import Any

import orjson
import uvicorn
from _common import comparison_runtime


def main() -> None:
    rt, port = comparison_runtime()
    names = rt.spec.class_names

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return  # lifespan: nothing to start
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        if scope["path"] == "/readyz":
            body = b'{"ready":true}'
        else:
            det = rt.predict_bytes([b"".join(chunks)])[0]
            body = orjson.dumps({"detections": det.to_list(names)})
        headers = [(b"content-type", b"application/json"),
                   (b"content-length", str(len(body)).encode())]  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )


if __name__ == "__main__":
    main()
