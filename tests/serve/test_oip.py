"""Open Inference Protocol v2 (KServe / Triton REST) against a real running server."""

from __future__ import annotations

import numpy as np
import pytest

from detops.model.registry import load_runtime
from tests.serve.conftest import SIZE


@pytest.fixture()
def server(running_server):
    return running_server()


def test_health_and_metadata(server):
    c = server.client
    assert c.get("/v2/health/live").json() == {"live": True}
    assert c.get("/v2/health/ready").json() == {"ready": True}
    assert c.get("/v2/models/det/ready").status_code == 200
    meta = c.get("/v2/models/det").json()
    assert meta["name"] == "det" and meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, SIZE, SIZE]}]
    assert meta["outputs"] == [{"name": "detections", "datatype": "FP32", "shape": [-1, 1, 6]}]
    assert meta["parameters"]["batch_policy"] == "greedy"
    assert (meta["parameters"]["lanes"], meta["parameters"]["lane_gain"]) == (1, None)  # fixed
    assert c.get("/v2/models/other").status_code == 404


def test_infer_returns_the_raw_outputs_of_the_graph(server):
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, SIZE, SIZE), dtype=np.float32)
    body = {
        "id": "req-7",
        "inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32",
                    "data": x.ravel().tolist()}],
    }  # fmt: skip
    r = server.client.post("/v2/models/det/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["model_name"], out["model_version"], out["id"]) == ("det", "1", "req-7")
    [o] = out["outputs"]
    expected = load_runtime(server.ws, "det@v1").infer(x)["detections"]
    assert o["name"] == "detections" and o["datatype"] == "FP32"
    assert o["shape"] == list(expected.shape)
    np.testing.assert_allclose(np.array(o["data"]).reshape(o["shape"]), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "inp, status, words",
    [
        ({"name": "images", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192},
         400, "expected [B, 3, 64, 64]"),
        ({"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32", "data": [0.0] * 5},
         400, "does not fill shape"),
        ({"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "INT64", "data": [0]},
         400, "expected FP32"),
        ({"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "FLOAT", "data": [0]},
         422, "datatype"),
    ],
)  # fmt: skip
def test_bad_tensors_are_refused_and_the_server_keeps_answering(server, inp, status, words):
    r = server.client.post("/v2/models/det/infer", json={"inputs": [inp]})
    assert r.status_code == status and words in r.json()["detail"]
    assert server.client.get("/v2/health/ready").status_code == 200
    good = {"name": "images", "shape": [1, 3, SIZE, SIZE], "datatype": "FP32",
            "data": [0.5] * (3 * SIZE * SIZE)}  # fmt: skip
    assert server.client.post("/v2/models/det/infer", json={"inputs": [good]}).status_code == 200
