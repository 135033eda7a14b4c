"""Deployments in the store: live version, candidate, strategy, rollout state and history.

A deployment is a named endpoint (``detops serve --deployment NAME``). Every change to it is ONE
write transaction that checks the transition is allowed, bumps ``revision`` (replicas poll it),
and records an event saying who or what decided, why, and on which measured values::

    idle ──shadow──► shadowing ──canary──► canary ◄──► insufficient_data
      │                 │                    │  ▲ (controller: advance / hold)
      │                 │                    ▼  │
      │                 │                  paused (resume)
      └──bluegreen──► bluegreen (candidate warm, no traffic)
    any of shadowing / canary / insufficient_data / paused / bluegreen
        ──promote──► promoted    (candidate becomes live; the old live is kept warm)
        ──rollback─► rolled_back (candidate gets no traffic)
    promoted ──rollback──► rolled_back (switch back to the previous version)

A canary's steps below 100% are judged; passing the last of them is the promotion (100%).
``promoted``, ``rolled_back`` and ``idle`` accept a new shadow, canary or blue-green. A promotion
also moves the alias the deployment was created from (``det@production``), in the same
transaction, so ``detops serve --model det@production`` agrees with the deployment.

Actors: ``human:<user>`` (CLI), ``api`` (admin REST endpoints), ``controller:<replica>``.

>>> dep_share = Deployment(name="d", model_name="det", alias=None, live_version=1,
...     candidate_version=2, previous_version=None, strategy="canary", state="canary", step=1,
...     steps=(1.0, 5.0, 100.0), step_config={}, gates={}, automation=None, revision=3,
...     step_started_at=None, switched_at=None, created_at=None, updated_at=None).share
>>> dep_share
0.05
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from sqlalchemy import insert, or_, select, update

from detops.errors import (
    DeploymentExists,
    DeploymentNotFound,
    InvalidTransition,
    ModelNotFound,
    StaleDeployment,
)
from detops.refs import check_name, parse_ref
from detops.store.db import aware, utcnow
from detops.store.schema import alias_events, deployment_events, deployments, leases, model_aliases

__all__ = [
    "ACTIVE_STATES",
    "AUTOMATION_LEVELS",
    "DEFAULT_STEPS",
    "STATES",
    "Deployment",
    "Lease",
    "acquire_lease",
    "advance",
    "auto_rollback",
    "create",
    "get",
    "hold",
    "human_actor",
    "list_deployments",
    "parse_steps",
    "pause",
    "promote",
    "read_lease",
    "release_lease",
    "resume",
    "revision_of",
    "rollback",
    "set_automation",
    "start_bluegreen",
    "start_canary",
    "start_shadow",
]

try:  # the automation engineer's module names the levels; fall back while it does not exist
    from detops.serve.automation import AUTOMATION_LEVELS
except ImportError:  # pragma: no cover - only before detops.serve.automation exists
    AUTOMATION_LEVELS = ("human_only", "shadow", "ai_assistance", "partial", "full")

STATES = (
    "idle",
    "shadowing",
    "canary",
    "insufficient_data",
    "paused",
    "bluegreen",
    "promoted",
    "rolled_back",
)
ACTIVE_STATES = frozenset({"shadowing", "canary", "insufficient_data", "paused", "bluegreen"})
CANARY_STATES = frozenset({"canary", "insufficient_data", "paused"})
STARTABLE = frozenset({"idle", "promoted", "rolled_back", "shadowing"})
DEFAULT_STEPS: tuple[float, ...] = (1.0, 5.0, 25.0, 50.0, 100.0)
DEFAULT_MIN_REQUESTS = 100
DEFAULT_MIN_SECONDS = 60.0


def human_actor() -> str:
    """``human:<login name>`` (environment, else the password database)."""
    import getpass

    try:
        who = getpass.getuser()
    except Exception:  # no name anywhere (some containers)
        who = "unknown"
    return f"human:{who}"


@dataclass(frozen=True)
class Deployment:
    name: str
    model_name: str
    alias: str | None
    live_version: int
    candidate_version: int | None
    previous_version: int | None
    strategy: str  # none | shadow | canary | bluegreen
    state: str
    step: int
    steps: tuple[float, ...]
    step_config: dict[str, Any]
    gates: dict[str, Any]
    automation: str | None
    revision: int
    step_started_at: dt.datetime | None
    switched_at: dt.datetime | None
    created_at: dt.datetime | None
    updated_at: dt.datetime | None

    @property
    def live_ref(self) -> str:
        return f"{self.model_name}@v{self.live_version}"

    @property
    def candidate_ref(self) -> str | None:
        if self.candidate_version is None:
            return None
        return f"{self.model_name}@v{self.candidate_version}"

    @property
    def share(self) -> float:
        """The candidate's share of traffic now (0..1): canary steps only."""
        if self.state in CANARY_STATES and self.candidate_version is not None and self.steps:
            return float(self.steps[min(self.step, len(self.steps) - 1)]) / 100.0
        return 0.0

    @property
    def sample(self) -> float:
        """The share of live requests copied to the candidate in shadow."""
        if self.state == "shadowing" and self.candidate_version is not None:
            return float(self.step_config.get("sample", 1.0))
        return 0.0

    @property
    def colours(self) -> dict[int, str]:
        """Version -> blue / green, for blue-green deployments."""
        return {int(v): c for c, v in self.step_config.get("colours", {}).items()}

    @property
    def min_requests(self) -> int:
        return int(self.step_config.get("min_requests", DEFAULT_MIN_REQUESTS))

    @property
    def min_seconds(self) -> float:
        return float(self.step_config.get("min_seconds", DEFAULT_MIN_SECONDS))

    @property
    def keep_warm_s(self) -> float | None:
        v = self.step_config.get("keep_warm_s")
        return None if v is None else float(v)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steps"] = list(self.steps)
        d["live"] = self.live_ref
        d["candidate"] = self.candidate_ref
        d["share"] = self.share
        for k in ("step_started_at", "switched_at", "created_at", "updated_at"):
            d[k] = None if d[k] is None else d[k].isoformat()
        return d


def _dep(row: Any) -> Deployment:
    return Deployment(
        name=row.name,
        model_name=row.model_name,
        alias=row.alias,
        live_version=row.live_version,
        candidate_version=row.candidate_version,
        previous_version=row.previous_version,
        strategy=row.strategy,
        state=row.state,
        step=row.step,
        steps=tuple(float(s) for s in (row.steps or ())),
        step_config=dict(row.step_config or {}),
        gates=dict(row.gates or {}),
        automation=row.automation,
        revision=row.revision,
        step_started_at=aware(row.step_started_at),
        switched_at=aware(row.switched_at),
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


# -- reading ---------------------------------------------------------------------------------


def get(ws: Any, name: str) -> Deployment:
    with ws.db.read() as conn:
        return _read(conn, name)


def _read(conn: Any, name: str) -> Deployment:
    """The deployment ``name`` as ``conn`` sees it; DeploymentNotFound names the known ones."""
    row = conn.execute(select(deployments).where(deployments.c.name == name)).first()
    if row is None:
        known = [n for (n,) in conn.execute(select(deployments.c.name))]
        raise DeploymentNotFound(_not_found(name, known))
    return _dep(row)


def _not_found(name: str, known: Sequence[str]) -> str:
    hint = (
        f"deployments: {', '.join(sorted(known))}"
        if known
        else "create one with `detops deploy create NAME --model MODEL@ALIAS`"
    )
    return f"no deployment {name!r} ({hint})"


def list_deployments(ws: Any) -> list[Deployment]:
    with ws.db.read() as conn:
        return [_dep(r) for r in conn.execute(select(deployments).order_by(deployments.c.name))]


def revision_of(ws: Any, name: str) -> int | None:
    """The deployment's revision: one primary-key read, what replicas poll."""
    with ws.db.read() as conn:
        value = conn.execute(
            select(deployments.c.revision).where(deployments.c.name == name)
        ).scalar()
    return None if value is None else int(value)


def history(ws: Any, name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Events of ``name``, oldest first (the last ``limit`` if given)."""
    get(ws, name)  # a clear error for an unknown name
    q = select(deployment_events).where(deployment_events.c.deployment == name)
    q = q.order_by(deployment_events.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    with ws.db.read() as conn:
        rows = list(conn.execute(q))
    out = []
    for r in reversed(rows):
        d = r._asdict()
        d["at"] = aware(d["at"]).isoformat()  # type: ignore[union-attr]
        out.append(d)
    return out


# -- writing ---------------------------------------------------------------------------------


def _event(
    conn: Any,
    dep: Deployment,
    *,
    kind: str,
    actor: str,
    at: dt.datetime,
    from_state: str | None,
    decision: str | None = None,
    reason: str | None = None,
    measured: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    candidate_version: int | None = None,
) -> None:
    conn.execute(
        insert(deployment_events).values(
            deployment=dep.name,
            at=at,
            kind=kind,
            decision=decision,
            reason=reason,
            from_state=from_state,
            to_state=dep.state,
            live_version=dep.live_version,
            candidate_version=(
                candidate_version if candidate_version is not None else dep.candidate_version
            ),
            step=dep.step,
            measured=dict(measured) if measured is not None else None,
            thresholds=dict(thresholds) if thresholds is not None else None,
            actor=actor,
            revision=dep.revision,
        )
    )


def _move_alias(conn: Any, dep: Deployment, to_version: int, actor: str, at: dt.datetime) -> None:
    if dep.alias is None:
        return
    key = (model_aliases.c.name == dep.model_name) & (model_aliases.c.alias == dep.alias)
    previous = conn.execute(select(model_aliases.c.version).where(key)).scalar()
    if previous == to_version:
        return
    if previous is None:
        conn.execute(
            insert(model_aliases).values(
                name=dep.model_name, alias=dep.alias, version=to_version, updated_at=at
            )
        )
    else:
        conn.execute(update(model_aliases).where(key).values(version=to_version, updated_at=at))
    conn.execute(
        insert(alias_events).values(
            name=dep.model_name,
            alias=dep.alias,
            from_version=previous,
            to_version=to_version,
            actor=f"deployment:{dep.name}:{actor}",
            at=at,
        )
    )


Change = Callable[[Deployment], dict[str, Any]]


def _change(
    ws: Any,
    name: str,
    change: Change,
    *,
    kind: str,
    actor: str,
    expect_revision: int | None = None,
    decision: str | None = None,
    reason: str | None = None,
    measured: Mapping[str, Any] | None = None,
    thresholds: Mapping[str, Any] | None = None,
    at: dt.datetime | None = None,
    move_alias: bool = False,
) -> Deployment:
    """Apply ``change`` (which raises InvalidTransition when not allowed) in one transaction."""
    now = at or utcnow()
    with ws.db.write() as conn:
        dep = _read(conn, name)
        if expect_revision is not None and dep.revision != expect_revision:
            raise StaleDeployment(
                f"deployment {name!r} changed (revision {dep.revision}, expected "
                f"{expect_revision}); decide again on its current state"
            )
        values = change(dep)
        values["revision"] = dep.revision + 1
        values["updated_at"] = now
        # conditional on the revision read: where the read above takes no lock (PostgreSQL,
        # READ COMMITTED), a concurrent change that committed first makes this one match no
        # row instead of overwriting it (a lost update, two events for one revision)
        done = conn.execute(
            update(deployments)
            .where(deployments.c.name == name, deployments.c.revision == dep.revision)
            .values(**values)
        )
        if done.rowcount != 1:
            raise StaleDeployment(
                f"deployment {name!r} changed while this change was being made (revision "
                f"{dep.revision}); decide again on its current state"
            )
        new = replace(dep, **{k: v for k, v in values.items() if k != "steps"})
        if "steps" in values:
            new = replace(new, steps=tuple(float(s) for s in values["steps"]))
        _event(
            conn,
            new,
            kind=kind,
            actor=actor,
            at=now,
            from_state=dep.state,
            decision=decision,
            reason=reason,
            measured=measured,
            thresholds=thresholds,
            candidate_version=dep.candidate_version if new.candidate_version is None else None,
        )
        if move_alias and new.live_version != dep.live_version:
            _move_alias(conn, new, new.live_version, actor, now)
    return new


def _check_automation(level: str | None) -> None:
    if level is not None and level not in AUTOMATION_LEVELS:
        raise InvalidTransition(
            f"automation level {level!r} is not known; expected one of "
            f"{', '.join(AUTOMATION_LEVELS)}"
        )


def create(
    ws: Any,
    name: str,
    model: str,
    *,
    automation: str | None = None,
    actor: str | None = None,
) -> Deployment:
    """A new deployment serving ``model`` (``NAME@ALIAS`` or ``NAME@vN``) as its live version."""
    from detops.model.registry import get_model

    check_name(name, "deployment name")
    _check_automation(automation)
    ref = parse_ref(model)
    mv = get_model(ws, ref)
    now = utcnow()
    actor = actor or human_actor()
    values: dict[str, Any] = dict(
        name=name,
        model_name=mv.name,
        alias=ref.alias,
        live_version=mv.version,
        candidate_version=None,
        previous_version=None,
        strategy="none",
        state="idle",
        step=0,
        steps=[],
        step_config={},
        gates={},
        automation=automation,
        revision=1,
        step_started_at=None,
        switched_at=None,
        created_at=now,
        updated_at=now,
    )
    with ws.db.write() as conn:
        if conn.execute(select(deployments.c.name).where(deployments.c.name == name)).first():
            raise DeploymentExists(
                f"deployment {name!r} already exists; see `detops deploy status {name}`"
            )
        conn.execute(insert(deployments).values(**values))
        dep = _dep(_Row(values))
        _event(
            conn, dep, kind="create", actor=actor, at=now, from_state=None, reason=f"from {model}"
        )
    return dep


class _Row:
    def __init__(self, values: Mapping[str, Any]) -> None:
        self.__dict__.update(values)


def _candidate(ws: Any, dep: Deployment, candidate: str | int, action: str) -> int:
    """The version ``candidate`` names (``vN``, ``N``, ``MODEL@vN`` or ``MODEL@ALIAS``)."""
    from detops.model.registry import get_model

    text = str(candidate).strip()
    if text.isdigit():
        text = f"v{text}"
    ref_text = text if "@" in text else f"{dep.model_name}@{text}"
    try:
        ref = parse_ref(ref_text)
        if ref.name != dep.model_name:
            raise InvalidTransition(
                f"cannot {action} {text} in deployment {dep.name!r}: it serves model "
                f"{dep.model_name!r}, not {ref.name!r}"
            )
        if ref.version is None and ref.alias is None:
            raise InvalidTransition(
                f"cannot {action} {text!r} in deployment {dep.name!r}: name a version "
                f"(e.g. v2 or {dep.model_name}@v2)"
            )
        mv = get_model(ws, ref)
    except (ModelNotFound, ValueError) as exc:
        if isinstance(exc, InvalidTransition):
            raise
        raise InvalidTransition(
            f"cannot {action} {text} in deployment {dep.name!r}: {exc}"
        ) from exc
    if mv.version == dep.live_version:
        raise InvalidTransition(
            f"cannot {action} {mv.ref} in deployment {dep.name!r}: it is already the live version"
        )
    return mv.version


def _must_start(dep: Deployment, action: str) -> None:
    if dep.state not in STARTABLE:
        raise InvalidTransition(
            f"cannot start a {action} in deployment {dep.name!r}: a {dep.strategy} of "
            f"{dep.candidate_ref} is in progress (state {dep.state}); promote or roll it back "
            "first"
        )


def parse_steps(steps: str | Sequence[float]) -> list[float]:
    """``"1,5,25,50,100"`` -> ``[1.0, 5.0, 25.0, 50.0, 100.0]`` (increasing, ending at 100).

    Every step below 100 is judged against live traffic served at the same time; passing the
    last of them promotes the candidate (100% of the traffic: it becomes live).

    >>> parse_steps("10, 50,100")
    [10.0, 50.0, 100.0]
    """
    try:
        values = (
            [float(s) for s in steps.split(",") if s.strip()]
            if isinstance(steps, str)
            else [float(s) for s in steps]
        )
    except ValueError:
        raise InvalidTransition(
            f"steps {steps!r}: expected percentages separated by commas, e.g. 1,5,25,50,100"
        ) from None
    if not values:
        raise InvalidTransition("steps: give at least one percentage, e.g. 1,5,25,50,100")
    if any(not 0 < v <= 100 for v in values):
        raise InvalidTransition(f"steps {values}: every step must be in (0, 100]")
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise InvalidTransition(f"steps {values}: must increase")
    if values[-1] != 100:
        raise InvalidTransition(f"steps {values}: the last step must be 100 (all traffic)")
    if len(values) < 2:
        raise InvalidTransition(
            f"steps {values}: give at least one step below 100 (reaching 100% is the promotion)"
        )
    return values


def start_shadow(
    ws: Any, name: str, candidate: str | int, *, sample: float = 1.0, actor: str | None = None
) -> Deployment:
    """Copy ``sample`` of live requests to ``candidate``; its answers never reach a client."""
    if not 0 < sample <= 1:
        raise InvalidTransition(f"shadow sample {sample:g}: expected a share in (0, 1]")
    version = _candidate(ws, get(ws, name), candidate, "shadow")

    def change(dep: Deployment) -> dict[str, Any]:
        _must_start(dep, "shadow")
        return dict(
            strategy="shadow",
            state="shadowing",
            candidate_version=version,
            step=0,
            steps=[],
            step_config={"sample": float(sample)},
            step_started_at=utcnow(),
        )

    return _change(ws, name, change, kind="shadow", actor=actor or human_actor())


def start_canary(
    ws: Any,
    name: str,
    candidate: str | int,
    *,
    steps: str | Sequence[float] = DEFAULT_STEPS,
    min_requests: int = DEFAULT_MIN_REQUESTS,
    min_seconds: float = DEFAULT_MIN_SECONDS,
    gates: Mapping[str, Any] | Any = None,
    actor: str | None = None,
) -> Deployment:
    """Give ``candidate`` the first step's share; the controller advances or rolls back.

    Each step below 100% is judged against live requests served during the same step (same
    load, same time); passing the last of them promotes the candidate.
    """
    from detops.monitor.gates import GatesConfig

    step_list = parse_steps(steps)
    if min_requests < 1:
        raise InvalidTransition(f"step min requests {min_requests}: expected at least 1")
    if not math.isfinite(min_seconds) or min_seconds < 0:  # NaN: never due, stuck silently
        raise InvalidTransition(f"step min seconds {min_seconds:g}: expected 0 or more")
    cfg = gates if isinstance(gates, GatesConfig) else GatesConfig.from_mapping(gates or {})
    version = _candidate(ws, get(ws, name), candidate, "canary")

    def change(dep: Deployment) -> dict[str, Any]:
        _must_start(dep, "canary")
        return dict(
            strategy="canary",
            state="canary",
            candidate_version=version,
            step=0,
            steps=step_list,
            step_config={"min_requests": int(min_requests), "min_seconds": float(min_seconds)},
            gates=cfg.model_dump(mode="json"),
            step_started_at=utcnow(),
        )

    return _change(
        ws,
        name,
        change,
        kind="canary",
        actor=actor or human_actor(),
        reason=f"steps {','.join(f'{s:g}' for s in step_list)}",
        thresholds=cfg.model_dump(mode="json"),
    )


def start_bluegreen(
    ws: Any,
    name: str,
    candidate: str | int,
    *,
    keep_warm_s: float | None = None,
    actor: str | None = None,
) -> Deployment:
    """Load ``candidate`` beside live (the other colour); ``promote`` switches in one step."""
    if keep_warm_s is not None and (not math.isfinite(keep_warm_s) or keep_warm_s < 0):
        raise InvalidTransition(f"keep warm {keep_warm_s:g} s: expected 0 or more")
    version = _candidate(ws, get(ws, name), candidate, "blue-green switch to")

    def change(dep: Deployment) -> dict[str, Any]:
        _must_start(dep, "blue-green")
        live_colour = (
            dep.colours.get(dep.live_version, "blue") if dep.strategy == "bluegreen" else "blue"
        )
        other = "green" if live_colour == "blue" else "blue"
        cfg: dict[str, Any] = {"colours": {live_colour: dep.live_version, other: version}}
        if keep_warm_s is not None:
            cfg["keep_warm_s"] = float(keep_warm_s)
        return dict(
            strategy="bluegreen",
            state="bluegreen",
            candidate_version=version,
            step=0,
            steps=[],
            step_config=cfg,
            step_started_at=utcnow(),
        )

    return _change(ws, name, change, kind="bluegreen", actor=actor or human_actor())


def _promotion(dep: Deployment) -> dict[str, Any]:
    if dep.state not in ACTIVE_STATES or dep.candidate_version is None:
        raise InvalidTransition(
            f"cannot promote in deployment {dep.name!r}: no candidate (state {dep.state}); start "
            f"one with `detops deploy canary {dep.name} VERSION` (or shadow / bluegreen)"
        )
    return dict(
        live_version=dep.candidate_version,
        candidate_version=None,
        previous_version=dep.live_version,
        state="promoted",
        switched_at=utcnow(),
    )


def promote(ws: Any, name: str, *, actor: str | None = None, reason: str = "manual") -> Deployment:
    """Make the candidate live now (a blue-green switch, or the end of a canary)."""
    return _change(
        ws,
        name,
        _promotion,
        kind="promote",
        decision="promote",
        reason=reason,
        actor=actor or human_actor(),
        move_alias=True,
    )


def _rollback_change(dep: Deployment) -> dict[str, Any]:
    if dep.state in ACTIVE_STATES:
        return dict(candidate_version=None, state="rolled_back")
    if dep.state == "promoted" and dep.previous_version is not None:
        return dict(
            live_version=dep.previous_version,
            previous_version=None,
            candidate_version=None,
            state="rolled_back",
            switched_at=utcnow(),
        )
    raise InvalidTransition(
        f"cannot roll back deployment {dep.name!r}: nothing to roll back (state {dep.state}, "
        f"live {dep.live_ref}, no candidate and no previous version)"
    )


def rollback(ws: Any, name: str, *, actor: str | None = None, reason: str = "manual") -> Deployment:
    """Take every request away from the candidate, or switch back to the previous version."""
    return _change(
        ws,
        name,
        _rollback_change,
        kind="rollback",
        decision="rollback",
        reason=reason,
        actor=actor or human_actor(),
        move_alias=True,
    )


def pause(ws: Any, name: str, *, actor: str | None = None) -> Deployment:
    """Hold the canary at its step: it does not advance until ``resume`` (a failed gate still
    rolls it back: the candidate keeps its share meanwhile)."""

    def change(dep: Deployment) -> dict[str, Any]:
        if dep.state not in ("canary", "insufficient_data"):
            raise InvalidTransition(
                f"cannot pause deployment {dep.name!r}: only a canary can be paused "
                f"(state {dep.state})"
            )
        return dict(state="paused", step_config={**dep.step_config, "paused_from": dep.state})

    return _change(ws, name, change, kind="pause", actor=actor or human_actor())


def resume(ws: Any, name: str, *, actor: str | None = None) -> Deployment:
    """Continue a paused canary; the step's clock and request count start again."""

    def change(dep: Deployment) -> dict[str, Any]:
        if dep.state != "paused":
            raise InvalidTransition(
                f"cannot resume deployment {dep.name!r}: it is not paused (state {dep.state})"
            )
        cfg = {k: v for k, v in dep.step_config.items() if k != "paused_from"}
        return dict(state="canary", step_config=cfg, step_started_at=utcnow())

    return _change(ws, name, change, kind="resume", actor=actor or human_actor())


def set_automation(
    ws: Any, name: str, level: str | None, *, actor: str | None = None
) -> Deployment:
    """Set the degree of automation servers of this deployment apply (None: their config)."""
    _check_automation(level)
    return _change(
        ws,
        name,
        lambda dep: dict(automation=level),
        kind="automation",
        reason=f"automation {level or 'from server config'}",
        actor=actor or human_actor(),
    )


# -- controller decisions (conditional on the revision the decision was made on) -------------


def advance(
    ws: Any,
    name: str,
    *,
    expect_revision: int,
    actor: str,
    measured: Mapping[str, Any],
    thresholds: Mapping[str, Any],
    reason: str = "gates passed",
    at: dt.datetime | None = None,
) -> Deployment:
    """The step passed: the next step, or the promotion when the next step is 100%."""

    def change(dep: Deployment) -> dict[str, Any]:
        if dep.state not in ("canary", "insufficient_data") or dep.candidate_version is None:
            raise InvalidTransition(f"cannot advance deployment {dep.name!r} in state {dep.state}")
        if dep.step + 2 >= len(dep.steps):  # the next step is 100%: the promotion
            return {**_promotion(dep), "step": len(dep.steps) - 1}
        return dict(state="canary", step=dep.step + 1, step_started_at=at or utcnow())

    dep = get(ws, name)
    last = dep.step + 2 >= len(dep.steps)
    return _change(
        ws,
        name,
        change,
        kind="promote" if last else "advance",
        decision="promote" if last else "advance",
        reason=reason,
        measured=measured,
        thresholds=thresholds,
        actor=actor,
        expect_revision=expect_revision,
        at=at,
        move_alias=True,
    )


def hold(
    ws: Any,
    name: str,
    *,
    expect_revision: int,
    actor: str,
    measured: Mapping[str, Any],
    thresholds: Mapping[str, Any],
    reason: str,
    at: dt.datetime | None = None,
) -> Deployment:
    """Too little data to judge the step: ``insufficient_data``, the step holds."""

    def change(dep: Deployment) -> dict[str, Any]:
        if dep.state != "canary":
            raise InvalidTransition(f"cannot hold deployment {dep.name!r} in state {dep.state}")
        return dict(state="insufficient_data")

    return _change(
        ws,
        name,
        change,
        kind="hold",
        decision="hold",
        reason=reason,
        measured=measured,
        thresholds=thresholds,
        actor=actor,
        expect_revision=expect_revision,
        at=at,
    )


def auto_rollback(
    ws: Any,
    name: str,
    *,
    expect_revision: int,
    actor: str,
    measured: Mapping[str, Any],
    thresholds: Mapping[str, Any],
    reason: str,
    at: dt.datetime | None = None,
) -> Deployment:
    """A gate failed: the candidate's share goes to 0 (from a paused canary too)."""

    def change(dep: Deployment) -> dict[str, Any]:
        if dep.state not in CANARY_STATES:
            raise InvalidTransition(
                f"cannot roll back deployment {dep.name!r} automatically in state {dep.state}"
            )
        return dict(candidate_version=None, state="rolled_back")

    return _change(
        ws,
        name,
        change,
        kind="rollback",
        decision="rollback",
        reason=reason,
        measured=measured,
        thresholds=thresholds,
        actor=actor,
        expect_revision=expect_revision,
        at=at,
    )


# -- controller leases -----------------------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    name: str
    holder: str
    acquired_at: dt.datetime
    expires_at: dt.datetime

    def held_by(self, holder: str, now: dt.datetime | None = None) -> bool:
        return self.holder == holder and self.expires_at > (now or utcnow())


def _lease(row: Any) -> Lease:
    return Lease(row.name, row.holder, aware(row.acquired_at), aware(row.expires_at))  # type: ignore[arg-type]


def read_lease(ws: Any, name: str) -> Lease | None:
    with ws.db.read() as conn:
        row = conn.execute(select(leases).where(leases.c.name == name)).first()
    return None if row is None else _lease(row)


def acquire_lease(ws: Any, name: str, holder: str, ttl_s: float) -> Lease:
    """Take or renew lease ``name`` for ``holder`` unless another holder's is still valid.

    Returns the lease as it stands afterwards: compare its holder with yours. A valid lease of
    another holder costs one read and no write.
    """
    now = utcnow()
    current = read_lease(ws, name)
    if current is not None and current.holder != holder and current.expires_at > now:
        return current
    with ws.db.write() as conn:
        row = conn.execute(select(leases).where(leases.c.name == name)).first()
        now = utcnow()
        expires = now + dt.timedelta(seconds=ttl_s)
        if row is None:
            conn.execute(
                insert(leases).values(name=name, holder=holder, acquired_at=now, expires_at=expires)
            )
            return Lease(name, holder, now, expires)
        cur = _lease(row)
        if cur.holder != holder and cur.expires_at > now:
            return cur
        acquired = cur.acquired_at if cur.holder == holder else now
        # conditional (still mine, or run out): a contender that took the lease in between
        # (PostgreSQL, READ COMMITTED: the read above takes no lock) makes this match no row,
        # so two replicas never both believe they hold it
        done = conn.execute(
            update(leases)
            .where(
                leases.c.name == name,
                or_(leases.c.holder == holder, leases.c.expires_at <= now),
            )
            .values(holder=holder, acquired_at=acquired, expires_at=expires)
        )
        if done.rowcount != 1:
            again = conn.execute(select(leases).where(leases.c.name == name)).first()
            return _lease(again) if again is not None else Lease(name, "", now, now)
        return Lease(name, holder, acquired, expires)


def release_lease(ws: Any, name: str, holder: str) -> None:
    """Give the lease up now (on a clean shutdown) so another replica need not wait."""
    with ws.db.write() as conn:
        conn.execute(
            update(leases)
            .where(leases.c.name == name, leases.c.holder == holder)
            .values(expires_at=utcnow())
        )
