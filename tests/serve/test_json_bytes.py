"""The server's JSON encoder (orjson): what ``json`` would write, read back identically."""

from __future__ import annotations

import json
import math

import numpy as np

from detops.serve.api import json_bytes, json_response


def test_floats_read_back_exactly_as_json_writes_them():
    rng = np.random.default_rng(0)
    boxes = (rng.random((200, 4)) * 1920).astype(np.float32).tolist()
    scores = rng.random(200).tolist()
    dets = [{"box": b, "score": s, "class_id": i % 3, "label": f"c{i % 3}"}
            for i, (b, s) in enumerate(zip(boxes, scores, strict=True))]  # fmt: skip
    body = {"detections": dets}
    out = json_bytes(body)
    assert json.loads(out) == body
    assert out == json.dumps(body, separators=(",", ":")).encode()  # byte for byte


def test_non_finite_numbers_become_null_not_invalid_tokens():
    out = json_bytes({"a": math.nan, "b": [math.inf, -math.inf, 1.5]})
    assert json.loads(out) == {"a": None, "b": [None, None, 1.5]}
    assert b"NaN" not in out and b"Infinity" not in out


def test_non_string_keys_and_huge_ints_are_still_encoded():
    assert json.loads(json_bytes({1: "x", "y": (1, 2)})) == {"1": "x", "y": [1, 2]}
    big = {"n": 2**70}  # beyond orjson's 64 bits: json writes it
    assert json.loads(json_bytes(big)) == big


def test_a_response_carries_the_encoded_body():
    r = json_response({"x": [1, 2.5]}, 201)
    assert r.status_code == 201 and r.media_type == "application/json"
    assert json.loads(r.body) == {"x": [1, 2.5]}
