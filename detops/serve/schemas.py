"""HTTP schemas: the typed detection response and the Open Inference Protocol v2 bodies."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Schema(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelRef(_Schema):
    name: str = Field(description="registered model name")
    version: int = Field(description="the version that answered (N of NAME@vN)")


class RouteInfo(_Schema):
    version: str = Field(description="NAME@vN that answered", examples=["det@v3"])
    reason: str = Field(
        description="why this version answered: live, canary (a deployment's candidate), "
        "blue or green (a blue-green deployment's colours)"
    )


class ImageInfo(_Schema):
    width: int
    height: int


class Detection(_Schema):
    box: list[float] = Field(
        min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels of the sent image"
    )
    score: float
    class_id: int = Field(description="0-based class id")
    label: str


class Timings(_Schema):
    decode: float = Field(description="decode + features + pre-processing, ms")
    queue: float = Field(description="waiting for the model's batch, ms")
    inference: float = Field(description="the batch's ONNX Runtime run + post-processing, ms")
    total: float = Field(description="from request received to response built, ms")


class AutomationInfo(_Schema):
    level: Literal["human_only", "shadow", "ai_assistance", "partial", "full"] = Field(
        description="the automation level in force (serve.automation or the deployment's)"
    )
    detections: Literal["final", "suggestions", "provisional", "withheld"] = Field(
        description="final: decided by the model; suggestions: a person decides "
        "(ai_assistance); provisional: a score fell in the review band (partial); withheld: "
        "people label every image and the model's boxes are not returned (human_only)"
    )


class DetectResponse(_Schema):
    request_id: str
    model: ModelRef
    route: RouteInfo
    image: ImageInfo
    detections: list[Detection]
    automation: AutomationInfo
    needs_review: bool = Field(description="the request was sent to the human review queue")
    review_id: str | None = Field(
        None,
        description="its item at /v1/review/{review_id}; null when not queued, or when the "
        "queue was full and the item was dropped (counted in detops_review_items_total)",
    )
    timings_ms: Timings


class ErrorBody(_Schema):
    detail: str = Field(description="what went wrong and, where possible, the fix")
    code: str = Field(description="machine-readable reason, e.g. too_many_pixels")


class BatchItem(_Schema):
    index: int
    filename: str | None = None
    status: int = Field(description="HTTP status this image alone would have had")
    result: DetectResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(_Schema):
    request_id: str
    results: list[BatchItem]


class ModelStatus(_Schema):
    name: str
    version: int
    ref: str
    ready: bool
    batch_policy: str = Field(description="batching policy in use (auto picks one at warm-up)")
    batch_gain: float | None = Field(
        None,
        description="per-image speed-up of batch max_batch_size over batch 1, measured on the "
        "session a batch runs on under load (one thread when there are several lanes)",
    )
    max_batch_size: int
    lanes: int = Field(1, description="ONNX Runtime runs of this version at once")
    lane_gain: float | None = Field(
        None, description="speed-up of one run per core side by side over one run on all cores"
    )
    follows: str | None = Field(None, description="the alias this server follows")


# -- Open Inference Protocol v2 (KServe / Triton REST) --------------------------------------------

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip


class TensorMetadata(_Schema):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = {}


class InferInput(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1)
    datatype: Datatype
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[InferOutput]
