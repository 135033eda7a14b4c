"""The prediction server under real HTTP load, against in-process baselines measured in this run.

    python bench/serve_bench.py                   # ~13 minutes on 2 cores
    python bench/serve_bench.py --duration 5 --rss-requests 1000,5000   # quicker, rougher

The load generator is wrk (Debian package ``wrk``) in its own process, posting one 320x320
JPEG as the raw body (``Content-Type: image/jpeg``) to ``/v1/detect``; the server is
``detops serve`` started as a subprocess with its prediction log ON (SQLite, the default) and
its input features computed for every request. The model is the default detector exported to
ONNX with random weights (the same compute as a trained one).

Baselines, measured in this process while no server runs, with the same session options:

- in-process pipeline at c=1: ``Runtime.predict_bytes([jpeg])`` (decode + pre-process + ONNX
  Runtime + post-process), p50 of per-call latency;
- in-process batch-8 loop: ``predict_bytes`` on 8 JPEGs at a time, images/s;
- the same c=1 pipeline on a no-op graph (a constant detection): server overhead is the
  server's c=1 p50 on that graph minus this;
- for context (info rows), the server a user would write by hand (``_handwritten_server.py``:
  FastAPI + uvicorn, the same pipeline in a thread, nothing else), at c=1 with both models
  and at c=8: what this host allows a Python HTTP server at all.

Note: wrk shares the 2 cores with the server, the in-process loops have them to themselves.
Other work on the machine moves every number; each comparison alternates its sides for
``--rounds`` rounds and keeps the best of each, and the table prints the load average.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from _common import clean_env, constant_graph, free_port, stop_process
from PIL import Image

LUA = """
local f = assert(io.open(os.getenv("BENCH_IMAGE"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = "image/jpeg"
"""


SPIN = {False: "false", True: "alone"}  # serve.allow_spinning values the benchmark compares

# -- models -----------------------------------------------------------------------------------


# The issue's reference measurements used "a 0.3M-parameter CNN at 320x320" costing 11.0 ms per
# image in process (decode + pre-process + ONNX Runtime + post-process) on these 2 cores. The
# default detector measured 3.8 ms on a quiet host, which makes a fixed HTTP cost weigh about
# three times as much in the ratios; ``--model reference`` runs a detector of the reference's
# cost instead, so that the ratios compare with the table in the issue.
MODELS = {
    "default": {},
    # denser high-resolution layers: 378k parameters; measured 10.1 ms in process (c=1 p50)
    "reference": {"widths": (48, 64, 96, 128), "depths": (4, 2, 2, 1), "stem": 48,
                  "neck": 80, "head": 80, "neck_wide": 48, "heat_blocks": 2, "block": "dw",
                  "dw_act": True},
}


def export_detector(path: Path, imgsz: int, num_classes: int, name: str = "default") -> dict:
    import torch

    from detops.model.detector import Detector, DetectorConfig, count_parameters, spec_dict
    from detops.model.export import export_onnx

    torch.manual_seed(0)
    model = Detector(DetectorConfig(num_classes=num_classes, **MODELS[name])).eval()
    print(f"model {name}: {count_parameters(model):,} parameters", flush=True)
    export_onnx(model, path, imgsz=imgsz)
    return spec_dict([f"class{i}" for i in range(num_classes)], imgsz=imgsz)


def noop_graph(imgsz: int) -> bytes:
    """``images [B,3,S,S] -> detections [B,1,6]``: one constant box, no compute."""
    return constant_graph([10, 10, 50, 50, 0.9, 0], imgsz, "noop")


def photo_jpeg(size: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 13, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


# -- in-process baselines ---------------------------------------------------------------------


def p50_latency_ms(fn, seconds: float) -> float:
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3)


def batch_rate(rt, jpegs: list[bytes], seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        rt.predict_bytes(jpegs)
        n += len(jpegs)
    return n / (time.perf_counter() - t0)


# -- the server -------------------------------------------------------------------------------


def wait_ready(proc: subprocess.Popen, url: str, log: Path, what: str) -> None:
    """Until ``url``/readyz answers 200; an error naming ``what`` if it exits or takes 120 s."""
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=url, timeout=5) as c:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited {proc.returncode}; see {log}")
            try:
                if c.get("/readyz").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not ready after 120 s; see {log}")
            time.sleep(0.1)


class ServerProcess:
    def __init__(self, ws: Path, model: str, *, policy: str, spinning: str, log: Path,
                 lanes: int = 0) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = clean_env()
        env["DETOPS_SERVE_ALLOW_SPINNING"] = spinning  # false | true | alone
        env["DETOPS_SERVE_LANES"] = str(lanes)  # 0: auto
        self._log = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detops", "serve", "-w", str(ws), "--model", model,
             "--port", str(self.port), "--batch-policy", policy, "--max-queue", "256"],
            env=env, stdout=self._log, stderr=self._log,
        )  # fmt: skip
        wait_ready(self.proc, self.url, log, "detops serve")
        self.model = httpx.get(self.url + "/v1/models", timeout=5).json()[0]

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metric(self, name: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


class HandWritten:
    """``_handwritten_server.py`` on a free port (the reference in the issue's table)."""

    def __init__(self, ws: Path, model: str, *, spinning: bool, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log, "a")  # noqa: SIM115 - closed in stop()
        script = Path(__file__).with_name("_handwritten_server.py")
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(ws), model, str(self.port),
             *(["--spinning"] if spinning else [])],
            env=clean_env(), stdout=self._log, stderr=self._log,
        )  # fmt: skip
        wait_ready(self.proc, self.url, log, "hand-written server")

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, lua: Path, image: Path, *, conns: int, seconds: float | None = None,
        requests: int | None = None) -> Load:  # fmt: skip
    """Run wrk for ``seconds`` (or until about ``requests`` are done, estimated by rate)."""
    duration = seconds if seconds is not None else 10
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{duration:.0f}s", "--latency", "--timeout", "30s",
           "-s", str(lua), url + "/v1/detect"]  # fmt: skip
    out = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "BENCH_IMAGE": str(image)},
        check=True,
    ).stdout  # fmt: skip
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    done = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(non2xx.group(1)) if non2xx else 0) + (
        sum(int(g) for g in sock.groups()) if sock else 0
    )
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return Load(rps, _ms(lat["50"]), _ms(lat["99"]), done, errors)


def load_n(url: str, lua: Path, image: Path, conns: int, n: int, rate_hint: float) -> Load:
    """About ``n`` requests (wrk runs by time: the duration comes from a measured rate)."""
    return wrk(url, lua, image, conns=conns, seconds=max(2.0, n / max(rate_hint, 1.0)))


# -- main -------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=320, help="image side and network input")
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--model", choices=sorted(MODELS), default="default",
                    help="default detector, or one of the issue's reference cost (~11 ms)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per measured load")
    ap.add_argument("--rss-requests", default="2000,20000")
    ap.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="alternating repetitions of each comparison; the best of each counts",
    )
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")

    from detops.model.registry import load_runtime, register_model, set_alias
    from detops.workspace import Workspace, init_workspace

    tmp = Path(tempfile.mkdtemp(prefix="serve_bench_"))
    root = init_workspace(tmp / "ws")
    ws = Workspace(root)
    onnx = tmp / "detector.onnx"
    spec = export_detector(onnx, args.size, args.classes, args.model)
    register_model(ws, "det", onnx, spec)
    set_alias(ws, "det@v1", "production")
    noop_spec = dict(spec, input_width=args.size, input_height=args.size)
    register_model(ws, "noop", noop_graph(args.size), noop_spec)
    set_alias(ws, "noop@v1", "production")
    jpeg = photo_jpeg(args.size)
    image = tmp / "image.jpg"
    image.write_bytes(jpeg)
    lua = tmp / "post.lua"
    lua.write_text(LUA)
    log = tmp / "server.log"
    dur = args.duration
    rows: list[tuple[str, str, str, str, str]] = []
    results: dict[str, object] = {}

    load_before = f"{os.getloadavg()[0]:.2f}"
    # baselines, in this process while no server runs; re-measured next to every server run
    # (other work on the machine comes and goes, so a baseline from minutes ago would lie)
    rt = load_runtime(ws, "det@production", allow_spinning=False)
    rt.warmup(3)
    jpegs8 = [photo_jpeg(args.size, seed=i) for i in range(8)]
    noop_rt = load_runtime(ws, "noop@production", allow_spinning=False)
    noop_rt.warmup(3)

    def base_c1() -> float:
        return p50_latency_ms(lambda: rt.predict_bytes([jpeg]), dur / 2)

    def base_b8() -> float:
        return batch_rate(rt, jpegs8, dur / 2)

    def base_noop() -> float:
        return p50_latency_ms(lambda: noop_rt.predict_bytes([jpeg]), dur / 2)

    def run(model: str, policy: str, spinning: str, conns: int, seconds: float, lanes: int = 0):
        srv = ServerProcess(root, model, policy=policy, spinning=spinning, log=log, lanes=lanes)
        try:
            wrk(srv.url, lua, image, conns=conns, seconds=2)  # warm the connection path
            cpu0, n0 = srv.cpu_s(), srv.metric("detops_decode_seconds_count")
            res = wrk(srv.url, lua, image, conns=conns, seconds=seconds)
            cpu_per_req = (srv.cpu_s() - cpu0) / max(1.0, srv.metric(
                "detops_decode_seconds_count") - n0)  # fmt: skip
            return res, srv.model, cpu_per_req * 1e3
        finally:
            srv.stop()

    # ORT spinning: measure, then use the better setting for the rest. "alone" spins only in
    # the runs of a request that has the server to itself (at c=1 that is every run); under
    # load a non-spinning twin session serves, so c=8 runs as with spinning off.
    spin: dict[bool, tuple[Load, float, float]] = {}
    for _ in range(args.rounds):
        for spinning in (False, True):
            b1 = base_c1()
            res, _, cpu_ms = run("det@production", "auto", SPIN[spinning], 1, dur)
            b1 = min(b1, base_c1())  # the baseline on both sides of the server run
            print(f"spinning {SPIN[spinning]}: c=1 p50 {res.p50_ms:.2f} ms "
                  f"(in-process {b1:.2f} ms), server CPU {cpu_ms:.2f} ms/request",
                  flush=True)  # fmt: skip
            old = spin.get(spinning)
            if old is None or res.p50_ms < old[0].p50_ms:
                # the ratio pairs the server's best round with the baseline of that round
                spin[spinning] = (res, min(cpu_ms, old[1]) if old else cpu_ms, b1)
    # "alone" when its p50 is >= 5% lower: the CPU it spins away at c=1 is idle CPU (under
    # load it does not spin, and the c=8 rows below run with the setting chosen here)
    off, on = spin[False], spin[True]
    use_spin = on[0].p50_ms <= off[0].p50_ms * 0.95
    chosen = spin[use_spin]
    spin_mode = SPIN[use_spin]
    results["spinning"] = {
        "off": {"p50_ms": off[0].p50_ms, "cpu_ms_per_request": off[1]},
        "alone": {"p50_ms": on[0].p50_ms, "cpu_ms_per_request": on[1]},
        "chosen": spin_mode,
    }

    c1, b1 = chosen[0], chosen[2]
    rows.append(("c=1 p50 latency", f"{c1.p50_ms:.2f} ms", f"{b1:.2f} ms (in-process)",
                 f"{c1.p50_ms / b1:.2f}x",
                 _verdict(c1.p50_ms / b1 <= 1.10, "<= 1.10x")))  # fmt: skip

    def hand(model: str, conns: int = 1) -> Load:
        srv = HandWritten(root, model, spinning=use_spin, log=log)
        try:
            wrk(srv.url, lua, image, conns=conns, seconds=2)
            return wrk(srv.url, lua, image, conns=conns, seconds=dur)
        finally:
            srv.stop()

    def c8(policy: str, lanes: int = 0) -> tuple[Load, dict, float]:
        b = base_b8()
        if policy == "hand-written":
            res, model = hand("det@production", conns=8), {"batch_policy": "-", "lanes": "-"}
        else:
            res, model, _ = run("det@production", policy, spin_mode, 8, dur, lanes)
        b = max(b, base_b8())
        print(f"c=8 {policy}{' one lane' if lanes == 1 else ''}: {res.rps:.1f} req/s "
              f"(in-process batch 8: {b:.1f} img/s), policy {model['batch_policy']}, "
              f"{model['lanes']} lane(s)", flush=True)  # fmt: skip
        return res, model, b

    best: dict[str, tuple[Load, dict, float]] = {}
    for _ in range(args.rounds):  # alternate, so load from elsewhere hits every policy
        for policy in ("auto", "off", "wait", "one lane", "hand-written"):
            got = c8("auto", lanes=1) if policy == "one lane" else c8(policy)
            if policy not in best or got[0].rps > best[policy][0].rps:
                best[policy] = got
    c8_auto, model_auto, b8 = best["auto"]
    c8_off = best["off"][0]
    c8_wait = best["wait"][0]
    c8_one = best["one lane"][0]
    policy = (f"batching {model_auto['batch_policy']} (gain {model_auto['batch_gain']}), "
              f"{model_auto['lanes']} lane(s) (gain {model_auto['lane_gain']})")  # fmt: skip
    rows.append(("c=8 throughput, batching auto", f"{c8_auto.rps:.1f} req/s",
                 f"{b8:.1f} img/s (in-process batch 8)", f"{c8_auto.rps / b8:.2f}x",
                 _verdict(c8_auto.rps >= b8, ">= 1.00x")))  # fmt: skip
    rows.append(("  auto chose", policy, "", "", ""))
    rows.append(("c=8 batching auto vs off", f"{c8_auto.rps:.1f} req/s",
                 f"{c8_off.rps:.1f} req/s (off)", f"{c8_auto.rps / c8_off.rps:.2f}x",
                 _verdict(c8_auto.rps >= c8_off.rps * 0.97, ">= 1.00x (3% noise)")))  # fmt: skip
    rows.append(
        (
            "c=8 forced wait (info)",
            f"{c8_wait.rps:.1f} req/s",
            f"{c8_off.rps:.1f} req/s (off)",
            f"{c8_wait.rps / c8_off.rps:.2f}x",
            "",
        )
    )
    rows.append(("c=8 auto with one lane (info)", f"{c8_one.rps:.1f} req/s",
                 f"{c8_auto.rps:.1f} req/s (auto)", f"{c8_one.rps / c8_auto.rps:.2f}x", ""))
    c8_hand, _, b8_hand = best["hand-written"]
    rows.append(("  hand-written FastAPI, c=8 (info)", f"{c8_hand.rps:.1f} req/s",
                 f"{b8_hand:.1f} img/s (in-process batch 8)", f"{c8_hand.rps / b8_hand:.2f}x",
                 ""))  # fmt: skip
    rows.append(("c=8 p50 / p99 latency (auto)", f"{c8_auto.p50_ms:.1f} / {c8_auto.p99_ms:.1f} ms",
                 "", "", ""))  # fmt: skip

    overheads, hand_overheads, hand_c1 = [], [], []
    for _ in range(args.rounds):
        bn = base_noop()
        res, _, _ = run("noop@production", "auto", spin_mode, 1, dur)
        hres = hand("noop@production")
        bn = min(bn, base_noop())
        print(f"no-op: server p50 {res.p50_ms:.3f} ms, hand-written {hres.p50_ms:.3f} ms, "
              f"in-process {bn:.3f} ms", flush=True)  # fmt: skip
        overheads.append((res.p50_ms - bn, res, bn))
        hand_overheads.append((hres.p50_ms - bn, hres, bn))
        b1h = base_c1()
        hres = hand("det@production")
        b1h = min(b1h, base_c1())
        print(f"hand-written c=1: p50 {hres.p50_ms:.2f} ms, in-process {b1h:.2f} ms", flush=True)
        hand_c1.append((hres.p50_ms / b1h, hres, b1h))
    overhead, noop, base_noop_ms = min(overheads, key=lambda o: o[0])
    rows.append(("no-op graph c=1 p50", f"{noop.p50_ms:.3f} ms", f"{base_noop_ms:.3f} ms",
                 f"+{overhead:.3f} ms", _verdict(overhead <= 1.0, "overhead <= 1 ms")))  # fmt: skip
    h_over, h_noop, h_base = min(hand_overheads, key=lambda o: o[0])
    rows.append(("  hand-written FastAPI, no-op (info)", f"{h_noop.p50_ms:.3f} ms",
                 f"{h_base:.3f} ms", f"+{h_over:.3f} ms", ""))  # fmt: skip
    h_ratio, h_c1, h_b1 = min(hand_c1, key=lambda o: o[0])
    rows.insert(1, ("  hand-written FastAPI, c=1 (info)", f"{h_c1.p50_ms:.2f} ms",
                    f"{h_b1:.2f} ms (in-process)", f"{h_ratio:.2f}x", ""))  # fmt: skip

    # RSS growth: the no-op model at c=8, so 20,000 requests take seconds, not minutes
    n_small, n_big = (int(x) for x in args.rss_requests.split(","))
    srv = ServerProcess(root, "noop@production", policy="auto", spinning=spin_mode, log=log)
    try:
        probe = wrk(srv.url, lua, image, conns=8, seconds=2)
        load_n(srv.url, lua, image, 8, n_small - probe.requests, probe.rps)
        done_small = srv.metric("detops_decode_seconds_count")
        rss_small = srv.rss_mb()
        while srv.metric("detops_decode_seconds_count") < n_big:
            left = n_big - srv.metric("detops_decode_seconds_count")
            load_n(srv.url, lua, image, 8, int(left), probe.rps)
        done_big = srv.metric("detops_decode_seconds_count")
        rss_big = srv.rss_mb()
        written = srv.metric('detops_prediction_log_records_total{outcome="written"}')
        dropped = srv.metric('detops_prediction_log_records_total{outcome="dropped')
    finally:
        srv.stop()
    growth = rss_big / rss_small - 1
    rows.append((f"RSS after {done_big:.0f} vs {done_small:.0f} requests",
                 f"{rss_big:.1f} MB", f"{rss_small:.1f} MB", f"{growth * 100:+.1f}%",
                 _verdict(growth <= 0.05, "<= +5%")))  # fmt: skip
    rows.append(("prediction log (RSS run)", f"{written:.0f} written", f"{dropped:.0f} dropped",
                 "", ""))  # fmt: skip
    rows.append(("ORT spinning (c=1 measure)", spin_mode,
                 f"false: p50 {off[0].p50_ms:.2f} ms, {off[1]:.2f} CPU-ms/req; "
                 f"alone: p50 {on[0].p50_ms:.2f} ms, {on[1]:.2f} CPU-ms/req", "", ""))  # fmt: skip
    errors = sum(x.errors for x in (c1, c8_auto, c8_off, c8_wait, c8_one, noop))
    rows.append(("non-2xx / socket errors (all runs)", str(errors), "", "",
                 _verdict(errors == 0, "0")))  # fmt: skip

    print()
    print(f"detops serve, {args.model} detector {args.size}x{args.size} ({args.classes} classes, "
          f"random weights), {os.cpu_count()} cores, wrk -t1, prediction log on, "
          f"{dur:.0f} s per load, best of {args.rounds} alternating rounds; load average "
          f"before/after {load_before} / {os.getloadavg()[0]:.2f}")  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    head = ("measure", "detops serve", "baseline", "ratio", "target")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    for r in (head, *rows):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    if args.json:
        results["rows"] = rows
        args.json.write_text(json.dumps(results, indent=2, default=str))
    ws.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _verdict(ok: bool, target: str) -> str:
    return f"{target} {'PASS' if ok else 'FAIL'}"


if __name__ == "__main__":
    main()
