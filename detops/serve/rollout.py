"""The rollout agent of one replica, and the controller that judges canary steps.

Every server serving a deployment (``detops serve --deployment NAME``) runs a
:class:`RolloutAgent` with three threads, none on the request path:

* **sync** reads the deployment's ``revision`` every ``rollout.poll_s`` (one primary-key read)
  and, when it moved, reads the row and applies it: the router's :class:`RoutePlan` is replaced
  in one assignment, and a live version that is already warm becomes live in one assignment.
* **loader** loads what the plan needs (live, the candidate, a shadow copy, the previous colour
  while it is kept warm) and unloads the rest; a version still loading never gets traffic.
* **controller** renews a lease in the store (``leases``, ``rollout:<deployment>``) every
  ``rollout.tick_s``; the replica holding it is the only one deciding. It judges the candidate's
  gates (:mod:`detops.monitor.gates`) over the step's window of the prediction log, in which
  every replica's requests land, and decides: roll back on any failed gate; advance (promote,
  when the next step is 100%) once the step has its minimum requests and seconds and every gate
  passes, live being judged on the requests it served during the same step;
  hold as ``insufficient_data`` when the step is due but the data is not there. A paused
  canary never advances, but a failed gate still rolls it back. A rollback is
  applied in-process before it is written, so the deciding replica stops routing to the
  candidate at once; the others see the new revision within one poll. If the holder dies, its
  lease expires after ``rollout.lease_ttl_s`` and another replica takes over.

Every decision is an event in ``deployment_events`` with the measured values and thresholds.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from detops.config import RolloutSettings, ServeSettings
from detops.errors import StaleDeployment
from detops.serve import deployments as deps
from detops.serve.deployments import ACTIVE_STATES, STATES, Deployment
from detops.serve.models import LoadedModel, ModelHost, open_model
from detops.serve.rollout_demo import demo_rollout
from detops.serve.routing import DeploymentRouter, RoutePlan
from detops.serve.shadow import ShadowRunner
from detops.store.db import aware, utcnow

log = logging.getLogger("detops.serve.rollout")

__all__ = [
    "RolloutAgent",
    "demo_rollout",
    "deployment_router",
    "plan_for",
    "wanted_versions",
]


def plan_for(dep: Deployment) -> RoutePlan:
    """The routing plan a deployment's row calls for."""
    colours = dep.colours if dep.strategy == "bluegreen" else {}
    live_reason = colours.get(dep.live_version, "live")
    cand = dep.candidate_version
    if dep.state == "shadowing" and cand is not None:
        mode = "shadow"
    elif dep.state in ("canary", "insufficient_data", "paused") and cand is not None:
        mode = "canary"
    elif dep.state == "bluegreen" and cand is not None:
        mode = "bluegreen"
    else:
        mode, cand = "live", None
    return RoutePlan(
        name=dep.model_name,
        live=dep.live_version,
        candidate=cand,
        mode=mode,
        share=dep.share,
        sample=dep.sample,
        live_reason=live_reason,
        candidate_reason=colours.get(cand, "canary") if cand is not None else "canary",
        revision=dep.revision,
        deployment=dep.name,
        colours=tuple(sorted(colours.items())),
    )


def wanted_versions(
    dep: Deployment, keep_warm_s: float, now: dt.datetime | None = None
) -> set[tuple[int, str]]:
    """``(version, role)`` pairs a replica should have loaded for ``dep`` now."""
    want = {(dep.live_version, "serve")}
    cand = dep.candidate_version
    if cand is not None and dep.state in ACTIVE_STATES:
        want.add((cand, "shadow" if dep.state == "shadowing" else "serve"))
    keep = dep.keep_warm_s if dep.keep_warm_s is not None else keep_warm_s
    if dep.previous_version is not None and dep.switched_at is not None:
        age = ((now or utcnow()) - dep.switched_at).total_seconds()
        if age < keep:
            want.add((dep.previous_version, "serve"))
    return want


Loader = Callable[[str, int, str], LoadedModel]


class RolloutAgent:
    """One replica's part in a deployment (see the module docstring)."""

    def __init__(
        self,
        ws: Any,
        dep: Deployment,
        *,
        host: ModelHost,
        router: DeploymentRouter,
        load: Loader,
        rollout: RolloutSettings,
        metrics: Any = None,
        replica: str | None = None,
    ) -> None:
        self.ws = ws
        self.name = dep.name
        self.dep = dep
        self.host = host
        self.router = router
        self._load = load
        self.cfg = rollout
        self.metrics = metrics
        self.replica = replica or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.actor = f"controller:{self.replica}"
        self.lease_name = f"rollout:{dep.name}"
        self.is_controller = False
        self.lease: deps.Lease | None = None
        self.service: Any = None
        self.last_error: str | None = None
        self.load_errors: dict[str, str] = {}
        self.last_report: dict[str, Any] | None = None
        self.applied: dict[int, float] = {}  # revision -> time.time() it was applied here
        self._apply_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- wiring ------------------------------------------------------------------------------

    def bind(self, service: Any) -> None:
        self.service = service
        self._apply_automation(self.dep)

    def start(self) -> None:
        self.apply(self.dep)
        for target, name in (
            (self._loader, "rollout-loader"),
            (self._sync, "rollout-sync"),
            (self._controller, "rollout-controller"),
        ):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(30)
        self._threads = []
        if self.is_controller:
            try:  # hand over at once instead of after the lease's time to live
                deps.release_lease(self.ws, self.lease_name, self.replica)
            except Exception as e:
                log.warning("could not release lease %s: %s", self.lease_name, e)
        self.is_controller = False

    # -- applying a deployment row -----------------------------------------------------------

    def apply(self, dep: Deployment) -> None:
        """Route by ``dep`` now (its plan replaces the old one in one assignment)."""
        with self._apply_lock:
            if dep.revision < self.dep.revision:
                return  # an older row read by a slower thread
            self.dep = dep
            plan = plan_for(dep)
            cur = self.host.current
            if cur is None or cur.version != dep.live_version:
                # instant when the new live version is warm (blue-green, promoted canary);
                # otherwise the loader loads it and the old live answers meanwhile
                self.host.promote_warm(dep.model_name, dep.live_version, keep_previous=True)
            self.router.plan = plan
            self.applied.setdefault(dep.revision, time.time())
            if len(self.applied) > 256:
                for rev in sorted(self.applied)[:-128]:
                    del self.applied[rev]
        self._apply_automation(dep)
        self._export(dep, plan)
        self._wake.set()

    def _apply_automation(self, dep: Deployment) -> None:
        auto = getattr(self.service, "automation", None)
        if auto is not None and dep.automation and getattr(auto, "level", None) != dep.automation:
            auto.level = dep.automation

    def _export(self, dep: Deployment, plan: RoutePlan) -> None:
        m = self.metrics
        if m is None:
            return
        for s in STATES:
            m.rollout_state.labels(dep.name, s).set(1 if s == dep.state else 0)
        m.rollout_step.labels(dep.name).set(dep.step)
        share = plan.candidate_share()
        m.rollout_share.labels(dep.name, "candidate").set(share)
        m.rollout_share.labels(dep.name, "live").set(1 - share)
        m.rollout_revision.labels(dep.name).set(dep.revision)

    def refresh(self) -> Deployment:
        """Read the row now and apply it (after a change made through this replica)."""
        dep = deps.get(self.ws, self.name)
        self.apply(dep)
        return dep

    # -- threads -----------------------------------------------------------------------------

    def _sync(self) -> None:
        while not self._stop.wait(self.cfg.poll_s):
            try:
                rev = deps.revision_of(self.ws, self.name)
                if rev is not None and rev != self.dep.revision:
                    self.apply(deps.get(self.ws, self.name))
            except Exception as e:  # the store is down: keep routing by the last plan
                self.last_error = f"sync: {type(e).__name__}: {e}"
                log.warning("deployment %s: %s", self.name, self.last_error)

    def _loader(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._reconcile()
            except Exception as e:
                self.last_error = f"loader: {type(e).__name__}: {e}"
                log.warning("deployment %s: %s", self.name, self.last_error)
                self._stop.wait(1.0)

    def _reconcile(self) -> None:
        dep = self.dep
        model = dep.model_name
        want = wanted_versions(dep, self.cfg.keep_warm_s)
        # live first: the server is not ready until it answers
        ordered = sorted(want, key=lambda k: (k != (dep.live_version, "serve"), k))
        for version, role in ordered:
            if self._stop.is_set() or self.dep.revision != dep.revision:
                self._wake.set()  # the plan moved while loading: start over
                return
            if self.host.find(model, version, role) is not None:
                continue
            key = f"{model}@v{version}/{role}"
            try:
                lm = self._load(model, version, role)
            except Exception as e:
                self.load_errors[key] = f"{type(e).__name__}: {e}"
                self.host.last_error = f"cannot load {key}: {e}"
                log.error("deployment %s: cannot load %s: %s", self.name, key, e)
                continue
            self.load_errors.pop(key, None)
            if role == "serve" and version == self.dep.live_version:
                self.host.install(lm, keep_previous=True)
                self.host.last_error = None
            else:
                self.host.add_warm(lm, role)
        cur = self.host.current
        if cur is not None and cur.version != self.dep.live_version:
            self.host.promote_warm(model, self.dep.live_version, keep_previous=True)
        want = wanted_versions(self.dep, self.cfg.keep_warm_s)
        live = self.dep.live_version
        for name, version, role in self.host.loaded():
            if (version, role) not in want and not (role == "serve" and version == live):
                cur = self.host.current
                if cur is not None and (cur.name, cur.version, role) == (name, version, "serve"):
                    continue  # still live here (its successor is loading)
                self.host.drop_warm(name, version, role)

    def _controller(self) -> None:
        try:  # import the judging code now, not at the first decision (scipy takes a second)
            import scipy.stats  # noqa: F401

            import detops.monitor.gates  # noqa: F401
        except ImportError as e:  # pragma: no cover - scipy is a dependency
            log.warning("deployment %s: %s", self.name, e)
        while not self._stop.wait(self.cfg.tick_s):
            try:
                self.tick()
            except Exception as e:
                self.last_error = f"controller: {type(e).__name__}: {e}"
                log.warning("deployment %s: %s", self.name, self.last_error)

    # -- the controller ------------------------------------------------------------------------

    def tick(self) -> str | None:
        """Renew the lease; if this replica holds it, judge the canary. The decision, if any."""
        lease = deps.acquire_lease(self.ws, self.lease_name, self.replica, self.cfg.lease_ttl_s)
        self.lease = lease
        mine = lease.holder == self.replica
        if mine != self.is_controller:
            log.info(
                "deployment %s: %s the controller lease", self.name, "took" if mine else "lost"
            )
        self.is_controller = mine
        if self.metrics is not None:
            self.metrics.rollout_controller.labels(self.name).set(1 if mine else 0)
        if not mine:
            return None
        dep = deps.get(self.ws, self.name)
        if dep.revision != self.dep.revision:
            self.apply(dep)
        # a paused canary is judged too: it never advances, but a gate breach still rolls it back
        # (its candidate keeps its share while paused)
        if dep.state not in deps.CANARY_STATES or dep.candidate_version is None:
            return None
        return self.judge(dep)

    def judge(self, dep: Deployment) -> str | None:
        """Evaluate ``dep``'s gates and act; the decision taken (None: keep going)."""
        from detops.monitor.gates import GatesConfig, evaluate, load_agreement, load_window

        assert dep.candidate_version is not None
        cfg = GatesConfig.from_mapping(dep.gates)
        now = utcnow()
        started = aware(dep.step_started_at) or now
        cand = load_window(
            self.ws, dep.model_name, dep.candidate_version, since=started, routes=("canary",)
        )
        live = load_window(
            self.ws,
            dep.model_name,
            dep.live_version,
            since=started - dt.timedelta(seconds=cfg.live_window_s),
            exclude_routes=("shadow", "canary"),
        )
        agreement = (
            load_agreement(
                self.ws, dep.model_name, dep.candidate_version, live_version=dep.live_version
            )
            if cfg.agreement.enabled
            else None
        )
        report = evaluate(cfg, live=live, candidate=cand, agreement=agreement)
        elapsed = (now - started).total_seconds()
        measured = {
            **report.measured,
            "step": dep.step,
            "share": dep.share,
            "step_elapsed_s": round(elapsed, 3),
            "window_end": now.isoformat(),
        }
        now = utcnow()  # the moment of the decision (the event's time)
        thresholds = {
            **report.thresholds,
            "step": {"min_requests": dep.min_requests, "min_seconds": dep.min_seconds},
        }
        self.last_report = {"verdict": report.verdict, "reason": report.reason, **measured}
        kw: dict[str, Any] = dict(expect_revision=dep.revision, actor=self.actor,
                                  measured=measured, thresholds=thresholds, at=now)  # fmt: skip
        lease = self.lease
        if lease is not None and not lease.held_by(self.replica, now):
            # the lease ran out while judging (a slow store): another replica may be deciding
            # now; leave the decision to whoever holds it at the next tick
            self.is_controller = False
            return None
        try:
            if report.verdict == "fail":
                # stop routing to the candidate here first; the store tells the other replicas
                self.router.plan = dataclasses.replace(
                    self.router.plan, mode="live", candidate=None, share=0.0
                )
                new = deps.auto_rollback(self.ws, dep.name, reason=report.reason, **kw)
                self._decided("rollback", report.failed[0], new)
                return "rollback"
            due = elapsed >= dep.min_seconds
            enough = cand.n >= dep.min_requests
            if dep.state == "paused":  # held by a person: only a breach (above) acts
                return None
            if due and enough and report.verdict == "pass":
                new = deps.advance(self.ws, dep.name, reason=report.reason, **kw)
                decision = "promote" if new.state == "promoted" else "advance"
                self._decided(decision, "gates_passed", new)
                return decision
            if due and dep.state == "canary":
                short = []
                if not enough:
                    short.append(f"candidate {cand.n}/{dep.min_requests} requests")
                if report.verdict == "insufficient_data":
                    short.append(report.reason)
                reason = f"step {dep.step} ({dep.share:.0%}) after {elapsed:.1f} s: " + "; ".join(
                    short
                )
                new = deps.hold(self.ws, dep.name, reason=reason, **kw)
                self._decided("hold", "insufficient_data", new)
                return "hold"
        except StaleDeployment:
            self.refresh()  # someone else changed it (a person, usually): their state stands
        return None

    def _decided(self, decision: str, reason: str, new: Deployment) -> None:
        if self.metrics is not None:
            self.metrics.rollout_decisions.labels(decision, reason).inc()
        log.info("deployment %s: %s (%s) -> %s", self.name, decision, reason, new.state)
        self.apply(new)

    # -- reporting -----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This replica's view: plan applied, versions loaded, lease, last gate report."""
        lease = self.lease
        return {
            "replica": self.replica,
            "controller": self.is_controller,
            "lease": None
            if lease is None
            else {"holder": lease.holder, "expires_at": lease.expires_at.isoformat()},
            "revision": self.dep.revision,
            "plan": dataclasses.asdict(self.router.plan),
            "loaded": [f"{n}@v{v}/{r}" for n, v, r in self.host.loaded()],
            "load_errors": dict(self.load_errors),
            "last_error": self.last_error,
            "last_report": self.last_report,
            "shadow": dict(self.router.shadow.counts) if self.router.shadow is not None else {},
        }


def deployment_router(
    ws: Any, name: str, settings: ServeSettings, metrics: Any = None
) -> DeploymentRouter:
    """A router for deployment ``name`` with its host, shadow runner and rollout agent
    (``router.bind(service)`` attaches the latter two to the service)."""
    dep = deps.get(ws, name)
    rs: RolloutSettings = ws.settings.rollout
    agent_box: list[RolloutAgent] = []

    def resolve() -> tuple[str, int]:
        d = agent_box[0].dep if agent_box else dep
        return d.model_name, d.live_version

    def load_serve(model: str, version: int) -> LoadedModel:
        return open_model(ws, f"{model}@v{version}", settings, metrics)

    def load(model: str, version: int, role: str) -> LoadedModel:
        if role == "shadow":
            return open_model(
                ws, f"{model}@v{version}", settings, metrics, intra_op_threads=rs.shadow_threads
            )
        return load_serve(model, version)

    host = ModelHost(
        f"deployment {name}",
        resolve=resolve,
        load=load_serve,
        poll_s=rs.poll_s,
        metrics=metrics,
        watch=False,
    )
    shadow = ShadowRunner(
        host, None, metrics, concurrency=rs.shadow_concurrency, max_queue=rs.shadow_queue
    )
    router = DeploymentRouter(host, plan_for(dep), shadow=shadow)
    agent = RolloutAgent(ws, dep, host=host, router=router, load=load, rollout=rs, metrics=metrics)
    agent_box.append(agent)
    router.agent = agent
    router.parts = [_ShadowPart(shadow), agent]
    return router


class _ShadowPart:
    """Starts the shadow runner with the service and gives it the service's prediction log."""

    def __init__(self, runner: ShadowRunner) -> None:
        self.runner = runner

    def bind(self, service: Any) -> None:
        self.runner.log = service.log

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()
