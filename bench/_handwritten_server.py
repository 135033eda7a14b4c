"""The server a user would write by hand, for comparison in ``serve_bench.py``: FastAPI on
uvicorn, one route that runs the same in-process pipeline (``Runtime.predict_bytes``) in the
default thread pool and returns the detections as JSON. No prediction log, no features, no
metrics, no batching, no limits.

    python bench/_handwritten_server.py WORKSPACE NAME@ALIAS PORT [--spinning]
"""

from __future__ import annotations

import asyncio
import json

import uvicorn
from _common import comparison_runtime
from fastapi import FastAPI, Request
from fastapi.responses import Response


def main() -> None:
    rt, port = comparison_runtime()
    names = rt.spec.class_names
    app = FastAPI()

    @app.post("/v1/detect")
    async def detect(request: Request) -> Response:
        data = await request.body()
        loop = asyncio.get_running_loop()
        det = (await loop.run_in_executor(None, rt.predict_bytes, [data]))[0]
        body = json.dumps({"detections": det.to_list(names)})
        return Response(body, media_type="application/json")

    @app.get("/readyz")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
