"""Loaded model versions and the host that follows an alias (hot swap).

:class:`ModelHost` keeps ONE reference to the live :class:`LoadedModel`. A watcher thread
polls the store every ``alias_poll_s``; when the alias moved, the new version is loaded,
warmed and its batching policy measured in the background, and only then is the reference
replaced (a single assignment under a lock). A request holds the version it started with
(:meth:`ModelHost.acquire` / :meth:`ModelHost.release`), so in-flight requests finish on it;
the old version's batcher is closed when its last user releases it.

A host can also keep other versions loaded and warm beside the live one (a deployment's
candidate, the previous blue-green colour, a shadow copy), keyed by ``(name, version, role)``:
:meth:`ModelHost.add_warm`, :meth:`ModelHost.acquire_version`, :meth:`ModelHost.drop_warm`.
:meth:`ModelHost.promote_warm` makes a warm version live with the same single assignment, so a
blue-green switch or a promotion never waits for a load.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detops.config import ServeSettings
from detops.errors import NotReady
from detops.serve.batching import (
    Batcher,
    choose_lanes,
    choose_policy,
    measure_batch_gain,
    measure_lane_gain,
)

log = logging.getLogger("detops.serve")

__all__ = ["LoadedModel", "ModelHost", "NotReady", "open_model", "start_model"]


@dataclass(eq=False)
class LoadedModel:
    name: str
    version: int
    runtime: Any  # detops.model.runtime.Runtime
    batcher: Batcher
    policy: str
    gain: float | None
    lane_gain: float | None = None
    loaded_at: float = field(default_factory=time.time)
    users: int = 0
    retired: bool = False

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"


def open_model(
    ws: Any,
    ref: str,
    settings: ServeSettings,
    metrics: Any = None,
    *,
    intra_op_threads: int | None = None,
) -> LoadedModel:
    """Load ``ref`` from the registry (hash-checked), warm it, pick a policy, start its batcher.

    ``intra_op_threads`` overrides ``settings.intra_op_threads`` (shadow copies run on one).
    """
    from detops.model.registry import get_model, load_runtime

    mv = get_model(ws, ref)
    threads = settings.intra_op_threads if intra_op_threads is None else intra_op_threads
    rt = load_runtime(
        ws,
        mv,
        intra_op_threads=threads or None,
        # "alone" too: see start_model. Not stopped as each run returns (onnxruntime's
        # session.force_spinning_stop): that cut CPU per request at ~9 req/s from 63-68 to
        # 25-29 ms (the threads spin ~50 ms after a run), but each run then woke cold threads:
        # p50 15.4-18.2 against 14.0-14.7 ms at that rate (6 alternating rounds of 50
        # requests; a run after a 100 ms pause, in process: 15.6-15.8 against 7.9-9.8 ms),
        # and level under wrk at c=1.
        allow_spinning=bool(settings.allow_spinning),
        max_image_pixels=settings.max_pixels,
        name=mv.ref,
    )
    return start_model(mv.name, mv.version, rt, settings, metrics,
                       lanes=1 if threads == 1 else None)


def start_model(
    name: str,
    version: int,
    rt: Any,
    settings: ServeSettings,
    metrics: Any = None,
    *,
    lanes: int | None = None,
) -> LoadedModel:
    """Warm ``rt``, choose its batching policy and lanes, and start its batcher.

    ``lanes`` overrides ``settings.lanes`` (a shadow copy runs on one).
    """
    rt.warmup(2)
    n = settings.max_batch_size
    if rt.max_batch is not None:
        n = min(n, rt.max_batch)
    policy: str = settings.batch_policy
    gain: float | None = None
    sample = rt.preprocess(
        [np.full((rt.spec.input_height, rt.spec.input_width, 3), 114, np.uint8)]
    )[0]
    # spinning "alone": the runtime's main session spins (a lone request's runs); runs under
    # load go to its non-spinning twin, and the gains are measured on that
    busy = rt.infer_quiet if settings.allow_spinning == "alone" and rt.spinning else None
    wide = busy or rt.infer
    if busy is not None:
        busy(sample[:1])  # make and warm the twin now, not in the first busy request
    n_lanes = settings.lanes if lanes is None else lanes
    lane_gain: float | None = None
    if n_lanes == 0:
        cores = os.cpu_count() or 1
        if cores > 1:
            lane_gain = measure_lane_gain(wide, rt.infer_narrow, sample, cores)
        n_lanes = choose_lanes(lane_gain or 1.0, cores)
        if n_lanes == 1:
            rt.drop_narrow()  # the measure's one-thread session: one lane never uses it
    if policy == "auto":
        if rt.max_batch is None and n > 1:
            # measured on the session a batch runs on under load: with lanes, a one-thread
            # session beside another run. On a full session a batch also gains from splitting
            # better across the cores than one image does, which lanes already give singles:
            # the default detector read 1.23-1.26 there against 0.97-1.06 on one thread (the
            # reference-cost one 1.27-1.34 against 0.93-0.97, this 2-vCPU VM, quiet), and a
            # warm-up that read 1.272 chose greedy, which then served 166.1 req/s at c=8 against
            # 184.9 with batching off (bench/serve_bench.py). One thread makes the measure
            # longer: 0.48-0.50 s against 0.27-0.31 s a load for the default detector
            gain = measure_batch_gain(rt.infer_narrow if n_lanes > 1 else wide, sample, n)
            policy = choose_policy(gain)
        else:
            policy = "off"
    ref = f"{name}@v{version}"
    batcher = Batcher(
        rt.infer,
        name=ref,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_ms=settings.max_queue_delay_ms,
        max_queue=settings.max_queue,
        policy=policy,
        static_batch=rt.max_batch,
        on_batch=metrics.batch_size.observe if metrics else None,
        on_depth=metrics.queue_depth.labels(ref).set if metrics else None,
        lanes=n_lanes,
        infer_narrow=rt.infer_narrow if n_lanes > 1 else None,
        infer_busy=busy,
    ).start()
    chose, lanes_chose = "", ""
    if gain is not None:
        where = "a one-thread session" if n_lanes > 1 else "the full session"
        chose = (
            f" (auto: a batch of {n} ran {gain:.3f}x as many images a second as single images, "
            f"on {where})"
        )
    if lane_gain is not None:
        lanes_chose = f" (auto: side by side they did {lane_gain:.3f}x the work of one run)"
    log.info("loaded %s: batching %s%s, %d lane(s)%s", ref, policy, chose, n_lanes, lanes_chose)
    return LoadedModel(name, version, rt, batcher, policy, gain, lane_gain)


class ModelHost:
    """The live version of the model the server follows, swapped when its alias moves."""

    def __init__(
        self,
        follow: str,
        *,
        resolve: Callable[[], tuple[str, int]],
        load: Callable[[str, int], LoadedModel],
        poll_s: float = 2.0,
        metrics: Any = None,
        watch: bool = True,
    ) -> None:
        self.follow = follow
        self.watch = watch  # False: someone else (a deployment's agent) decides what is live
        self._resolve = resolve  # -> (name, version) the alias points at now
        self._load = load
        self.poll_s = poll_s
        self.metrics = metrics
        self.current: LoadedModel | None = None
        self.warm: dict[tuple[str, int, str], LoadedModel] = {}  # loaded beside the live one
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()  # one load at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_workspace(
        cls, ws: Any, follow: str, settings: ServeSettings, metrics: Any = None
    ) -> ModelHost:
        from detops.model.registry import get_model

        def resolve() -> tuple[str, int]:
            mv = get_model(ws, follow)
            return mv.name, mv.version

        def load(name: str, version: int) -> LoadedModel:
            return open_model(ws, f"{name}@v{version}", settings, metrics)

        return cls(
            follow, resolve=resolve, load=load, poll_s=settings.alias_poll_s, metrics=metrics
        )

    # -- requests ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.current is not None

    def acquire(self) -> LoadedModel:
        with self._lock:
            lm = self.current
            if lm is None:
                detail = f": {self.last_error}" if self.last_error else ""
                raise NotReady(f"model {self.follow} is not loaded yet{detail}")
            lm.users += 1
            return lm

    def release(self, lm: LoadedModel) -> None:
        with self._lock:
            lm.users -= 1
            done = lm.retired and lm.users == 0
        if done:
            lm.batcher.close(timeout=0)

    # -- several versions -------------------------------------------------------------------

    def find(self, name: str, version: int, role: str = "serve") -> LoadedModel | None:
        """The loaded ``name@v{version}`` in ``role`` (live or warm), or None."""
        cur = self.current
        if role == "serve" and cur is not None and (cur.name, cur.version) == (name, version):
            return cur
        return self.warm.get((name, version, role))

    def acquire_version(self, name: str, version: int, role: str = "serve") -> LoadedModel | None:
        """Like :meth:`acquire` for a given version; None if it is not loaded (yet)."""
        with self._lock:
            lm = self.find(name, version, role)
            if lm is None:
                return None
            lm.users += 1
            return lm

    def add_warm(self, lm: LoadedModel, role: str = "serve") -> None:
        """Keep ``lm`` loaded beside the live version (replacing a copy already there)."""
        with self._lock:
            old = self.warm.get((lm.name, lm.version, role))
            self.warm[(lm.name, lm.version, role)] = lm
        if old is not None and old is not lm:
            self._retire(old)

    def drop_warm(self, name: str, version: int, role: str = "serve") -> bool:
        """Unload a warm version (closed once its last in-flight request is done)."""
        with self._lock:
            lm = self.warm.pop((name, version, role), None)
        if lm is None:
            return False
        self._retire(lm)
        log.info("unloaded %s (%s)", lm.ref, role)
        return True

    def promote_warm(self, name: str, version: int, *, keep_previous: bool = False) -> bool:
        """Make the warm ``name@v{version}`` live in one assignment; False if it is not warm.

        The previous live version stays warm with ``keep_previous``, else it is retired.
        """
        with self._lock:
            cur = self.current
            if cur is not None and (cur.name, cur.version) == (name, version):
                return True
            new = self.warm.pop((name, version, "serve"), None)
            if new is None:
                return False
            self.current = new
            if cur is not None and keep_previous:
                self.warm[(cur.name, cur.version, "serve")] = cur
        self._announce(cur, new, retire_old=not keep_previous)
        return True

    def install(self, new: LoadedModel, *, keep_previous: bool = False) -> None:
        """Make a freshly loaded version live (see :meth:`promote_warm`)."""
        with self._lock:
            cur, self.current = self.current, new
            if cur is not None and keep_previous and cur is not new:
                self.warm[(cur.name, cur.version, "serve")] = cur
        self._announce(cur, new, retire_old=not keep_previous)

    def loaded(self) -> list[tuple[str, int, str]]:
        """Keys of every loaded version, the live one first."""
        with self._lock:
            cur = self.current
            keys = [(cur.name, cur.version, "serve")] if cur is not None else []
            return keys + sorted(self.warm)

    def _retire(self, lm: LoadedModel) -> None:
        with self._lock:
            lm.retired = True
            close = lm.users == 0
        if close:
            lm.batcher.close(timeout=0)

    def _announce(self, old: LoadedModel | None, new: LoadedModel, *, retire_old: bool) -> None:
        if old is new:
            return
        if self.metrics:
            self.metrics.model_info.labels(new.ref, new.policy).set(1)
        if old is not None:
            if self.metrics:
                self.metrics.swaps.inc()
                self.metrics.model_info.labels(old.ref, old.policy).set(0)
            log.info("swapped %s -> %s", old.ref, new.ref)
            if retire_old:
                self._retire(old)

    # -- loading and swapping ---------------------------------------------------------------

    def check_now(self) -> bool:
        """Load the alias's version if it is not the live one; True if a swap happened."""
        with self._check_lock:
            try:
                name, version = self._resolve()
                cur = self.current
                if cur is not None and (cur.name, cur.version) == (name, version):
                    return False
                if self.promote_warm(name, version):  # already loaded beside live
                    self.last_error = None
                    return True
                new = self._load(name, version)
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                if self.metrics:
                    self.metrics.load_errors.inc()
                log.error("cannot load %s: %s", self.follow, self.last_error)
                raise
            self.last_error = None
            self._swap(new)
            return True

    def _swap(self, new: LoadedModel) -> None:
        self.install(new)

    def start(self) -> None:
        """Load in the background (the server answers /healthz meanwhile), then watch."""
        if not self.watch:
            return
        self._thread = threading.Thread(target=self._watch, name="alias-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        delay = 0.0
        while not self._stop.wait(delay):
            try:
                self.check_now()
            except Exception:  # reported in last_error and the load-errors metric
                pass
            delay = self.poll_s

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        with self._lock:
            lm, self.current = self.current, None
            others, self.warm = list(self.warm.values()), {}
        for m in [lm, *others]:
            if m is not None:
                m.batcher.close()
