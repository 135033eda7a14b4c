"""Dynamic batching: one bounded queue and one inference thread per model version.

Requests arrive on the event loop already decoded and pre-processed (``[n, 3, H, W]``); the
thread takes the oldest job, adds queued jobs up to ``max_batch_size`` rows as the policy says,
runs ONNX Runtime once (it releases the GIL, so the event loop keeps serving) and hands each
job its rows of the outputs through an asyncio future.

Policies (``serve.batch_policy``)::

    wait    fill a batch for up to max_queue_delay_ms after its first job, but only while
            more requests are being decoded (announced), so a lone request never waits
    greedy  take what is already queued, never wait
    off     one job per run
    auto    measure batch 1 vs batch N at warm-up (:func:`measure_batch_gain`) on the
            session a batch would run on under load (with lanes, a one-thread one) and
            pick: gain >= 1.5 -> wait, gain >= 1.25 -> greedy, else off

On CPUs a batch of 8 costs about 8 single images, and under real load batching then loses:
with the default detector on 2 cores (``bench/serve_bench.py``, wrk at c=8, two alternating
rounds) batching off served 144.6 / 150.9 req/s, greedy 108.2, wait 111.3-118.9, although the
isolated warm-up measure gave a batch gain of 1.22-1.28: batched runs stall behind the decoding
that shares the cores, and one request's result waits for the whole batch. So ``auto`` batches
only where the gain is large enough to pay for that (an accelerator, a model with a high fixed
cost per call) and otherwise turns batching off, which is then batching's best case here. Most
of that 1.22-1.28 was a batch splitting across two threads better than one image does, which
two lanes give single images as well; on the one-thread session that lanes run under load, the
same batch read 0.97-1.06, so that is where ``auto`` measures once there are lanes.

A request that finds a lane free and nothing queued runs at once in the thread that decoded it
(:meth:`Batcher.try_direct`); this saves two thread hand-offs per request at low load. Under
``wait`` it does so only when no other request is being decoded.

Lanes (``serve.lanes``): how many ONNX Runtime runs of this version may be in progress at once,
each queue-draining lane with its own thread. A run that starts while no other runs uses the
runtime's full session (all intra-op threads: the lowest latency for a lone request); a run
that starts beside another uses a one-thread session (:meth:`Runtime.infer_narrow`). On small
CPU models two one-thread runs side by side do more work than one run on two threads, whose
kernels are too small to split well (:func:`measure_lane_gain` decides under ``auto``). With
the issue's reference-cost model under wrk at c=8 (``bench/serve_bench.py --model reference``)
runs with two lanes served 85.7-101.3 req/s, runs with one 69.0-78.8; the warm-up measure read
a lane gain of only 1.155 for it. The warm-up measure reads low: it runs the model on a quiet
machine, while under load the server's decoding takes a core from a two-thread run, which then
waits on its slower half. Over six runs of the bench (both models) it read 1.035-1.205 while
serving with two lanes gave 1.19-1.37x the throughput of one; at 1.035 the old threshold of
1.05 chose one lane, and the server did 67.2 against 93.1 req/s. A wrong "two lanes" costs
little (a lone request still runs on every core), a wrong "one lane" a fifth to a quarter of
the throughput, hence LANE_GAIN below 1: two lanes unless they measure clearly slower.

Spinning ``alone`` (``serve.allow_spinning: alone``): ONNX Runtime's intra-op threads spin
between the kernels of a run instead of sleeping, which on a 2-core VM cut a lone request's run
by ~2-3 ms (c=1 p50 6.79 vs 9.58 ms in ``bench/serve_bench.py``), but a spinning pool takes the
core a second lane needs (the warm-up lane measure read a gain of 0.774 with it, 1.10-1.16
without). So the runtime keeps a non-spinning twin of its full session (``infer_busy``): a run
uses the spinning session only for a request that did not queue while no other request is
queued or being decoded; every other full-width run uses the twin.

A full queue raises :class:`~detops.errors.Overloaded` (HTTP 503 + Retry-After); a job whose
deadline passed while queued is dropped before inference.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detops.errors import DeadlineExceeded, ModelError, Overloaded

POLICIES = ("wait", "greedy", "off")
WAIT_GAIN = 1.5
GREEDY_GAIN = 1.25
LANE_GAIN = 0.95


@dataclass(frozen=True, slots=True)
class BatchResult:
    outputs: dict[str, np.ndarray]  # this job's rows of every output
    queue_s: float  # from submit to the start of its batch's run
    infer_s: float  # the batch's run
    batch_rows: int  # rows in that batch


@dataclass(slots=True)
class _Job:
    tensor: np.ndarray
    deadline: float  # time.monotonic()
    future: asyncio.Future[BatchResult]
    loop: asyncio.AbstractEventLoop
    solo: bool
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def rows(self) -> int:
        return int(self.tensor.shape[0])


def _resolve(fut: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller timed out or went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(value)


def measure_batch_gain(
    infer: Callable[[np.ndarray], object], sample: np.ndarray, n: int, repeats: int = 5
) -> float:
    """``(time of batch 1) * n / (time of batch n)``, best of ``repeats`` each, the two sizes
    interleaved so that a burst of other work hits both (1.0 if n == 1)."""
    if n <= 1:
        return 1.0
    one = sample[:1]
    many = np.repeat(one, n, axis=0)

    def timed(x: np.ndarray) -> float:
        t = time.perf_counter()
        infer(x)
        return time.perf_counter() - t

    infer(many)  # allocate the big-batch buffers before timing
    pairs = [(timed(one), timed(many)) for _ in range(repeats)]
    t1, tn = min(p[0] for p in pairs), min(p[1] for p in pairs)
    return (t1 * n) / tn if tn > 0 else 1.0


def measure_lane_gain(
    wide: Callable[[np.ndarray], object],
    narrow: Callable[[np.ndarray], object],
    sample: np.ndarray,
    lanes: int,
    runs: int = 6,
    repeats: int = 5,
) -> float:
    """Images per second of ``lanes`` threads running ``narrow`` side by side over one thread
    running ``wide``, on batches of one; best of ``repeats`` each, interleaved.

    Side by side needs every core at once, so a burst of other work hurts that side more; a
    wrong "one lane" costs ~13% of the throughput (bench/serve_bench.py: 122.2 vs 139.7 req/s)
    while a wrong "two lanes" costs nothing, hence five pairs (about 0.4 s at warm-up for the
    default detector): with three, one of the four warm-ups of a bench/serve_bench.py run on this
    2-vCPU VM chose one lane."""
    if lanes <= 1:
        return 1.0
    one = sample[:1]
    narrow(one)

    def sequential() -> float:
        t = time.perf_counter()
        for _ in range(runs):
            wide(one)
        return time.perf_counter() - t

    def side_by_side() -> float:
        start = threading.Barrier(lanes + 1)

        def work() -> None:
            start.wait()
            for _ in range(runs):
                narrow(one)

        threads = [threading.Thread(target=work) for _ in range(lanes)]
        for th in threads:
            th.start()
        start.wait()
        t = time.perf_counter()
        for th in threads:
            th.join()
        return (time.perf_counter() - t) / lanes  # per ``runs`` images, as sequential()

    pairs = [(sequential(), side_by_side()) for _ in range(repeats)]
    t_wide, t_lanes = min(p[0] for p in pairs), min(p[1] for p in pairs)
    return t_wide / t_lanes if t_lanes > 0 else 1.0


def choose_lanes(gain: float, lanes: int) -> int:
    """``lanes`` unless running them side by side measured below LANE_GAIN (slower), else 1."""
    return lanes if lanes > 1 and gain >= LANE_GAIN else 1


def choose_policy(gain: float) -> str:
    if gain >= WAIT_GAIN:
        return "wait"
    if gain >= GREEDY_GAIN:
        return "greedy"
    return "off"


class Batcher:
    """Queue + inference thread for one model version (see the module docstring)."""

    def __init__(
        self,
        infer: Callable[[np.ndarray], Mapping[str, np.ndarray]],
        *,
        name: str,
        max_batch_size: int = 8,
        max_queue_delay_ms: float = 2.0,
        max_queue: int = 64,
        policy: str = "greedy",
        static_batch: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        lanes: int = 1,
        infer_narrow: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
        infer_busy: Callable[[np.ndarray], Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"batch policy {policy!r}: expected one of {', '.join(POLICIES)}")
        self.name = name
        self._infer = infer
        self.static_batch = static_batch
        cap = max_batch_size if policy != "off" else 1
        self.max_batch_size = min(cap, static_batch) if static_batch else cap
        self.max_queue_delay_s = max_queue_delay_ms / 1000
        self.max_queue = max_queue
        self.policy = policy
        self._on_batch = on_batch or (lambda n: None)
        self._on_depth = on_depth or (lambda n: None)
        self._queue: deque[_Job] = deque()
        self._cond = threading.Condition(threading.Lock())
        if lanes > 1 and infer_narrow is None:
            raise ValueError("lanes > 1 needs infer_narrow (a one-thread runner)")
        self.lanes = max(1, lanes)
        self._infer_narrow = infer_narrow
        self._infer_busy = infer_busy
        self._lane_slots = threading.BoundedSemaphore(self.lanes)  # runs in progress
        self._running = 0  # guarded by _running_lock
        self._running_lock = threading.Lock()
        self._closed = False
        # single-image runs' time through try_direct, a running mean (None until the first):
        # a model this quick runs a lone request on the event loop (see
        # detops.serve.service.INLINE_RUN_MAX_S)
        self.direct_run_s: float | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"batcher-{name}-{i}", daemon=True)
            for i in range(self.lanes)
        ]
        self.batches = 0  # runs so far (guarded by _running_lock)
        self._announced = 0  # requests being decoded for this batcher (event-loop thread only)

    # -- the event-loop side -----------------------------------------------------------------

    def start(self) -> Batcher:
        for th in self._threads:
            th.start()
        return self

    @property
    def depth(self) -> int:
        return len(self._queue)

    def announce(self) -> None:
        """A request for this model is being decoded (call from the event loop)."""
        self._announced += 1

    def unannounce(self) -> None:
        self._announced -= 1

    def submit(
        self, tensor: np.ndarray, *, timeout_s: float, solo: bool = False
    ) -> asyncio.Future[BatchResult]:
        """Queue ``tensor`` (``[n, ...]``); the future resolves with its rows of the outputs.

        Call from the event loop. Raises :class:`Overloaded` when the queue is full.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[BatchResult] = loop.create_future()
        job = _Job(tensor, time.monotonic() + timeout_s, fut, loop, solo)
        with self._cond:
            if self._closed:
                raise Overloaded(f"model {self.name} is shutting down; retry", 1.0)
            if len(self._queue) >= self.max_queue:
                raise Overloaded(
                    f"model {self.name}: {len(self._queue)} requests queued (max_queue "
                    f"{self.max_queue}); retry later or raise serve.max_queue",
                    1.0,
                )
            self._queue.append(job)
            depth = len(self._queue)
            self._cond.notify()
        self._on_depth(depth)
        return fut

    def try_direct(self, tensor: np.ndarray) -> BatchResult | None:
        """Run ``tensor`` now in the calling thread if the model is idle and nothing is queued;
        None if it should be queued instead. Safe from any thread."""
        if self._queue or self._closed or (self.policy == "wait" and self._announced > 1):
            return None
        if tensor.shape[0] > self.max_batch_size and self.static_batch:
            return None
        if not self._lane_slots.acquire(blocking=False):
            return None
        try:
            t0 = time.perf_counter()
            outputs = self._infer_lane(tensor)
            infer_s = time.perf_counter() - t0
        finally:
            self._lane_slots.release()
        if tensor.shape[0] == 1:  # lanes may race here: a lost update only blurs the mean
            last = self.direct_run_s
            self.direct_run_s = infer_s if last is None else last + 0.25 * (infer_s - last)
        self._on_batch(int(tensor.shape[0]))
        return BatchResult(outputs, 0.0, infer_s, int(tensor.shape[0]))

    def _runner(
        self, alone: bool, queued: bool
    ) -> Callable[[np.ndarray], Mapping[str, np.ndarray]]:
        """Which session runs a batch: beside another run, the one-thread session (when
        there are lanes); else the full session, or with ``infer_busy`` (spinning "alone") the
        spinning one only for a request that did not queue while nothing else is queued or
        being decoded."""
        if not alone and self._infer_narrow is not None:
            return self._infer_narrow
        busy = self._infer_busy
        if busy is not None and (queued or not alone or self._queue or self._announced > 1):
            return busy
        return self._infer

    def _infer_lane(self, batch: np.ndarray, queued: bool = False) -> dict[str, np.ndarray]:
        """Run ``batch`` (the caller holds a lane) on the session :meth:`_runner` picks."""
        with self._running_lock:
            alone = self._running == 0
            self._running += 1
        try:
            return self._infer_padded(batch, self._runner(alone, queued))
        finally:
            with self._running_lock:  # several lanes finish at once: count under the lock
                self._running -= 1
                self.batches += 1

    def _infer_padded(
        self, batch: np.ndarray, infer: Callable[[np.ndarray], Mapping[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        rows = int(batch.shape[0])
        if self.static_batch and rows < self.static_batch:
            # a graph exported with a fixed batch: fill with blank rows
            fill = np.zeros((self.static_batch - rows, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, fill])
        outputs = infer(batch)
        return {
            k: (v[:rows] if v.ndim and v.shape[0] == batch.shape[0] else v)
            for k, v in outputs.items()
        }

    def close(self, timeout: float | None = 10.0) -> None:
        """Finish what is queued, then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for th in self._threads:
            if th.is_alive() and threading.current_thread() is not th:
                th.join(timeout)

    # -- the inference thread ------------------------------------------------------------------

    def _take(self) -> list[_Job]:
        """The next batch of queued jobs (empty if another lane took them first)."""
        with self._cond:
            if not self._queue:
                return []
            first = self._queue.popleft()
            jobs = [first]
            if first.solo or self.policy == "off":
                return jobs
            rows = first.rows
            shape = first.tensor.shape[1:]
            fill_until = time.monotonic() + (self.max_queue_delay_s if self.policy == "wait" else 0)
            while rows < self.max_batch_size:
                if not self._queue:
                    left = fill_until - time.monotonic()
                    if left <= 0 or self._closed or self._announced <= 0:
                        break
                    self._cond.wait(left)
                    continue
                nxt = self._queue[0]
                if (
                    nxt.solo
                    or nxt.tensor.shape[1:] != shape
                    or rows + nxt.rows > self.max_batch_size
                ):
                    break
                jobs.append(self._queue.popleft())
                rows += nxt.rows
            return jobs

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
            # take jobs only once a lane is free: while direct runs hold them, jobs stay
            # queued (visible in the depth, counted against max_queue) and batch together
            with self._lane_slots:
                self._run_next()

    def _run_next(self) -> None:
        """Take the next batch (the caller holds a lane) and run it. A method of its own so
        that its jobs go when it returns: their tensors may be slots of the server's
        TensorPool, which a name left bound in ``_run`` kept until the next batch."""
        jobs = self._take()
        if not jobs:  # another lane took them: wait for more without holding a lane
            return
        self._on_depth(len(self._queue))
        now = time.monotonic()
        live = []
        for job in jobs:
            if job.future.done():  # cancelled by a caller that gave up
                continue
            if now > job.deadline:
                err = DeadlineExceeded(f"model {self.name}: request expired in the queue")
                job.loop.call_soon_threadsafe(_resolve, job.future, None, err)
                continue
            live.append(job)
        if live:
            self._run_batch(live, now)

    def _run_batch(self, jobs: list[_Job], started: float) -> None:
        tensors = [j.tensor for j in jobs]
        batch = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
        rows = int(batch.shape[0])
        error: BaseException | None = None
        outputs: Mapping[str, np.ndarray] = {}
        t0 = time.perf_counter()
        try:
            outputs = self._infer_lane(batch, queued=True)
        except Exception as e:  # one bad batch must not stop the thread
            error = e if isinstance(e, ModelError) else ModelError(f"{self.name}: {e}")
        infer_s = time.perf_counter() - t0
        self._on_batch(rows)
        start = 0
        for job in jobs:
            n = job.rows
            if error is None:
                mine = {
                    k: (v[start : start + n] if v.ndim and v.shape[0] == rows else v)
                    for k, v in outputs.items()
                }
                value = BatchResult(mine, started - job.enqueued, infer_s, rows)
            else:
                value = None
            job.loop.call_soon_threadsafe(_resolve, job.future, value, error)
            start += n
