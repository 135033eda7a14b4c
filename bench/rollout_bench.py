"""Rollouts under real HTTP load: rollback decision-to-effect time, live latency with shadow on,
failed requests during switches.

    python bench/rollout_bench.py                  # about 2 minutes on 2 cores
    python bench/rollout_bench.py --seconds 5 --rollbacks 3   # quicker, rougher

Servers are ``detops serve --deployment prod`` subprocesses sharing one SQLite store, with the
default rollout settings (``rollout.poll_s`` 0.25 s, ``rollout.tick_s`` 0.5 s); clients are
threads of this process using httpx. The model is a small convolutional detector built here in
ONNX (about 5-10 ms per 320x320 image on these cores, random weights: the cost, not the answers,
matters here).

(a) Decision-to-effect of an automatic rollback, on the replica that decided and on the other:
    a candidate that detects nothing is given 50% of clients; on each replica a client sends, back
    to back, requests whose ``X-Client-Key`` routes to the candidate. The effect is the first such
    request sent after the decision event's time that live answered, after which no request went
    to the candidate; the number is its send time minus the decision's time.
(b) Live p50/p99 latency, without and with the candidate in shadow at sample 1.0, at a fixed
    request rate (``--rate``, open loop) that leaves the 2 cores capacity; the two sides alternate
    for ``--rounds`` rounds.
(c) Failed client requests (any non-200 answer or transport error) while 4 closed-loop clients
    hammer the server through: a blue-green switch and a switch back, a canary promoted by hand,
    a canary rolled back by hand, and an automatic rollback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from _common import clean_env, constant_graph, free_port, stop_process
from PIL import Image

TOKEN = "bench"
AUTH = {"authorization": f"Bearer {TOKEN}"}
SIZE = 320
CLASSES = ["a", "b", "c"]


# -- models -----------------------------------------------------------------------------------


def conv_detector(seed: int, widths=(16, 32, 64, 64)) -> bytes:
    """Strided 3x3 convolutions + ReLU, global pooling, one box whose size follows the image."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, cin = "images", 3
    for i, cout in enumerate(widths):
        w = (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(cin * 9)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], strides=[2, 2], pads=[1] * 4)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        x, cin = f"r{i}", cout
    nodes += [
        helper.make_node("ReduceMean", [x], ["m"], axes=[1, 2, 3], keepdims=0),  # [B]
        helper.make_node("Unsqueeze", ["m", "axis1"], ["m1"]),
        helper.make_node("Mul", ["m1", "kgain"], ["mg"]),
        helper.make_node("Add", ["mg", "koff"], ["s"]),
        helper.make_node("Mul", ["s", "k0"], ["zero"]),
        helper.make_node("Add", ["zero", "kscore"], ["sc"]),
        helper.make_node("Concat", ["zero", "zero", "s", "s", "sc", "zero"], ["row"], axis=1),
        helper.make_node("Unsqueeze", ["row", "axis1"], ["detections"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(100.0, np.float32), "kgain"),
        numpy_helper.from_array(np.array(40.0, np.float32), "koff"),
        numpy_helper.from_array(np.array(0.0, np.float32), "k0"),
        numpy_helper.from_array(np.array(0.9, np.float32), "kscore"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["B", 1, 6])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def blind_detector() -> bytes:
    """Detects nothing (a zero-score row): rolled back by the no-detection gate."""
    return constant_graph([0.0] * 6, SIZE, "blind")


def photo_jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# -- servers ----------------------------------------------------------------------------------


@dataclass
class Replica:
    proc: subprocess.Popen[bytes]
    url: str
    client: httpx.Client

    def status(self) -> dict:
        return self.client.get("/admin/deployments/prod", headers=AUTH).json()

    def stop(self) -> None:
        self.client.close()
        stop_process(self.proc)


def start_replicas(root: Path, n: int, env_extra: dict[str, str] | None = None) -> list[Replica]:
    env = clean_env()
    env.update({"DETOPS_SERVE_TOKEN": TOKEN, **(env_extra or {})})
    reps = []
    for _ in range(n):
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "detops", "serve", "-w", str(root), "--deployment", "prod",
             "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        reps.append(Replica(proc, url, httpx.Client(base_url=url, timeout=30)))
    for r in reps:
        wait(lambda r=r: _ready(r), 120, "a replica to be ready")
    return reps


def _ready(r: Replica) -> bool:
    if r.proc.poll() is not None:
        raise SystemExit(f"replica exited with {r.proc.returncode}")
    try:
        return r.client.get("/readyz").status_code == 200
    except httpx.TransportError:
        return False


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def loaded(r: Replica, key: str) -> bool:
    return key in (r.status().get("replica") or {}).get("loaded", [])


# -- clients ----------------------------------------------------------------------------------


@dataclass
class Answer:
    sent: float
    latency: float
    status: int  # 0: transport error
    reason: str | None


class Clients:
    """Closed-loop client threads (each posts back to back) recording every answer."""

    def __init__(self, url: str, images: list[bytes], keys: list[str | None], threads: int):
        self.url, self.images, self.keys = url, images, keys
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def __enter__(self) -> Clients:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, i: int) -> None:
        n = i
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                key = self.keys[n % len(self.keys)]
                headers = {"content-type": "image/jpeg"}
                if key:
                    headers["x-client-key"] = key
                t0 = time.time()
                try:
                    r = c.post("/v1/detect", content=self.images[n % len(self.images)],
                               headers=headers)  # fmt: skip
                    status = r.status_code
                    reason = r.json().get("route", {}).get("reason") if status == 200 else None
                except httpx.HTTPError:
                    status, reason = 0, None
                with self._lock:
                    self.answers.append(Answer(t0, time.time() - t0, status, reason))
                n += 1


def open_loop(url: str, images: list[bytes], rate: float, seconds: float) -> np.ndarray:
    """Requests at a fixed rate (not waiting for answers); latencies in ms."""
    n = int(rate * seconds)
    start = time.perf_counter() + 0.2
    lat = np.full(n, np.nan)
    nxt = [0]
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            while True:
                with lock:
                    i = nxt[0]
                    nxt[0] += 1
                if i >= n:
                    return
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.perf_counter()
                r = c.post("/v1/detect", content=images[i % len(images)],
                           headers={"content-type": "image/jpeg"})  # fmt: skip
                if r.status_code == 200:
                    lat[i] = (time.perf_counter() - t0) * 1e3

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat[~np.isnan(lat)]


# -- the three measurements -----------------------------------------------------------------


def canary_keys(share: float, n: int, want_canary: bool) -> list[str]:
    from detops.serve.routing import client_unit

    keys = []
    i = 0
    while len(keys) < n:
        k = f"client-{i}"
        if (client_unit(k) < share) == want_canary:
            keys.append(k)
        i += 1
    return keys


def decision_to_effect(ws, root: Path, images: list[bytes], rollbacks: int) -> dict:
    from detops.serve import deployments as deps

    reps = start_replicas(root, 2)
    to_canary = canary_keys(0.5, 20, True)
    to_live = canary_keys(0.5, 20, False)
    gates = {"min_samples": 30, "latency_p95": {"enabled": False}}
    deciding, other = [], []
    try:
        for i in range(rollbacks):
            dep = deps.start_canary(ws, "prod", "v2", steps="50,100", min_requests=10**6,
                                    min_seconds=3600, gates=gates, actor="human:bench")  # fmt: skip
            for r in reps:
                wait(lambda r=r: loaded(r, "det@v2/serve"), 60, "the candidate to load")
            clients = [Clients(r.url, images, to_canary, 1) for r in reps]
            clients += [Clients(r.url, images, to_live, 1) for r in reps]
            for c in clients:
                c.__enter__()
            try:
                wait(lambda: deps.get(ws, "prod").state == "rolled_back", 120, "the rollback")
                time.sleep(1.5)
            finally:
                for c in clients:
                    c.__exit__()
            event = deps.history(ws, "prod")[-1]
            assert event["decision"] == "rollback" and event["revision"] > dep.revision
            decided = dt.datetime.fromisoformat(event["at"]).timestamp()
            holder = event["actor"].removeprefix("controller:")
            for r, c in zip(reps, clients[:2], strict=True):
                effect = _effect(c.answers, decided)
                is_decider = r.status()["replica"]["replica"] == holder
                (deciding if is_decider else other).append(effect)
            print(f"  rollback {i + 1}: {event['reason'][:80]}", file=sys.stderr)
    finally:
        for r in reps:
            r.stop()
    return {"deciding": deciding, "other": other}


def _effect(answers: list[Answer], decided: float) -> float:
    """Seconds from the decision to the first request after which live answered every one."""
    answers = sorted(answers, key=lambda a: a.sent)
    last_canary = max((a.sent for a in answers if a.reason == "canary"), default=decided)
    first_live = min(a.sent for a in answers if a.reason == "live" and a.sent > last_canary)
    return max(first_live, decided) - decided


def shadow_latency(ws, root: Path, images: list[bytes], rate: float, seconds: float,
                   rounds: int) -> dict:  # fmt: skip
    from detops.serve import deployments as deps

    [rep] = start_replicas(root, 1)
    out: dict[str, list[np.ndarray]] = {"live only": [], "shadow 1.0": []}
    shed: dict = {}
    try:
        open_loop(rep.url, images, rate, 2.0)  # warm up
        for _ in range(rounds):
            for mode in ("live only", "shadow 1.0"):
                if mode == "shadow 1.0":
                    deps.start_shadow(ws, "prod", "v3", sample=1.0, actor="human:bench")
                    wait(lambda: loaded(rep, "det@v3/shadow"), 60, "the shadow copy")
                else:
                    try:
                        deps.rollback(ws, "prod", actor="human:bench")
                    except Exception:
                        pass  # nothing to roll back on the first round
                    wait(lambda: rep.status()["replica"]["plan"]["mode"] == "live", 10, "live")
                out[mode].append(open_loop(rep.url, images, rate, seconds))
        shed = rep.status()["replica"]["shadow"]
    finally:
        rep.stop()
    return {"latencies": out, "shadow_counts": shed}


def switch_failures(ws, root: Path, images: list[bytes]) -> list[tuple[str, int, int]]:
    from detops.serve import deployments as deps

    [rep] = start_replicas(root, 1)
    rows = []
    hold = {"min_requests": 10**6, "min_seconds": 3600}

    def phase(name: str, action: Callable[[], None]) -> None:
        with Clients(rep.url, images, [f"k{i}" for i in range(50)], 4) as c:
            time.sleep(0.5)
            action()
            time.sleep(1.5)
        failed = sum(1 for a in c.answers if a.status != 200)
        rows.append((name, len(c.answers), failed))

    def post(path: str, **body: object) -> None:
        r = rep.client.post(f"/admin/deployments/prod/{path}", headers=AUTH, json=body or None)
        r.raise_for_status()

    try:
        deps.start_bluegreen(ws, "prod", "v3", actor="human:bench")
        wait(lambda: loaded(rep, "det@v3/serve"), 60, "green")
        phase("blue-green switch", lambda: post("promote"))
        phase("blue-green switch back", lambda: post("rollback"))
        deps.start_canary(ws, "prod", "v3", steps="50,100", actor="human:bench", **hold)
        wait(lambda: loaded(rep, "det@v3/serve"), 60, "the canary")
        phase("canary promoted by hand", lambda: post("promote"))
        deps.start_canary(ws, "prod", "v1", steps="50,100", actor="human:bench", **hold)
        wait(lambda: loaded(rep, "det@v1/serve"), 60, "the canary")
        phase("canary rolled back by hand", lambda: post("rollback"))
        gates = {"min_samples": 30, "latency_p95": {"enabled": False}}
        deps.start_canary(
            ws, "prod", "v2", steps="50,100", gates=gates, actor="human:bench", **hold
        )
        wait(lambda: loaded(rep, "det@v2/serve"), 60, "the canary")

        def auto() -> None:
            wait(lambda: deps.get(ws, "prod").state == "rolled_back", 60, "the rollback")

        phase("automatic rollback", auto)
    finally:
        rep.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rollbacks", type=int, default=5, help="automatic rollbacks timed in (a)")
    ap.add_argument("--rate", type=float, default=25.0, help="requests per second in (b)")
    ap.add_argument("--seconds", type=float, default=10.0, help="seconds per side and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--parts", default="abc", help="which measurements to run, e.g. b")
    args = ap.parse_args()

    from detops.model.registry import register_model, set_alias
    from detops.serve import deployments as deps
    from detops.workspace import Workspace, init_workspace

    spec = {"class_names": CLASSES, "input_width": SIZE, "input_height": SIZE}
    images = [photo_jpeg(i) for i in range(8)]
    with tempfile.TemporaryDirectory(prefix="rollout-bench-") as tmp:
        root = init_workspace(Path(tmp) / "ws")
        ws = Workspace(root)
        register_model(ws, "det", conv_detector(0), spec)  # v1: live
        register_model(ws, "det", blind_detector(), spec)  # v2: rolled back
        register_model(ws, "det", conv_detector(1), spec)  # v3: healthy, same cost as live
        set_alias(ws, "det@v1", "production")
        deps.create(ws, "prod", "det@production", actor="human:bench")

        effect = lat = switches = None
        if "a" in args.parts:
            print("(a) rollback decision-to-effect ...", file=sys.stderr)
            effect = decision_to_effect(ws, root, images, args.rollbacks)
        if "b" in args.parts:
            print("(b) live latency with and without shadow ...", file=sys.stderr)
            lat = shadow_latency(ws, root, images, args.rate, args.seconds, args.rounds)
        if "c" in args.parts:
            print("(c) failed requests during switches ...", file=sys.stderr)
            switches = switch_failures(ws, root, images)
        ws.close()

    load = os.getloadavg()
    print(f"\nrollout bench: {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f}; "
          "rollout.poll_s 0.25, rollout.tick_s 0.5 (defaults)\n")  # fmt: skip
    if effect is not None:
        print("(a) rollback: decision -> first request answered by live only (seconds)")
        print(f"    {'replica':<22}{'n':>4}{'median':>10}{'max':>10}")
        for name, key in (("deciding replica", "deciding"), ("other replica", "other")):
            v = np.array(effect[key])
            if v.size:
                print(f"    {name:<22}{v.size:>4}{np.median(v):>10.3f}{v.max():>10.3f}")
    if lat is not None:
        print(f"\n(b) live latency at {args.rate:g} requests/s (open loop), "
              f"{args.rounds} x {args.seconds:g} s per side, alternating (ms)")  # fmt: skip
        print(f"    {'':<14}{'n':>6}{'p50':>9}{'p99':>9}   p99 of each round")
        p99 = {}
        for mode, rounds in lat["latencies"].items():
            v = np.concatenate(rounds)
            p99[mode] = float(np.percentile(v, 99))
            each = " ".join(f"{np.percentile(r, 99):.1f}" for r in rounds)
            print(
                f"    {mode:<14}{v.size:>6}{np.percentile(v, 50):>9.2f}{p99[mode]:>9.2f}   {each}"
            )
        rise = p99["shadow 1.0"] / p99["live only"] - 1
        print(f"    p99 with shadow / without: {rise:+.1%} (target <= +5%); shadow copies: "
              f"{lat['shadow_counts']}")  # fmt: skip
    if switches is not None:
        print("\n(c) failed client requests while 4 clients hammer the server")
        print(f"    {'switch':<30}{'requests':>10}{'failed':>8}")
        for name, n, failed in switches:
            print(f"    {name:<30}{n:>10}{failed:>8}")


if __name__ == "__main__":
    main()
