"""Shadow mode: the candidate answers a copy of live requests, off the critical path.

The live answer goes to the client as usual; the request's already pre-processed tensor (or,
when the candidate prepares pixels differently, its bytes) is offered to a :class:`ShadowRunner`:
a bounded queue and its own worker threads (``rollout.shadow_concurrency``, niced, running a
copy of the candidate loaded with ``rollout.shadow_threads`` ONNX Runtime threads), so shadow
work never holds up live requests. Shadow work is shed first: when the queue is full, or the
live model has requests waiting, the copy is dropped and counted
(``detops_shadow_requests_total{outcome="shed_busy|shed_full"}``). The candidate's output never
reaches a client.

Each shadowed request leaves a prediction-log record (``route = "shadow"``, the candidate's
version and latency) and a row in ``shadow_comparisons``: box-level agreement with live
(:func:`compare`: IoU-matched F1 at 0.5, same class), both mean scores, the class-mix distance,
both latencies and any error.

>>> import numpy as np
>>> from detops.model.detections import Detections
>>> live = Detections(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32),
...                   np.array([0.9, 0.8], np.float32), np.array([0, 1]))
>>> cand = Detections(np.array([[1, 1, 10, 10]], np.float32), np.array([0.7], np.float32),
...                   np.array([0]))
>>> c = compare(live, cand, ["cat", "dog"], ["cat", "dog"])
>>> c["f1"], c["n_matched"], round(c["class_tvd"], 2)
(0.6667, 1, 0.5)
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger("detops.serve.shadow")

__all__ = ["ShadowRunner", "ShadowTicket", "compare", "same_input"]

_INPUT_FIELDS = (
    "input_width",
    "input_height",
    "resize",
    "pad_value",
    "scale",
    "mean",
    "std",
    "channel_order",
    "layout",
)


def same_input(a: Any, b: Any) -> bool:
    """Two specs prepare pixels identically (the live tensor can feed the candidate)."""
    return all(getattr(a, f) == getattr(b, f) for f in _INPUT_FIELDS)


def _names(labels: np.ndarray, names: Sequence[str]) -> list[str]:
    return [names[i] if 0 <= i < len(names) else str(i) for i in labels.tolist()]


def compare(
    live: Any,
    candidate: Any,
    live_names: Sequence[str],
    candidate_names: Sequence[str],
    iou: float = 0.5,
) -> dict[str, Any]:
    """Agreement of two :class:`~detops.model.detections.Detections` of the same image.

    Candidate boxes, by descending score, each take the unmatched live box of the same class
    name with the highest IoU >= ``iou``. ``f1 = 2 * matched / (n_live + n_candidate)`` (1.0
    when both are empty); ``class_tvd`` is the total variation distance of the two class mixes
    (None when exactly one side has boxes: the mixes are not comparable, the F1 says it).
    """
    ln, cn = _names(live.labels, live_names), _names(candidate.labels, candidate_names)
    # the evaluator's IoU, imported here so that serving does not load detops.evaluate
    from detops.evaluate.matching import iou_matrix_xyxy

    ious = iou_matrix_xyxy(candidate.boxes.astype(np.float64), live.boxes.astype(np.float64))
    used = np.zeros(len(ln), bool)
    matched = 0
    for d in np.argsort(-candidate.scores, kind="stable"):
        ok = ~used & (ious[d] >= iou) & np.array([x == cn[d] for x in ln], bool)
        if ok.any():
            g = int(np.flatnonzero(ok)[np.argmax(ious[d, ok])])
            used[g] = True
            matched += 1
    n_l, n_c = len(ln), len(cn)
    f1 = 1.0 if n_l + n_c == 0 else 2 * matched / (n_l + n_c)
    tvd: float | None
    if n_l and n_c:
        labels = sorted(set(ln) | set(cn))
        pl = np.array([ln.count(k) for k in labels], np.float64) / n_l
        pc = np.array([cn.count(k) for k in labels], np.float64) / n_c
        tvd = 0.5 * float(np.abs(pl - pc).sum())
    else:
        tvd = 0.0 if n_l == n_c == 0 else None
    return {
        "f1": round(f1, 4),
        "n_live": n_l,
        "n_candidate": n_c,
        "n_matched": matched,
        "live_mean_score": float(live.scores.mean()) if n_l else None,
        "candidate_mean_score": float(candidate.scores.mean()) if n_c else None,
        "class_tvd": tvd,
    }


@dataclass(slots=True)
class _Job:
    plan: Any  # RoutePlan
    data: bytes
    prep: Any  # service.Prepared (tensor, transform, features)
    live_det: Any
    live_names: Sequence[str]
    live_spec: Any
    live_version: int
    request_id: str
    live_ms: float


class ShadowTicket:
    """Handed out by the router with a request that is to be shadowed."""

    __slots__ = ("plan", "runner")

    def __init__(self, runner: ShadowRunner, plan: Any) -> None:
        self.runner = runner
        self.plan = plan

    def offer(
        self, route: Any, data: bytes, prep: Any, detections: Any, request_id: str, live_ms: float
    ) -> bool:
        """Queue the shadow copy (never blocks, never raises); False if it was not queued."""
        try:
            return self.runner.offer(self.plan, route, data, prep, detections, request_id, live_ms)
        except Exception as e:  # shadow trouble must never fail the live request
            log.warning("shadow offer for %s failed: %s", request_id, e)
            self.runner._count("error")
            return False


class ShadowRunner:
    """Bounded queue + niced worker threads running the shadow candidate (module docstring)."""

    def __init__(
        self,
        host: Any,
        log_sink: Any = None,
        metrics: Any = None,
        *,
        concurrency: int = 1,
        max_queue: int = 8,
        nice: int = 10,
    ) -> None:
        self.host = host
        self.log = log_sink  # a PredictionLog
        self.metrics = metrics
        self.concurrency = concurrency
        self.nice = nice
        self._q: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, max_queue))
        self._threads: list[threading.Thread] = []
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._accepted = 0  # copies queued, and of them finished (run and recorded, or failed)
        self._finished = 0
        self.recorded = 0  # comparisons handed to the prediction log (which writes them later)

    def ticket(self, plan: Any) -> ShadowTicket:
        return ShadowTicket(self, plan)

    def _count(self, outcome: str) -> None:
        with self._lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self.metrics is not None:
            self.metrics.shadow_requests.labels(outcome).inc()

    @property
    def idle(self) -> bool:
        """Every queued copy has been run and handed to the log (or failed)."""
        with self._lock:
            return self._finished >= self._accepted

    def offer(
        self,
        plan: Any,
        route: Any,
        data: bytes,
        prep: Any,
        detections: Any,
        request_id: str,
        live_ms: float,
    ) -> bool:
        lm = route.model
        if lm.batcher.depth > 0:  # live has requests waiting: shadow work goes first
            self._count("shed_busy")
            return False
        job = _Job(
            plan,
            data,
            prep,
            detections,
            lm.runtime.spec.class_names,
            lm.runtime.spec,
            lm.version,
            request_id,
            live_ms,
        )
        with self._lock:  # before the put: a worker may finish the job before we go on
            self._accepted += 1
        try:
            self._q.put_nowait(job)
        except queue.Full:
            with self._lock:
                self._accepted -= 1
            self._count("shed_full")
            return False
        return True

    # -- workers ------------------------------------------------------------------------------

    def start(self) -> ShadowRunner:
        for i in range(self.concurrency):
            t = threading.Thread(target=self._run, name=f"shadow-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            try:
                self._q.put(None, timeout=timeout)
            except queue.Full:
                break
        for t in self._threads:
            t.join(timeout)
        self._threads = []

    def _run(self) -> None:
        if self.nice:
            try:  # Linux: niceness is per thread; shadow work yields the CPU to live requests
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.nice)
            except (AttributeError, OSError):
                pass
        while True:
            job = self._q.get()
            if job is None:
                return
            try:
                self._work(job)
            except Exception as e:  # one bad job must not stop the worker
                log.warning("shadow request %s failed: %s", job.request_id, e)
                self._count("error")
            finally:
                with self._lock:
                    self._finished += 1

    def _work(self, job: _Job) -> None:
        p = job.plan
        lm = self.host.acquire_version(p.name, p.candidate, "shadow")
        if lm is None:
            self._count("not_loaded")
            return
        t0 = time.perf_counter()
        cand = None
        error = None
        try:
            rt = lm.runtime
            if same_input(job.live_spec, rt.spec):
                tensor, transform = job.prep.tensor, job.prep.transform
            else:
                tensor, transforms = rt.preprocess([rt.decode_image(job.data)])
                transform = transforms[0]
            cand = rt.postprocess(rt.infer(tensor), [transform])[0]
            names = rt.spec.class_names
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:1000]
            names = []
        finally:
            self.host.release(lm)
        ms = (time.perf_counter() - t0) * 1e3
        self._count("error" if error else "compared")
        self._record(job, lm, cand, names, ms, error)

    def _record(
        self,
        job: _Job,
        lm: Any,
        cand: Any,
        names: Sequence[str],
        ms: float,
        error: str | None,
    ) -> None:
        if self.log is None:
            return
        now = dt.datetime.now(dt.UTC)
        f = job.prep.take_features()
        rec: dict[str, Any] = {
            "request_id": job.request_id[:64],
            "at": now,
            "model_name": lm.name,
            "model_version": lm.version,
            "route": "shadow",
            "status": 500 if error else 200,
            "latency_ms": ms,
            "timings": None,
            "bytes": len(job.data),
            "format": None,
            "error": None if error is None else f"model_error: {error}",
            "width": f.width,
            "height": f.height,
            "brightness": f.brightness,
            "contrast": f.contrast,
            "sharpness": f.sharpness,
            "n_boxes": None,
            "max_score": None,
            "mean_score": None,
            "class_counts": None,
        }
        comparison: dict[str, Any] = {
            "request_id": job.request_id[:64],
            "at": now,
            "deployment": job.plan.deployment or None,
            "model_name": lm.name,
            "live_version": job.live_version,
            "candidate_version": lm.version,
            "live_latency_ms": job.live_ms,
            "candidate_latency_ms": ms,
            "error": error,
            "f1": None,
            "n_live": len(job.live_det),
            "n_candidate": None,
            "n_matched": None,
            "live_mean_score": None,
            "candidate_mean_score": None,
            "class_tvd": None,
        }
        if cand is not None:
            labels = _names(cand.labels, names)
            counts: dict[str, int] = {}
            for k in labels:
                counts[k] = counts.get(k, 0) + 1
            scores = cand.scores
            rec.update(
                n_boxes=len(cand),
                max_score=float(scores.max()) if len(cand) else None,
                mean_score=float(scores.mean()) if len(cand) else None,
                class_counts=counts,
            )
            comparison.update(compare(job.live_det, cand, job.live_names, names))
        rec["_comparison"] = comparison
        if self.log.record(rec):
            with self._lock:
                self.recorded += 1
