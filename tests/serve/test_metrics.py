"""``/metrics``: parsed with prometheus_client's own parser (the oracle of the format)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.serve.conftest import image_bytes

JPEG = {"content-type": "image/jpeg"}

EXPECTED = {
    # family name -> type
    "detops_requests": "counter",
    "detops_in_flight_requests": "gauge",
    "detops_decode_seconds": "histogram",
    "detops_queue_seconds": "histogram",
    "detops_inference_seconds": "histogram",
    "detops_total_seconds": "histogram",
    "detops_batch_size": "histogram",
    "detops_queue_depth": "gauge",
    "detops_rejections": "counter",
    "detops_prediction_log_records": "counter",
    "detops_model_info": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_cpu_seconds": "counter",
}


def families(server) -> dict:
    text = server.client.get("/metrics").text
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fam, name: str, **labels) -> float:
    return sum(
        s.value
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def metric(server, family: str, name: str, **labels) -> float:
    """The sum of ``name``'s samples with these labels in ``family``, scraped now."""
    return value(families(server)[family], name, **labels)


def test_metrics_families_labels_and_counts(running_server):
    server = running_server({"serve.batch_policy": "wait", "serve.max_queue_delay_ms": 20})
    data = image_bytes()

    def post(_):
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/v1/detect", content=data, headers=JPEG).status_code

    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(post, range(12))) == [200] * 12
    server.client.post("/v1/detect", content=b"", headers=JPEG)
    fams = families(server)
    for name, kind in EXPECTED.items():
        assert name in fams and fams[name].type == kind, name
    req = fams["detops_requests"]
    assert value(req, "detops_requests_total", route="/v1/detect", status="200",
                 model_version="det@v1") == 12  # fmt: skip
    assert value(req, "detops_requests_total", route="/v1/detect", status="400") == 1
    assert value(fams["detops_total_seconds"], "detops_total_seconds_count") == 13
    assert value(fams["detops_decode_seconds"], "detops_decode_seconds_count") == 12
    bs = fams["detops_batch_size"]
    assert value(bs, "detops_batch_size_sum") == 12  # every image in exactly one run
    # one observation per run, whether requests shared runs or not (that depends on timing;
    # tests/serve/test_batching.py shows queued jobs sharing runs)
    runs = server.service.host.current.batcher.batches
    assert 1 <= value(bs, "detops_batch_size_count") == runs <= 12
    assert value(fams["detops_rejections"], "detops_rejections_total", reason="empty_body") == 1
    assert value(fams["detops_model_info"], "detops_model_info", model_version="det@v1",
                 batch_policy="wait") == 1  # fmt: skip
    assert value(fams["process_resident_memory_bytes"], "process_resident_memory_bytes") > 1e6
    # low cardinality: labels only from fixed sets, never request ids or URLs
    routes = {s.labels["route"] for s in req.samples}
    assert routes <= {"/v1/detect", "/readyz", "/metrics", "other"}


def test_unknown_paths_share_one_label(running_server):
    server = running_server()
    for i in range(5):
        assert server.client.get(f"/no/such/{i}").status_code == 404
    req = families(server)["detops_requests"]
    assert value(req, "detops_requests_total", route="other", status="404") == 5
