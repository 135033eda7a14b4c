"""The request pipeline behind the HTTP routes, independent of FastAPI.

``bytes -> (thread pool) decode + features + pre-process -> router -> batcher(version)
-> post-process -> response dict``, and one prediction-log record per image. Every refusal is
an :class:`HTTPProblem` carrying its status, a machine-readable code and a message that names
the problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detops.config import ServeSettings
from detops.errors import (
    CostlyImage,
    DeadlineExceeded,
    ImageDecodeError,
    ImageTooLarge,
    ModelError,
    Overloaded,
    ServeError,
)
from detops.monitor.features import ImageFeatures, image_features
from detops.serve.automation import Automation
from detops.serve.batching import Batcher, BatchResult
from detops.serve.metrics import ServeMetrics
from detops.serve.models import ModelHost, NotReady
from detops.serve.predlog import PredictionLog
from detops.serve.review import ReviewQueue
from detops.serve.routing import Route, Router
from detops.serve.tensors import TensorPool
from detops.store.db import utcnow

logger = logging.getLogger("detops.serve")

MEDIA_TYPES = {"image/jpeg": "jpeg", "image/png": "png", "image/webp": "webp", "image/bmp": "bmp"}
MEDIA_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/x-ms-bmp": "image/bmp",
    "image/x-bmp": "image/bmp",
}


class HTTPProblem(ServeError):
    """A refusal: HTTP ``status``, ``code`` (the metrics reason) and a message."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}


def sniff_format(data: bytes) -> str | None:
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:2] == b"BM":
        return "bmp"
    return None


def problem_from(exc: BaseException) -> HTTPProblem:
    """The HTTP refusal for an exception raised while serving a request."""
    if isinstance(exc, HTTPProblem):
        return exc
    if isinstance(exc, ImageTooLarge):
        return HTTPProblem(413, "too_many_pixels", str(exc))
    if isinstance(exc, ImageDecodeError):
        return HTTPProblem(400, "bad_image", str(exc))
    if isinstance(exc, Overloaded):
        return HTTPProblem(
            503, "overloaded", str(exc), {"Retry-After": str(max(1, round(exc.retry_after_s)))}
        )
    if isinstance(exc, DeadlineExceeded):
        return HTTPProblem(504, "timeout", str(exc))
    if isinstance(exc, NotReady):
        return HTTPProblem(503, "not_ready", str(exc), {"Retry-After": "1"})
    if isinstance(exc, ModelError):
        return HTTPProblem(500, "model_error", str(exc))
    return HTTPProblem(500, "model_error", f"internal error: {type(exc).__name__}: {exc}")


@dataclass(slots=True)
class Prepared:
    tensor: np.ndarray
    transform: Any
    features: ImageFeatures | None  # None until computed (see _prepare's ``inline``)
    decode_s: float  # decode + pre-processing (+ the features, in the pool)
    result: BatchResult | None = None  # set when the model was idle and ran right away
    image: np.ndarray | None = None  # the decoded image, kept until its features are taken
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def take_features(self) -> ImageFeatures:
        """The input features, computed now from ``image`` if they were left for later: once,
        whichever of two threads asks first (the event loop before the model runs, a
        prediction-log record, a shadow run); the other waits for them."""
        if self.features is None:
            with self._lock:
                if self.features is None:
                    assert self.image is not None
                    self.features = image_features(self.image)
                    self.image = None
        return self.features


# A request that has the server to itself is decoded and pre-processed on the event loop's own
# thread instead of a pool thread, when its image is at most this large (a 1080p frame decodes
# in ~10-15 ms, the longest the loop is then busy before reading the next request); the model
# still runs in the pool unless it is quick (INLINE_RUN_MAX_S), so a slow model never holds the
# loop. Why: handed to a pool thread,
# decode + features + pre-processing took 1.8 + 0.4 + 0.56 ms of that thread's CPU time against
# 1.3 + 0.35 + 0.53 ms on the loop's thread or in a plain loop (1,000 sequential requests,
# no-op model, this 2-vCPU VM; CPU time equal to wall time, so no lock waits): the thread that
# wakes for the work runs it on cold caches. Pinning the whole server to one core removed the
# difference too. Under wrk at c=1 (no-op model, best of 3 alternating rounds): p50 4.17 ms
# decoding in the pool, 3.51 ms decoding on the loop (3.33 ms with the model on the loop too).
INLINE_MAX_PIXELS = 1920 * 1088
INLINE_MAX_BYTES = 4 << 20

# A request alone on the server whose model runs a single image in at most this long (the
# batcher's running mean, ``Batcher.direct_run_s``) runs it on the event loop's thread as well,
# its input features left to its prediction-log record after the response: handing such a run
# to the pool and back costs more than the run. The loop is then held about this long, less
# than a decode on it. Measured under wrk against the model always in the pool (no-op graph,
# alternating rounds of 3 s, server code trees): at c=1, p50 1.98 against 2.41 ms, mean 2.13
# against 2.51 ms, p99 5.4 against 5.9 ms (8 rounds; an earlier form without the yield
# below: p50 1.39-1.80 against 2.04-2.16 ms in three runs); at c=8, 605 against 603 req/s.
# A slower model (the default detector: ~7 ms) keeps the pool, so that the loop goes on
# reading other requests and firing timeouts while it runs.
INLINE_RUN_MAX_S = 0.001

# the longest a sent response's deferred work waits for an idle moment (see Service.defer)
DEFER_S = 0.005


def _prepare(
    runtime: Any,
    batcher: Batcher | None,
    data: bytes,
    inline: bool = False,
    tensors: TensorPool | None = None,
) -> Prepared:
    """Decode, pre-process, features; with a ``batcher``, run now if the model is idle.
    ``inline``: on the event loop, so refuse (ImageTooLarge / CostlyImage, before decoding) an
    image above INLINE_MAX_PIXELS or one whose decode time its size does not bound; the
    features are then left to the caller (``prep.image`` kept), which takes them on the loop
    just before handing the model to the pool, or leaves them to the record when a quick model
    ran on the loop (see ``Service.detect``)."""
    t0 = time.perf_counter()
    img = (
        runtime.decode_image(data, INLINE_MAX_PIXELS, predictable_only=True)
        if inline
        else runtime.decode_image(data)
    )
    # in the pool, the tensor goes in a recycled slot (see detops.serve.tensors); a lone
    # request on the loop allocates its own: with the pool there, its c=1 p50 read 0.1-0.2 ms
    # higher in 3 of 3 alternating rounds, and one request at a time fragments nothing
    take = None if inline or tensors is None else tensors.take
    tensor, transforms = runtime.preprocess([img], allocate=take)
    if inline:  # the features later (Prepared.take_features)
        return Prepared(tensor, transforms[0], None, time.perf_counter() - t0, image=img)
    prep = Prepared(tensor, transforms[0], image_features(img), time.perf_counter() - t0)
    if batcher is not None:
        prep.result = batcher.try_direct(tensor)
    return prep


def _quick(batcher: Batcher) -> bool:
    """Whether ``batcher``'s model runs an image within ``INLINE_RUN_MAX_S`` (as measured)."""
    run_s = batcher.direct_run_s
    return run_s is not None and run_s <= INLINE_RUN_MAX_S


def pool_threads(cores: int) -> int:
    """Threads of a server's decode pool. The pool decodes and pre-processes, and a request
    that finds a lane idle runs the model on its pool thread too (``Batcher.try_direct``), so
    with one thread per core every thread could sit in a model run while new requests waited
    to be decoded and the batcher's own lanes had nothing queued. Two threads a core keep
    decoding going beside the lanes: at c=8 on 2 cores (default detector, wrk, 10 s each side
    by side) the server used 174-176% CPU and answered 105-110 req/s with 2 threads, 192-194%
    and 120-121 req/s with 4 or 8; the same machine's hand-written FastAPI server (six default
    executor threads) 195% and 124-126 req/s. At most 32, as ``ThreadPoolExecutor``'s own
    default: each thread can hold one decoded image of up to ``max_image_pixels``."""
    return min(32, 2 * max(1, cores))


class Service:
    """Settings, router, prediction log, metrics and the decode pool of one server."""

    def __init__(
        self,
        settings: ServeSettings,
        router: Router,
        *,
        host: ModelHost | None = None,
        log: PredictionLog | None = None,
        metrics: ServeMetrics | None = None,
        decode_threads: int | None = None,
        review: ReviewQueue | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.host = host
        self.log = log
        self.metrics = metrics or ServeMetrics(settings.max_batch_size)
        self.review = review  # None: nothing is queued for review (no store)
        self.automation = Automation.from_settings(settings, on_change=self._level_changed)
        self.pool = ThreadPoolExecutor(
            max_workers=decode_threads or pool_threads(os.cpu_count() or 2),
            thread_name_prefix="decode",
        )
        self.tensors = TensorPool()  # the decode pool's input tensors
        self.timeout_s = settings.timeout_ms / 1000
        # started after the host, stopped before it (a deployment's rollout agent, shadow runner)
        self.background: list[Any] = []
        self.workspace: Any = None  # set by build_service: the store behind the admin endpoints
        self._deferred: list[Callable[[], None]] = []  # see defer
        self._deferred_timer: asyncio.TimerHandle | None = None
        self._deferred_timer_loop: asyncio.AbstractEventLoop | None = None

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self.log is not None:
            self.log.start()
        if self.review is not None:
            self.review.start()
        if self.host is not None:
            self.host.start()
        for part in self.background:
            part.start()

    def stop(self) -> None:
        for part in reversed(self.background):
            part.stop()
        if self.host is not None:
            self.host.stop()
        self.run_deferred()  # the last responses' records, before the log closes
        if self.log is not None:
            self.log.close()
        if self.review is not None:
            self.review.close()
        self.pool.shutdown(wait=True)

    def _level_changed(self, old: str, new: str) -> None:
        self.metrics.automation_level.labels(old).set(0)
        self.metrics.automation_level.labels(new).set(1)

    @property
    def ready(self) -> bool:
        return self.router.ready

    # -- work after a response ------------------------------------------------------------------

    def defer(self, calls: list[Callable[[], None]]) -> None:
        """Run ``calls`` (a sent response's prediction-log record, see ``detect``'s ``after``)
        on this event loop at its next idle moment: when a request next hands work to the pool
        (just before it, or while the pool decodes), else after ``DEFER_S``. Run right after the
        response instead, they held the loop when a client's next request arrived: a client
        that sends one request at a time (wrk at c=1) sends the next as soon as it has the
        answer, and waited for ~150 us of record building (with the features it then held).
        With ``bench/serve_bench.py``'s alternating slices (wrk c=1, default detector, ten
        slices of 4 s): p50 9.74 against 9.92 ms, lower in 8 of 10 slices, level with leaving
        the record out (9.77 ms). Call on the event loop's thread only."""
        if not calls:
            return
        loop = asyncio.get_running_loop()
        if self._deferred_timer is not None and self._deferred_timer_loop is not loop:
            self.run_deferred()  # another loop's (tests): never leave them to a dead loop
        self._deferred.extend(calls)
        if self._deferred_timer is None:
            self._deferred_timer = loop.call_later(DEFER_S, self.run_deferred)
            self._deferred_timer_loop = loop

    def run_deferred(self) -> None:
        """Run the deferred calls now, oldest first. They run inside whichever request (or
        timer) comes next, so one that fails is logged and the rest still run: an earlier
        response's record must not fail a later request."""
        if not self._deferred:
            return  # the common case on the request path: nothing waiting
        if self._deferred_timer is not None:
            self._deferred_timer.cancel()
            self._deferred_timer = None
        calls, self._deferred = self._deferred, []
        for call in calls:
            try:
                call()
            except Exception:
                logger.exception("deferred work after a response failed")

    # -- auth --------------------------------------------------------------------------------

    def check_token(self, authorization: str | None, what: str) -> None:
        token = self.settings.token
        if not token:
            raise HTTPProblem(
                403,
                "forbidden",
                f"{what}: disabled because no token is configured; set serve.token in "
                "detops.yaml or the DETOPS_SERVE_TOKEN environment variable",
            )
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise HTTPProblem(
                401,
                "unauthorized",
                f"{what} needs the header 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPProblem(403, "forbidden", "the bearer token is not valid")

    def authorize(self, authorization: str | None, what: str) -> None:
        """``check_token``, counting a refusal in ``detops_rejections`` (the admin endpoints)."""
        try:
            self.check_token(authorization, what)
        except HTTPProblem as p:
            self.metrics.reject(p.code)
            raise

    def check_detect_token(self, authorization: str | None, what: str) -> None:
        """``check_token`` where ``serve.require_token_for_detect`` is set (the detection
        endpoints, whose callers count the refusal with their other rejections)."""
        if self.settings.require_token_for_detect:
            self.check_token(authorization, what)

    # -- detection -----------------------------------------------------------------------------

    async def detect(
        self,
        data: bytes,
        *,
        request_id: str,
        started: float,
        score_threshold: float | None = None,
        max_detections: int | None = None,
        state: dict[str, Any] | None = None,
        client_key: str | None = None,
        inline: bool = True,
        after: list[Callable[[], None]] | None = None,
    ) -> dict[str, Any]:
        """Detect objects in encoded image bytes; the response dict (see DetectResponse).

        ``client_key`` (the ``X-Client-Key`` header) keeps a client on one side of a canary.
        ``inline=False``: always decode in the pool, even when this request is the server's only
        one (the batch endpoint's images, which arrive together and should decode in parallel).
        ``after``: a successful request's prediction-log record (and the input features it
        holds, if not yet taken) is left in this list as a callable, for the caller to hand
        to :meth:`defer` once the response is sent. Without ``after`` (and for a refusal) the
        record is queued before this returns.
        """
        route: Route | None = None
        prep: Prepared | None = None
        result: dict[str, Any] | None = None
        dets: list[dict[str, Any]] | None = None  # the model's, whatever the response shows
        error: HTTPProblem | None = None
        ended: float | None = None
        try:
            if not data:
                raise HTTPProblem(400, "empty_body", "the request body is empty; send image bytes")
            route = self.router.route(request_id, client_key)
            if state is not None:
                state["model_version"] = route.version
            lm = route.model
            rt = lm.runtime
            loop = asyncio.get_running_loop()
            lm.batcher.announce()  # a request is on its way: "wait" batches may hold for it
            try:
                if inline and self.metrics.active <= 1 and len(data) <= INLINE_MAX_BYTES:
                    try:  # alone on the server: decode on this thread (see INLINE_MAX_PIXELS)
                        prep = _prepare(rt, None, data, inline=True)
                    except (ImageTooLarge, CostlyImage):
                        pass  # to the pool (which applies the real limit), like any other
                    if prep is not None and time.perf_counter() - started > self.timeout_s:
                        raise TimeoutError  # do not start the model for an expired request
                # asyncio.timeout, unlike wait_for, adds no task and no extra loop iteration
                async with asyncio.timeout(
                    max(0.0, started + self.timeout_s - time.perf_counter())
                ):
                    if prep is None:
                        pending = loop.run_in_executor(
                            self.pool, _prepare, rt, lm.batcher, data, False, self.tensors
                        )
                        self.run_deferred()  # while the pool works (see defer)
                        prep = await pending
                    elif _quick(lm.batcher):  # run here (see INLINE_RUN_MAX_S)
                        # first let requests that came meanwhile start: they decode in the
                        # pool beside this run instead of waiting for it and its response
                        await asyncio.sleep(0)
                        prep.result = lm.batcher.try_direct(prep.tensor)  # None: busy, queue
                        if time.perf_counter() - started > self.timeout_s:
                            raise TimeoutError  # the run held the loop past the deadline
                    else:
                        # the model runs in the pool: however long it takes, the loop stays free
                        # (a timeout can fire, and other requests are read and queued meanwhile)
                        # first earlier responses' records (see defer) and this image's
                        # features, its pixels still in the caches (60 us at 320x320 on a quiet
                        # core): done while the model runs they took a core from its two
                        # threads, and cost the loop ~3x their quiet CPU time. wrk at c=1,
                        # default detector, alternating rounds of 3 s against doing them during
                        # the run: p50 ratio 0.971 (24 rounds, lower in 16) and 0.982 (lower in
                        # 16 of 24); three earlier runs 0.909, 0.985, 1.011 (lower in 31 of 52).
                        # That is within what separates two processes of the same server in
                        # such rounds (0.974 and 0.984, lower in 11 and 9 of 12): kept for the
                        # loop CPU it saves, not for a latency gain shown
                        self.run_deferred()
                        with contextlib.suppress(Exception):  # the record tries again, counted
                            prep.take_features()
                        prep.result = await loop.run_in_executor(
                            self.pool, lm.batcher.try_direct, prep.tensor
                        )
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no answer from {lm.ref} within serve.timeout_ms="
                    f"{self.settings.timeout_ms:g} ms (decoding, or the model was busy); "
                    "retry, or raise the timeout"
                ) from None
            finally:
                lm.batcher.unannounce()
            self.metrics.latency["decode"].observe(prep.decode_s)
            res = prep.result
            if res is None:
                res = await self._queued(lm, prep.tensor, started)
            self.metrics.latency["queue"].observe(res.queue_s)
            self.metrics.latency["inference"].observe(res.infer_s)
            t_post = time.perf_counter()
            det = rt.postprocess(
                res.outputs,
                [prep.transform],
                score_threshold=score_threshold,
                max_detections=max_detections,
            )[0]
            post_s = time.perf_counter() - t_post
            names = rt.spec.class_names
            dets = det.to_list(names)
            if route.shadow is not None:  # a copy for the shadow candidate; never blocks
                live_ms = (time.perf_counter() - started) * 1e3
                route.shadow.offer(route, data, prep, det, request_id, live_ms)
            result = {
                "request_id": request_id,
                "model": {"name": lm.name, "version": lm.version},
                "route": route.to_dict(),
                "image": {"width": prep.transform.width, "height": prep.transform.height},
                **self._automate(
                    request_id,
                    lm,
                    data,
                    prep,
                    dets,
                    # partial automation judges the model's detections down to the review
                    # band's low end, whatever threshold this response asked for
                    lambda: rt.postprocess(
                        res.outputs, [prep.transform], score_threshold=self.automation.band[0]
                    )[0].to_list(names),
                    rt.spec.score_threshold if score_threshold is None else score_threshold,
                ),
                "timings_ms": {
                    "decode": round(prep.decode_s * 1e3, 3),
                    "queue": round(res.queue_s * 1e3, 3),
                    "inference": round((res.infer_s + post_s) * 1e3, 3),
                    "total": 0.0,  # below
                },
            }
            ended = time.perf_counter()
            result["timings_ms"]["total"] = round((ended - started) * 1e3, 3)
            return result
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            error = problem_from(exc)
            self.metrics.reject(error.code)
            raise error from (None if exc is error else exc)
        finally:
            if route is not None:
                self.router.release(route)
            if self.log is not None:
                args = (route, data, prep, result, dets, error, started,
                        ended or time.perf_counter())  # fmt: skip
                if after is not None and result is not None:
                    after.append(functools.partial(self._log_quietly, request_id, *args))
                else:
                    self._log(request_id, *args)

    def _automate(
        self,
        request_id: str,
        lm: Any,
        data: bytes,
        prep: Prepared,
        dets: list[dict[str, Any]],
        band_dets: Callable[[], list[dict[str, Any]]],
        threshold: float,
    ) -> dict[str, Any]:
        """The response's detections and automation fields; queue the request for review when
        the automation level says so (a non-blocking offer: the writing happens elsewhere).

        ``dets`` are the response's detections (kept at ``threshold``). In ``partial`` mode, when
        that threshold is above the review band's low end, the verdict and the reviewer's
        suggestions use ``band_dets()`` (the model's detections down to the band's low end)
        instead: a client's threshold can neither hide low-confidence detections from review
        nor opt its requests out of it.
        """
        level = self.automation.level  # one read for the whole request
        seen = dets
        if level == "partial" and not self.automation.reaches_band(threshold):
            seen = band_dets()
        verdict = self.automation.decide(seen, level)
        review_id = None
        if verdict.needs_review and self.review is not None:
            review_id = uuid.uuid4().hex
            feats = prep.take_features()
            item = {
                "id": review_id,
                "request_id": request_id[:64],
                "at": utcnow(),
                "model_name": lm.name,
                "model_version": lm.version,
                "level": verdict.level,
                "reason": verdict.review_reason,
                "detections": seen,
                "classes": list(lm.runtime.spec.class_names),
                "width": feats.width,
                "height": feats.height,
                "format": sniff_format(data),
            }
            if not self.review.offer(item, data):
                review_id = None  # dropped (queue full) and counted
        return {
            "detections": [] if verdict.detections == "withheld" else dets,
            "automation": {"level": verdict.level, "detections": verdict.detections},
            "needs_review": verdict.needs_review,
            "review_id": review_id,
        }

    async def _queued(self, lm: Any, tensor: np.ndarray, started: float) -> BatchResult:
        remaining = started + self.timeout_s - time.perf_counter()
        if remaining <= 0:
            raise DeadlineExceeded(
                f"request took over serve.timeout_ms={self.settings.timeout_ms:g} ms "
                "before reaching the model"
            )
        fut = lm.batcher.submit(tensor, timeout_s=remaining)
        try:
            async with asyncio.timeout(remaining):
                return await fut
        except TimeoutError:
            raise DeadlineExceeded(
                f"no answer from {lm.ref} within serve.timeout_ms="
                f"{self.settings.timeout_ms:g} ms (queue depth {lm.batcher.depth}); "
                "retry, or raise the timeout"
            ) from None

    def _log_quietly(self, request_id: str, *args: Any) -> None:
        """``_log`` once the response is sent, on the event loop (see ``defer``); a record
        that cannot be made is counted, not raised (the client has its answer)."""
        try:
            self._log(request_id, *args)
        except Exception as e:  # the response is gone; a lost record must not go unnoticed
            if self.log is not None:
                self.log.failed(request_id, e)

    def _log(
        self,
        request_id: str,
        route: Route | None,
        data: bytes,
        prep: Prepared | None,
        result: dict[str, Any] | None,
        dets: list[dict[str, Any]] | None,
        error: HTTPProblem | None,
        started: float,
        ended: float,
    ) -> None:
        assert self.log is not None
        rec: dict[str, Any] = {
            "request_id": request_id[:64],
            "at": utcnow(),
            "model_name": route.model.name if route else None,
            "model_version": route.model.version if route else None,
            "route": route.reason if route else None,
            "status": 200 if error is None else error.status,
            "latency_ms": (ended - started) * 1e3,
            "timings": result["timings_ms"] if result else None,
            "bytes": len(data),
            "format": sniff_format(data),
            "error": None if error is None else f"{error.code}: {error.detail}"[:1000],
            "width": None,
            "height": None,
            "brightness": None,
            "contrast": None,
            "sharpness": None,
            "n_boxes": None,
            "max_score": None,
            "mean_score": None,
            "class_counts": None,
        }
        if prep is not None:
            f = prep.take_features()
            rec.update(
                width=f.width,
                height=f.height,
                brightness=f.brightness,
                contrast=f.contrast,
                sharpness=f.sharpness,
            )
        if result is not None and dets is not None:
            scores = [d["score"] for d in dets]
            counts: dict[str, int] = {}
            for d in dets:
                counts[d["label"]] = counts.get(d["label"], 0) + 1
            rec.update(
                n_boxes=len(dets),
                max_score=max(scores) if scores else None,
                mean_score=sum(scores) / len(scores) if scores else None,
                class_counts=counts,
            )
        sample = data if (prep is not None and self.log.want_sample()) else None
        self.log.record(rec, sample)

    # -- raw tensors (Open Inference Protocol) ---------------------------------------------------

    async def infer_tensor(self, tensor: np.ndarray, *, request_id: str) -> tuple[Route, Any]:
        """Run a pre-processed batch through the live version's batcher; raw outputs."""
        route = self.router.route(request_id)
        try:
            fut = route.model.batcher.submit(tensor, timeout_s=self.timeout_s, solo=True)
            try:
                async with asyncio.timeout(self.timeout_s):
                    res = await fut
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no answer from {route.version} within serve.timeout_ms="
                    f"{self.settings.timeout_ms:g} ms"
                ) from None
            return route, res
        finally:
            self.router.release(route)
