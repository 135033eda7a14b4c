"""``/v2``: the Open Inference Protocol subset Triton and KServe clients use (REST, JSON).

Tensors in, raw model outputs out: ``inputs [{name, shape, datatype, data}]`` feed the graph's
input directly (already pre-processed, ``[B, 3, H, W]``); ``outputs`` are the graph's outputs
before any post-processing, ``data`` flattened in row-major order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response

from detops.serve.api import json_response
from detops.serve.schemas import InferRequest, InferResponse, ModelMetadata
from detops.serve.service import HTTPProblem, Service

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

_NP = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}  # fmt: skip
_V2 = {np.dtype(v).str: k for k, v in _NP.items()}
_ORT = {"tensor(float)": "FP32", "tensor(float16)": "FP16", "tensor(int64)": "INT64",
        "tensor(int32)": "INT32", "tensor(bool)": "BOOL", "tensor(double)": "FP64",
        "tensor(uint8)": "UINT8"}  # fmt: skip


def _service(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def _model(svc: Service, name: str) -> Any:
    lm = svc.host.current if svc.host is not None else None
    if lm is None or lm.name != name:
        known = lm.name if lm is not None else "none loaded yet"
        raise HTTPProblem(404, "bad_request", f"model {name!r} is not served here ({known})")
    return lm


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    from detops import __version__

    return {"name": "detops", "version": __version__, "extensions": []}


@router.get("/health/live", summary="The server is alive")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="Every model is loaded and warmed")
async def ready(request: Request) -> Response:
    ok = _service(request).ready
    return json_response({"ready": ok}, 200 if ok else 503)


@router.get("/models/{name}", response_model=ModelMetadata, summary="Model metadata")
async def metadata(name: str, request: Request) -> dict[str, Any]:
    svc = _service(request)
    lm = _model(svc, name)
    sess = lm.runtime._session
    tensors = (
        [
            {
                "name": t.name,
                "datatype": _ORT.get(t.type, t.type),
                "shape": [d if isinstance(d, int) else -1 for d in t.shape],
            }
            for t in sess.get_inputs()
        ],
        [
            {
                "name": t.name,
                "datatype": _ORT.get(t.type, t.type),
                "shape": [d if isinstance(d, int) else -1 for d in t.shape],
            }
            for t in sess.get_outputs()
        ],
    )
    inputs = [t for t in tensors[0] if t["name"] == lm.runtime.input_name]
    return {
        "name": lm.name,
        "versions": [str(lm.version)],
        "platform": "onnxruntime_onnx",
        "inputs": inputs,
        "outputs": tensors[1],
        "parameters": {
            "ref": lm.ref,
            "batch_policy": lm.policy,
            "batch_gain": lm.gain,
            "max_batch_size": lm.batcher.max_batch_size,
            "lanes": lm.batcher.lanes,
            "lane_gain": lm.lane_gain,
            "class_names": lm.runtime.spec.class_names,
        },
    }


@router.get("/models/{name}/ready", summary="The model is loaded and warmed")
async def model_ready(name: str, request: Request) -> dict[str, Any]:
    lm = _model(_service(request), name)
    return {"name": lm.name, "ready": True}


# levels at which a request's boxes are final without a person: the only ones where raw
# model outputs may go back to a client
RAW_INFERENCE_LEVELS = ("full", "shadow")


@router.post("/models/{name}/infer", response_model=InferResponse, summary="Raw inference")
async def infer(name: str, body: InferRequest, request: Request) -> Response:
    svc = _service(request)
    state = request.scope["state"]
    try:
        svc.check_detect_token(request.headers.get("authorization"), "/v2 inference")
        level = svc.automation.level
        if level not in RAW_INFERENCE_LEVELS:
            # raw tensors carry no image to review and no boxes to hold back
            raise HTTPProblem(
                409,
                "automation",
                f"raw inference is off at automation level {level!r} (people review these "
                f"requests); send images to /v1/detect instead",
            )
        lm = _model(svc, name)
        rt = lm.runtime
        inp = next((i for i in body.inputs if i.name == rt.input_name), None)
        if inp is None:
            if len(body.inputs) != 1:
                raise HTTPProblem(
                    400, "bad_request", f"no input named {rt.input_name!r} in the request"
                )
            inp = body.inputs[0]
        if inp.datatype not in ("FP32", "FP16"):
            raise HTTPProblem(
                400, "bad_request", f"input {inp.name!r}: expected FP32, got {inp.datatype}"
            )
        want = (3, rt.spec.input_height, rt.spec.input_width)
        if len(inp.shape) != 4 or tuple(inp.shape[1:]) != want or inp.shape[0] < 1:
            raise HTTPProblem(
                400,
                "bad_request",
                f"input {inp.name!r}: shape {inp.shape}, expected "
                f"[B, {want[0]}, {want[1]}, {want[2]}]",
            )
        try:
            tensor = np.asarray(inp.data, dtype=np.float32).reshape(inp.shape)
        except (ValueError, TypeError) as e:
            raise HTTPProblem(
                400, "bad_request", f"input {inp.name!r}: data does not fill shape {inp.shape}: {e}"
            ) from None
        if rt.max_batch is not None and tensor.shape[0] > rt.max_batch:
            raise HTTPProblem(
                400, "bad_request", f"this graph takes batches of at most {rt.max_batch}"
            )
        route, res = await svc.infer_tensor(tensor, request_id=state["request_id"])
    except HTTPProblem as p:
        svc.metrics.reject(p.code)
        raise
    state["model_version"] = route.version
    wanted = [o.name for o in body.outputs] if body.outputs else list(res.outputs)
    missing = [n for n in wanted if n not in res.outputs]
    if missing:
        raise HTTPProblem(
            400, "bad_request", f"unknown outputs {missing}; the graph has {list(res.outputs)}"
        )
    outs = []
    for n in wanted:
        arr = np.asarray(res.outputs[n])
        if arr.ndim and arr.shape[0] > tensor.shape[0] and rt.max_batch is not None:
            arr = arr[: tensor.shape[0]]  # drop the fixed-batch padding rows
        outs.append(
            {
                "name": n,
                "shape": list(arr.shape),
                "datatype": _V2.get(arr.dtype.str, "BYTES"),
                "data": arr.ravel().tolist(),
            }
        )
    return json_response(
        {
            "model_name": route.model.name,
            "model_version": str(route.model.version),
            "id": body.id if body.id is not None else state["request_id"],
            "outputs": outs,
        }
    )
