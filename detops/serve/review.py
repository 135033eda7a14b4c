"""The human review queue: items in the store, a bounded asynchronous writer, feedback, retention.

A request the automation level sends to review (see :mod:`detops.serve.automation`) is offered to
:meth:`ReviewQueue.offer` on the hot path: the item and its image bytes go on a bounded queue
(count and bytes), or are dropped and counted when it is full. A background thread writes items
in batches: the image into the artifact store, one row into ``review_items`` (state
``pending``). A reviewer lists, fetches and answers items (:meth:`ReviewQueue.submit`); each
answer is one ``review_feedback`` row joined to the request id, with ``changed`` saying whether
the boxes differ from the model's, which drives the override rate. ``human_only`` reviews are
blind (the reviewer is not shown the model's boxes), and ``changed`` still compares with them:
there the override rate says how often the model would have been wrong.

Retention: an item's image is deleted ``serve.review_retention_days`` after the request (pending
items become ``expired``; reviewed ones keep their feedback without the image). Review images
are stored with a short header, so their digests are the review queue's own: the prediction
log's sample purge and dataset versions never share a review blob, and purging one cannot
break them (a dataset made from feedback copies the plain bytes).

>>> unwrap(wrap(b"\\xff\\xd8 jpeg bytes"))
b'\\xff\\xd8 jpeg bytes'
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import case, func, insert, select, update

from detops.errors import InvalidFeedback, ReviewClosed, ReviewError, ReviewItemNotFound
from detops.serve.predlog import Spool, WriteTally, write_batch
from detops.store.artifacts import sha256_bytes
from detops.store.db import aware, utcnow
from detops.store.schema import review_feedback, review_items

log = logging.getLogger("detops.serve.review")

HEADER = b"detops-review-image/1\n"
UNCHANGED_IOU = 0.95  # a reviewer's box this close to a model box of the same class is the same
PURGE_EVERY_S = 600.0
STATES = ("pending", "done", "expired")
OFFLINE = "offline"  # the level of items queued outside a server (label-error candidates)
MEDIA = {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp", "bmp": "image/bmp"}
EXT = {"jpeg": "jpg", "png": "png", "webp": "webp", "bmp": "bmp"}


def wrap(image: bytes) -> bytes:
    return HEADER + image


def unwrap(blob: bytes) -> bytes:
    if not blob.startswith(HEADER):
        raise ReviewError("stored review image has no review header; the artifact is not one")
    return blob[len(HEADER) :]


# -- comparing and checking boxes ---------------------------------------------------------------
def boxes_changed(model: Sequence[dict[str, Any]], reviewed: Sequence[dict[str, Any]]) -> bool:
    """True unless every reviewed box pairs one-to-one with a model box of the same class at
    IoU >= ``UNCHANGED_IOU`` (greedy by IoU; at that threshold pairings are unambiguous).

    >>> m = [{"box": [0, 0, 10, 10], "label": "car"}]
    >>> boxes_changed(m, [{"box": [0, 0, 10, 10.2], "label": "car"}])
    False
    >>> boxes_changed(m, [{"box": [0, 0, 10, 10], "label": "dog"}]), boxes_changed(m, [])
    (True, True)
    """
    if len(model) != len(reviewed):
        return True
    import numpy as np

    from detops.data._agreement import iou_grid  # not at import: keeps it off server start-up

    grid = iou_grid(
        np.asarray([m["box"] for m in model], dtype=float).reshape(-1, 4),
        np.asarray([r["box"] for r in reviewed], dtype=float).reshape(-1, 4),
    )
    free = list(range(len(model)))
    for i, r in enumerate(reviewed):
        best, best_iou = -1, UNCHANGED_IOU
        for j in free:
            if model[j]["label"] == r["label"]:
                v = float(grid[j, i])
                if v >= best_iou:
                    best, best_iou = j, v
        if best < 0:
            return True
        free.remove(best)
    return False


def check_boxes(
    boxes: Sequence[dict[str, Any]], width: int, height: int, classes: Sequence[str]
) -> list[dict[str, Any]]:
    """Problems with corrected boxes, each ``{loc, msg}`` naming the field; [] when fine.

    >>> check_boxes([{"box": [5, 5, 90, 20], "label": "cat"}], 80, 60, ["car"])[1]["msg"]
    'box [5, 5, 90, 20] is outside the image (80x60): x2=90 > 80'
    """
    errors: list[dict[str, Any]] = []
    for i, b in enumerate(boxes):
        loc = ["body", "boxes", i]
        if b["label"] not in classes:
            errors.append(
                {
                    "loc": [*loc, "label"],
                    "msg": f"{b['label']!r} is not a class of this model ({', '.join(classes)})",
                }
            )
        box = [float(v) for v in b["box"]]
        shown = "[" + ", ".join(f"{v:g}" for v in box) + "]"
        x1, y1, x2, y2 = box
        if not all(math.isfinite(v) for v in box):
            msg = f"box {shown} has a coordinate that is not a finite number"
        elif x1 >= x2 or y1 >= y2:
            msg = (
                f"box {shown} is not [x1, y1, x2, y2] with x1 < x2 and y1 < y2 "
                "(corners in pixels, top-left first)"
            )
        else:
            outside = [
                f"{n}={v:g} {op} {lim}"
                for n, v, op, lim, bad in (
                    ("x1", x1, "<", 0, x1 < 0),
                    ("y1", y1, "<", 0, y1 < 0),
                    ("x2", x2, ">", width, x2 > width),
                    ("y2", y2, ">", height, y2 > height),
                )
                if bad
            ]
            if not outside:
                continue
            msg = f"box {shown} is outside the image ({width}x{height}): {', '.join(outside)}"
        errors.append({"loc": [*loc, "box"], "msg": msg})
    return errors


# -- the asynchronous writer --------------------------------------------------------------------
class _Sink(WriteTally):
    """Bounded (items and bytes) queue drained by one thread that calls ``writer`` in batches."""

    def __init__(
        self,
        writer: Callable[[list[tuple[dict[str, Any], bytes]]], None],
        *,
        max_items: int,
        max_bytes: int,
        batch: int = 32,
        flush_ms: float = 200,
        after_write: Callable[[], Any] | None = None,
        housekeeping: Callable[[], Any] | None = None,
        housekeeping_every_s: float = PURGE_EVERY_S,
        metrics: Any = None,
    ) -> None:
        self._writer = writer
        # batches of at most max_items: at most 2 x max_items held, queued + being written
        self._spool: Spool[tuple[dict[str, Any], bytes]] = Spool(max_items, batch)
        self.max_bytes = max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self.flush_s = flush_ms / 1000
        self._after_write = after_write
        self._housekeeping = housekeeping
        self._every = housekeeping_every_s
        self._metrics = metrics
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="review-queue", daemon=True)

    def offer(self, item: dict[str, Any], image: bytes) -> bool:
        with self._lock:
            if self._bytes + len(image) > self.max_bytes:
                self._count("dropped_full", 1)
                return False
            if not self._spool.put((item, image)):
                self._count("dropped_full", 1)
                return False
            self._bytes += len(image)
        return True

    def _outcome_counter(self) -> Any:
        return None if self._metrics is None else self._metrics.review_items

    def _run(self) -> None:
        next_housekeeping = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            batch = self._spool.take(self.flush_s, self._stop)
            if batch:
                try:
                    write_batch(
                        self._writer,
                        batch,
                        self._count,
                        self._stop,
                        min(1.0, self.flush_s),
                        log,
                        "review queue: dropped %d items: %s",
                    )
                finally:  # the budget covers the batch being written too
                    with self._lock:
                        self._bytes -= sum(len(img) for _, img in batch)
            if self._metrics is not None:
                self._metrics.review_queue.set(len(self._spool))
            chores = []
            if batch and self._after_write is not None:
                chores.append(self._after_write)
            if self._housekeeping is not None and time.monotonic() >= next_housekeeping:
                next_housekeeping = time.monotonic() + self._every
                chores.append(self._housekeeping)
            for chore in chores:
                try:
                    chore()
                except Exception as e:
                    log.warning("review queue: %s failed: %s", chore.__name__, e)
            if stopping and not self._spool:
                return

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._spool.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)


# -- the queue --------------------------------------------------------------------------------
def _iso(t: dt.datetime | None) -> str | None:
    t = aware(t)
    return None if t is None else t.isoformat()


def _public(row: Any, *, full: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "request_id": row.request_id,
        "at": _iso(row.at),
        "model": None if row.model_name is None else f"{row.model_name}@v{row.model_version}",
        "level": row.level,
        "reason": row.reason,
        "state": row.state,
        "expires_at": _iso(row.expires_at),
        "image": {"width": row.width, "height": row.height, "format": row.format},
        "has_image": row.artifact is not None,
    }
    if full:
        # human_only reviews are blind: the model's boxes are kept for the override rate only
        out["suggestions"] = [] if row.reason == "human_only" else row.detections
        out["classes"] = row.classes
    return out


class ReviewQueue:
    """The review queue of one workspace: the asynchronous writer plus the reviewer's side."""

    def __init__(
        self,
        ws: Any,
        *,
        retention_days: float = 30.0,
        max_items: int = 256,
        max_bytes: int = 256 * 1024 * 1024,
        flush_ms: float = 200,
        metrics: Any = None,
    ) -> None:
        self.ws = ws
        self.retention = dt.timedelta(days=retention_days)
        self.metrics = metrics
        self._sink = _Sink(
            self._write,
            max_items=max_items,
            max_bytes=max_bytes,
            flush_ms=flush_ms,
            after_write=self.refresh_metrics,
            housekeeping=self._housekeeping,
            metrics=metrics,
        )

    @classmethod
    def from_settings(cls, ws: Any, settings: Any, metrics: Any = None) -> ReviewQueue:
        return cls(
            ws,
            retention_days=settings.review_retention_days,
            max_items=settings.review_queue,
            max_bytes=int(settings.review_queue_mb * 1024 * 1024),
            flush_ms=min(settings.log_flush_ms, 200),
            metrics=metrics,
        )

    # -- hot path -----------------------------------------------------------------------------
    def offer(self, item: dict[str, Any], image: bytes) -> bool:
        """Queue ``item`` (see :meth:`_write` for its keys) with its image; False if dropped."""
        return self._sink.offer(item, image)

    def add(self, batch: Sequence[tuple[dict[str, Any], bytes]]) -> None:
        """Write items with their images now, all or none (one transaction): for offline
        producers such as ``detops data label-errors --to-review``, which need no writer thread
        and must not report items that were never stored."""
        if batch:
            self._write(list(batch))
            self.refresh_metrics()

    def pending_requests(self, request_ids: Sequence[str]) -> set[str]:
        """Which of ``request_ids`` already have a pending item."""
        if not request_ids:
            return set()
        q = select(review_items.c.request_id).where(
            review_items.c.request_id.in_(list(request_ids)), review_items.c.state == "pending"
        )
        with self.ws.db.read() as conn:
            return set(conn.execute(q).scalars())

    @property
    def written(self) -> int:
        return self._sink.written

    @property
    def dropped(self) -> int:
        return self._sink.dropped

    def start(self) -> None:
        self._sink.start()

    def close(self) -> None:
        self._sink.close()

    # -- writing (the sink's thread) -----------------------------------------------------------
    def _write(self, batch: list[tuple[dict[str, Any], bytes]]) -> None:
        art = self.ws.artifacts
        rows = []
        created: list[str] = []
        try:
            # blobs are put inside the write transaction: a purge (which removes blobs under
            # the same lock) never sees a blob whose row is about to be inserted
            with self.ws.db.write() as conn:
                for item, image in batch:
                    blob = wrap(image)
                    digest = sha256_bytes(blob)
                    if not art.exists(digest):
                        art.put_bytes(blob)
                        created.append(digest)
                    rows.append(
                        {
                            **item,
                            "artifact": digest,
                            "state": "pending",
                            "expires_at": item["at"] + self.retention,
                        }
                    )
                conn.execute(insert(review_items), rows)
            created.clear()
        finally:
            for digest in created:  # the rows were not written: leave no blob behind
                art.remove(digest)

    def _housekeeping(self) -> None:
        self.purge()
        self.refresh_metrics()

    # -- retention ------------------------------------------------------------------------------
    def purge(self, now: dt.datetime | None = None) -> int:
        """Delete the images of items past their retention; pending ones become ``expired``."""
        now = now or utcnow()
        expired_q = (review_items.c.expires_at <= now) & review_items.c.artifact.is_not(None)
        with self.ws.db.write() as conn:
            rows = conn.execute(select(review_items.c.id, review_items.c.artifact).where(expired_q))
            expired = rows.all()
            if not expired:
                return 0
            ids = [r.id for r in expired]
            conn.execute(
                update(review_items)
                .where(review_items.c.id.in_(ids), review_items.c.state == "pending")
                .values(state="expired")
            )
            conn.execute(
                update(review_items).where(review_items.c.id.in_(ids)).values(artifact=None)
            )
            digests = {r.artifact for r in expired}
            still = set(
                conn.execute(
                    select(review_items.c.artifact).where(review_items.c.artifact.in_(digests))
                ).scalars()
            )
            for digest in digests - still:
                self.ws.artifacts.remove(digest)
        return len(expired)

    # -- the reviewer's side --------------------------------------------------------------------
    def items(self, state: str | None = "pending", limit: int = 50) -> list[dict[str, Any]]:
        """Items oldest first (``state`` None: all)."""
        q = select(review_items).order_by(review_items.c.at, review_items.c.id).limit(limit)
        if state is not None:
            q = q.where(review_items.c.state == state)
        with self.ws.db.read() as conn:
            return [_public(r) for r in conn.execute(q)]

    def _row(self, conn: Any, review_id: str) -> Any:
        row = conn.execute(select(review_items).where(review_items.c.id == review_id)).first()
        if row is None:
            raise ReviewItemNotFound(f"no review item {review_id!r}; list them at /v1/review")
        return row

    def get(self, review_id: str) -> dict[str, Any]:
        """One item with its suggestions (the model's boxes; none for blind human_only items)."""
        with self.ws.db.read() as conn:
            row = self._row(conn, review_id)
            out = _public(row, full=True)
            fb = conn.execute(
                select(review_feedback).where(review_feedback.c.review_id == review_id)
            ).first()
        if fb is not None:
            out["feedback"] = {
                "boxes": fb.boxes,
                "reviewer": fb.reviewer,
                "submitted_at": _iso(fb.submitted_at),
                "changed": fb.changed,
            }
        return out

    def image(self, review_id: str) -> tuple[bytes, str]:
        """The item's image bytes and media type."""
        with self.ws.db.read() as conn:
            row = self._row(conn, review_id)
        if row.artifact is None:
            raise ReviewClosed(
                f"review item {review_id}: its image was deleted after "
                f"serve.review_retention_days ({self.retention.days} days)"
            )
        return unwrap(self.ws.artifacts.get_bytes(row.artifact)), MEDIA.get(
            row.format or "", "application/octet-stream"
        )

    def submit(
        self, review_id: str, boxes: Sequence[dict[str, Any]], reviewer: str
    ) -> dict[str, Any]:
        """Store a reviewer's boxes ``[{box: [x1, y1, x2, y2], label}]`` for a pending item."""
        boxes = [{"box": [float(v) for v in b["box"]], "label": b["label"]} for b in boxes]
        with self.ws.db.read() as conn:
            row = self._row(conn, review_id)
        if row.state != "pending":
            raise ReviewClosed(f"review item {review_id} is {row.state}; it takes no more boxes")
        errors = check_boxes(boxes, row.width, row.height, row.classes)
        if errors:
            raise InvalidFeedback(errors)
        changed = boxes_changed(row.detections, boxes)
        with self.ws.db.write() as conn:
            # the state check and the insert are one transaction: two reviewers of the same
            # item cannot both win
            done = conn.execute(
                update(review_items)
                .where(review_items.c.id == review_id, review_items.c.state == "pending")
                .values(state="done")
            )
            if done.rowcount != 1:
                raise ReviewClosed(f"review item {review_id} was answered or expired meanwhile")
            conn.execute(
                insert(review_feedback).values(
                    review_id=review_id,
                    request_id=row.request_id,
                    boxes=boxes,
                    reviewer=reviewer,
                    submitted_at=utcnow(),
                    changed=changed,
                )
            )
        if self.metrics is not None:
            self.metrics.review_feedback.labels("true" if changed else "false").inc()
        stats = self.refresh_metrics()
        return {
            "review_id": review_id,
            "request_id": row.request_id,
            "changed": changed,
            "boxes": len(boxes),
            "override_rate": stats["override_rate"],
        }

    def stats(self) -> dict[str, Any]:
        """Items per state, then reviews of served requests, how many changed the model's boxes
        and the override rate (changed / reviewed). Offline items (label-error candidates,
        picked *because* the model disagrees with the labels) are counted apart
        (``reviewed_offline``): they would bias the override rate of the served model."""
        served = review_items.c.level != OFFLINE
        with self.ws.db.read() as conn:
            by_state = dict(
                conn.execute(
                    select(review_items.c.state, func.count()).group_by(review_items.c.state)
                ).all()
            )
            reviewed, changed, offline = conn.execute(
                select(
                    func.sum(case((served, 1), else_=0)),
                    func.sum(case((served & review_feedback.c.changed, 1), else_=0)),
                    func.sum(case((served, 0), else_=1)),
                ).select_from(
                    review_feedback.join(
                        review_items, review_items.c.id == review_feedback.c.review_id
                    )
                )
            ).one()
        reviewed, changed = int(reviewed or 0), int(changed or 0)
        return {
            **{s: int(by_state.get(s, 0)) for s in STATES},
            "reviewed": reviewed,
            "changed": changed,
            "override_rate": changed / reviewed if reviewed else None,
            "reviewed_offline": int(offline or 0),
        }

    def refresh_metrics(self) -> dict[str, Any]:
        s = self.stats()
        if self.metrics is not None:
            self.metrics.review_pending.set(s["pending"])
            rate = s["override_rate"]
            self.metrics.review_override_rate.set(float("nan") if rate is None else rate)
        return s


# -- feedback as a dataset ------------------------------------------------------------------------
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([dhm])$")


def parse_since(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """``--since``: an ISO date or time (UTC unless it says), or an age such as ``7d``, ``12h``.

    Always returned in UTC: the store keeps UTC times without their offset, so a time with
    another offset is converted before it is compared with them.

    >>> now = dt.datetime(2024, 5, 10, 12, tzinfo=dt.UTC)
    >>> parse_since("2d", now).isoformat(), parse_since("2024-05-01", now).isoformat()
    ('2024-05-08T12:00:00+00:00', '2024-05-01T00:00:00+00:00')
    >>> parse_since("2024-05-01T08:30+02:00").isoformat()
    '2024-05-01T06:30:00+00:00'
    """
    m = _RELATIVE.match(text.strip())
    if m:
        unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
        return (now or utcnow()) - dt.timedelta(**{unit: float(m.group(1))})
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReviewError(
            f"--since {text!r}: expected an ISO date or time (2024-05-01, 2024-05-01T08:00) "
            "or an age such as 7d, 12h, 30m"
        ) from None
    return t.astimezone(dt.UTC) if t.tzinfo is not None else t.replace(tzinfo=dt.UTC)


@contextmanager
def feedback_dataset(
    ws: Any, since: dt.datetime | None = None
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """The submitted feedback as a :class:`~detops.data.Dataset` (images in a temporary folder
    that lives as long as the ``with`` block), plus a summary of what it holds and skipped.

    Boxes come from the feedback, the annotator is the reviewer, categories are the class names
    of the models that served the items (in their order), and each image is tagged with its
    request and review ids. Reviews whose image the retention already deleted are skipped; so
    are those past their retention whose image no server has purged yet (purged first here).
    """
    from detops.data.dataset import Dataset

    ReviewQueue(ws).purge()  # an image past its retention is never exported
    q = (
        select(
            review_feedback,
            review_items.c.artifact,
            review_items.c.classes,
            review_items.c.width,
            review_items.c.height,
            review_items.c.format,
            review_items.c.model_name,
            review_items.c.model_version,
        )
        .join(review_items, review_items.c.id == review_feedback.c.review_id)
        .order_by(review_feedback.c.submitted_at, review_feedback.c.id)
    )
    if since is not None:
        q = q.where(review_feedback.c.submitted_at >= since)
    with ws.db.read() as conn:
        rows = conn.execute(q).all()
    when = f" since {since.isoformat()}" if since is not None else ""
    if not rows:
        raise ReviewError(
            f"no submitted review feedback{when}; review items at /review on the server first"
        )
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="feedback-", dir=ws.state_dir) as tmp:
        ds = Dataset(root=Path(tmp), info={"source": "review feedback"})
        skipped: list[str] = []
        for r in rows:
            for name in r.classes:
                ds.category_id(name, create=True)
            if r.artifact is None:
                skipped.append(r.review_id)
                continue
            file = f"{r.review_id}.{EXT.get(r.format or '', 'img')}"
            (Path(tmp) / file).write_bytes(unwrap(ws.artifacts.get_bytes(r.artifact)))
            img = ds.add_image(
                file,
                r.width,
                r.height,
                tags={
                    "request_id": r.request_id,
                    "review_id": r.review_id,
                    "model": f"{r.model_name}@v{r.model_version}",
                },
            )
            for b in r.boxes:
                ds.add_annotation(
                    img.id, b["box"], ds.category_id(b["label"]), annotator=r.reviewer
                )
        if not ds.images:
            raise ReviewError(
                f"all {len(rows)} reviews{when} lost their images to "
                "serve.review_retention_days; nothing to export"
            )
        summary = {
            "reviews": len(rows),
            "images": len(ds.images),
            "boxes": len(ds.annotations),
            "reviewers": sorted({r.reviewer for r in rows if r.artifact is not None}),
            "skipped_image_expired": skipped,
        }
        yield ds, summary
