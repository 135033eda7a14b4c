"""The prediction log: one record per request, written to the store in batches, off the hot path.

:meth:`PredictionLog.record` never blocks: it puts the record on a bounded :class:`Spool` or,
when that is full (store slow or down), drops it and counts the drop. A background thread takes
``batch`` records as soon as they are waiting, or what there is after ``flush_ms``, then calls
the writer (by default
:func:`store_writer`: one INSERT of many rows into ``predictions``). A writer error drops that
batch (counted) and the thread carries on, backing off briefly.

Image sampling (off by default, for privacy): with probability ``sample_rate`` a request's
bytes ride along with its record and are stored in the artifact store, with a row in
``image_samples`` that expires after ``retention_days``; expired samples are purged by the
same thread.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger("detops.serve.log")

Writer = Callable[[list[dict[str, Any]]], None]
T = TypeVar("T")


class Spool(Generic[T]):
    """A bounded hand-off from request threads to ONE writer thread that wakes the writer once
    per batch, not once per item (the prediction log's and the review queue's).

    :meth:`put` appends to a deque and signals the writer only when a whole batch is waiting;
    :meth:`take` returns up to ``batch`` items as soon as a batch is waiting, or what there is
    after ``flush_s``. A ``queue.Queue`` woke the writer on every put: a thread wake-up and a
    GIL hand-over per request on the server's event loop, for a writer that only needed to
    look once per flush period.
    """

    def __init__(self, maxsize: int, batch: int) -> None:
        if maxsize < 1 or batch < 1:
            raise ValueError(f"Spool: need maxsize >= 1 and batch >= 1 (got {maxsize}, {batch})")
        self.maxsize = maxsize
        # a batch larger than the bound would never fill: the spool would drop while it waited
        self.batch = min(batch, maxsize)
        self._items: collections.deque[T] = collections.deque()
        self._lock = threading.Lock()  # the bound is exact with several producers
        self._ready = threading.Event()  # a batch is waiting, or the writer is asked to stop

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T) -> bool:
        """Queue ``item``; False (nothing queued) when ``maxsize`` items are already waiting."""
        with self._lock:
            if len(self._items) >= self.maxsize:
                return False
            self._items.append(item)
            full = len(self._items) >= self.batch
        if full:
            self._ready.set()
        return True

    def wake(self) -> None:
        """End the writer's current wait now (closing)."""
        self._ready.set()

    def take(self, flush_s: float, stop: threading.Event) -> list[T]:
        """Up to ``batch`` items: at once if a batch is waiting or ``stop`` is set, else after
        waiting up to ``flush_s`` for one. Only the writer thread calls this."""
        items = self._items
        if len(items) < self.batch and not stop.is_set():
            self._ready.wait(flush_s)
        self._ready.clear()  # before taking: a put after this point signals again
        out = [items.popleft() for _ in range(min(self.batch, len(items)))]
        if len(items) >= self.batch:
            self._ready.set()  # another whole batch is already waiting
        return out


def write_batch(
    writer: Callable[[list[T]], Any],
    batch: list[T],
    count: Callable[[str, int], None],
    stop: threading.Event,
    backoff_s: float,
    logger: logging.Logger,
    dropped: str,
) -> None:
    """``writer(batch)``, counted ``written``. If the store is down: counted
    ``dropped_store_error``, logged as ``dropped`` (a format of the count and the error), then a
    pause of ``backoff_s`` that ``stop`` cuts short. (The prediction log's and the review
    queue's.)"""
    try:
        writer(batch)
        count("written", len(batch))
    except Exception as e:  # the store is down: drop, count, back off
        count("dropped_store_error", len(batch))
        logger.warning(dropped, len(batch), e)
        stop.wait(backoff_s)


class WriteTally:
    """``written`` and ``dropped`` counts of a background writer (the prediction log's and the
    review queue's), mirrored by outcome (``WRITE_OUTCOMES``) in the counter that
    ``_outcome_counter`` returns, if any."""

    written: int = 0
    dropped: int = 0

    def _outcome_counter(self) -> Any:
        return None

    def _count(self, outcome: str, n: int) -> None:
        if outcome == "written":
            self.written += n
        else:
            self.dropped += n
        counter = self._outcome_counter()
        if counter is not None:
            counter.labels(outcome).inc(n)


_SAMPLE = "_sample_bytes"
_COMPARISON = "_comparison"  # a shadow record's comparison with live -> shadow_comparisons
PURGE_EVERY_S = 600.0


class PredictionLog(WriteTally):
    """Bounded, batched, asynchronous sink of prediction records (see the module docstring)."""

    def __init__(
        self,
        writer: Writer,
        *,
        max_queue: int = 10_000,
        batch: int = 256,
        flush_ms: float = 500,
        sample_rate: float = 0.0,
        purge: Callable[[], int] | None = None,
        metrics: Any = None,
        seed: int | None = None,
    ) -> None:
        self._writer = writer
        self._spool: Spool[dict[str, Any]] = Spool(max_queue, batch)
        self.flush_s = flush_ms / 1000
        self.sample_rate = sample_rate
        self._purge = purge
        self._rng = random.Random(seed)
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)

    def start(self) -> PredictionLog:
        self._thread.start()
        return self

    def want_sample(self) -> bool:
        return self.sample_rate > 0 and self._rng.random() < self.sample_rate

    def record(self, rec: dict[str, Any], image: bytes | None = None) -> bool:
        """Queue ``rec`` (plus the image bytes to sample, if any); False if it was dropped."""
        if image is not None:
            rec[_SAMPLE] = image
        if not self._spool.put(rec):
            self._count("dropped_full", 1)
            return False
        return True

    def failed(self, request_id: str, error: BaseException) -> None:
        """A record that could not be built (after its response was sent): counted
        ``dropped_error`` and logged."""
        self._count("dropped_error", 1)
        log.warning("prediction log: dropped the record of request %s: %r", request_id, error)

    @property
    def pending(self) -> int:
        return len(self._spool)

    def _outcome_counter(self) -> Any:
        return None if self._metrics is None else self._metrics.log_records

    def _run(self) -> None:
        next_purge = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            records = self._spool.take(self.flush_s, self._stop)
            if self._metrics is not None:
                self._metrics.log_queue.set(len(self._spool))
            if records:
                write_batch(
                    self._writer,
                    records,
                    self._count,
                    self._stop,
                    min(1.0, self.flush_s),
                    log,
                    "prediction log: dropped %d records: %s",
                )
            if self._purge is not None and time.monotonic() >= next_purge:
                next_purge = time.monotonic() + PURGE_EVERY_S
                try:
                    self._purge()
                except Exception as e:
                    log.warning("prediction log: purging expired samples failed: %s", e)
            if stopping and not self._spool:
                return

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued (up to ``timeout``), then stop."""
        self._stop.set()
        self._spool.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)


def store_writer(ws: Any, retention_days: float = 7.0, metrics: Any = None) -> Writer:
    """A writer that inserts records into ``predictions`` (and sampled images) of ``ws``."""
    from sqlalchemy import insert

    from detops.store.schema import image_samples, predictions, shadow_comparisons

    columns = [c for c in predictions.c.keys() if c != "id"]

    def write(records: list[dict[str, Any]]) -> None:
        samples = []
        comparisons = []
        for rec in records:
            comparison = rec.pop(_COMPARISON, None)
            if comparison is not None:
                comparisons.append(comparison)
            data = rec.pop(_SAMPLE, None)
            if data is not None:
                at = rec["at"]
                samples.append(
                    {
                        "request_id": rec["request_id"],
                        "artifact": ws.artifacts.put_bytes(data),
                        "at": at,
                        "expires_at": at + dt.timedelta(days=retention_days),
                    }
                )
        # one executemany needs the same keys in every row (shadow records come from elsewhere)
        rows = [{c: rec.get(c) for c in columns} for rec in records]
        with ws.db.write() as conn:
            conn.execute(insert(predictions), rows)
            if comparisons:
                conn.execute(insert(shadow_comparisons), comparisons)
            if samples:
                # a client may reuse a request id: keep the first sample
                conn.execute(
                    insert(image_samples).prefix_with("OR IGNORE", dialect="sqlite"), samples
                )
        if samples and metrics is not None:
            metrics.samples.inc(len(samples))

    return write


def sample_purger(ws: Any) -> Callable[[], int]:
    """Delete expired ``image_samples`` rows and the artifacts no other sample references."""
    from sqlalchemy import delete, select

    from detops.store.db import utcnow
    from detops.store.schema import image_samples

    def purge() -> int:
        now = utcnow()
        with ws.db.write() as conn:
            expired = conn.execute(
                select(image_samples.c.request_id, image_samples.c.artifact).where(
                    image_samples.c.expires_at <= now
                )
            ).all()
            if not expired:
                return 0
            conn.execute(delete(image_samples).where(image_samples.c.expires_at <= now))
            still = {
                a
                for (a,) in conn.execute(
                    select(image_samples.c.artifact).where(
                        image_samples.c.artifact.in_({r.artifact for r in expired})
                    )
                )
            }
        for digest in {r.artifact for r in expired} - still:
            ws.artifacts.remove(digest)
        return len(expired)

    return purge
